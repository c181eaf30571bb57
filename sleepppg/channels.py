"""Which EDF/WFDB/table channel is the PPG and which the ECG.

PPG: among the labels containing one of the patterns (`pleth`, `ppg`, `bvp`; any case), the one with the highest
sampling rate, the first on a tie (so a 1-Hz `PlethStatus` is never taken). ECG: a label with `ecg`/`ekg` and
lead II (`ii` or `2`) first, then any `ecg`, then any `ekg`.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("sleepppg.channels")

PPG_PATTERNS = ("pleth", "ppg", "bvp")  # the PPG is a label containing one of these (any case), highest rate


# ----------------------------------------------------------------------------------------------------------
# Channels


def find_ppg_channel(labels: list[str], rates: list[float],
                     patterns: tuple[str, ...] | list[str] = PPG_PATTERNS) -> str | None:
    """The PPG channel: among the labels containing one of `patterns` (any case), the one with the highest
    sampling rate; on a tie the first. None when no label matches.

    The rate decides because a label only has to contain the pattern: a 1-Hz `PlethStatus` (the oximeter's
    status/quality signal) listed before the 256-Hz `Pleth` waveform must not be taken for the PPG.

    Args:
        labels: channel labels, in file order.
        rates: sampling rate of each label, Hz (same order and length).
    """
    if len(labels) != len(rates):
        raise ValueError(f"{len(labels)} labels but {len(rates)} rates")
    best = None
    for name, rate in zip(labels, rates):
        low = name.lower()
        if any(p.lower() in low for p in patterns) and (best is None or rate > best[1]):
            best = (name, rate)
    return best[0] if best else None


def _log_ppg_choice(edf_path: Path, chosen: str, labels: list[str], rates: list[float],
                    patterns: tuple[str, ...] | list[str]) -> None:
    """Log the PPG channel used: INFO when several labels matched (the rate decided), else DEBUG."""
    matches = [f"{name} ({rate:g} Hz)" for name, rate in zip(labels, rates)
               if any(p.lower() in name.lower() for p in patterns)]
    level = logging.INFO if len(matches) > 1 else logging.DEBUG
    log.log(level, "%s: PPG channel %r (highest rate among %s)", edf_path.name, chosen, ", ".join(matches))


def find_ecg_channel(ch_names: list[str]) -> str | None:
    """The ECG channel: an ecg/ekg label with lead II ('ii' or '2') first, then any ecg, then any ekg."""
    rules = (
        lambda s: ("ecg" in s or "ekg" in s) and ("ii" in s or "2" in s),
        lambda s: "ecg" in s,
        lambda s: "ekg" in s,
    )
    for rule in rules:
        for name in ch_names:
            if rule(name.lower()):
                return name
    return None
