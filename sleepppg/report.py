"""Sleep statistics of a hypnogram, by yasa (`yasa.Hypnogram.sleep_statistics`), for inference's per-night
sleep report and the validation report alike, so that a night's numbers are the same wherever they appear; the
difference between a predicted and a scored report; and the console text of a staged night.

Definitions are yasa's (AASM), over a hypnogram of 30-s epochs that runs from the first to the last epoch
with a stage (from the first to the last epoch both staged and scored when the two are compared); epochs
without a stage inside it (-1: unscored, or a gap in the recording) are yasa's "UNS": they count in TIB but
toward no stage. Sleep = Light, Deep or REM. Minutes unless stated:
- TIB (time in bed): the hypnogram's length; SPT (sleep period): first to last sleep epoch;
- TST: sleep epochs within SPT; WASO: Wake epochs within SPT;
- SE: 100 x TST / TIB (%); SME: 100 x TST / SPT (%);
- SOL: start of the hypnogram to the first sleep epoch; SOL_5min: to the first 5 min of continuous sleep;
- Lat_REM: start of the hypnogram to the first REM epoch (yasa's; the AASM's REM latency is Lat_REM - SOL);
- WAKE, LIGHT, DEEP, REM: minutes of each stage; %LIGHT, %DEEP, %REM: % of TST.
Values yasa leaves undefined (no sleep, no REM) are None. yasa is imported only when a report is made.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from sleepppg.constants import IGNORE_INDEX, N_CLASSES, STAGE_NAMES, WINDOW_SECONDS

YASA_STAGES = tuple(name.upper() for name in STAGE_NAMES)  # yasa's 4-stage labels WAKE, LIGHT, DEEP, REM
UNSCORED = "UNS"
EPOCH_FREQ = f"{WINDOW_SECONDS}s"
# yasa's sleep statistics reported (minutes, except SE/SME and % of TST). SFI is left out: yasa 0.7 states it
# per 2 h of TST (a unit slip fixed in 0.8), so the two versions would disagree.
SLEEP_STATISTICS = ("TIB", "SPT", "TST", "SE", "SME", "SOL", "SOL_5min", "WASO", "Lat_REM",
                    "WAKE", "LIGHT", "DEEP", "REM", "%LIGHT", "%DEEP", "%REM")
REPORT_ROWS = (  # (label, statistic) of the console table
    ("time in bed, TIB (min)", "TIB"), ("total sleep time, TST (min)", "TST"), ("sleep efficiency, SE (%)", "SE"),
    ("sleep onset latency, SOL (min)", "SOL"), ("WASO (min)", "WASO"), ("REM latency, Lat_REM (min)", "Lat_REM"),
    ("sleep period, SPT (min)", "SPT"),
    *((f"{name} (min)", label) for name, label in zip(STAGE_NAMES, YASA_STAGES)),
)


def yasa_module():
    """(yasa, True when it is 0.8 or later: percentages and the 0.8 names)."""
    import yasa

    major, minor = (int(part) for part in yasa.__version__.split(".")[:2])
    return yasa, (major, minor) >= (0, 8)


def yasa_hypnogram(yasa, stages: np.ndarray, scorer: str):
    """A 4-stage yasa Hypnogram of 30-s epochs; -1 becomes "UNS"."""
    labels = np.array([*YASA_STAGES, UNSCORED], dtype=object)[np.where(stages == IGNORE_INDEX, N_CLASSES, stages)]
    return yasa.Hypnogram(list(labels), n_stages=4, freq=EPOCH_FREQ, scorer=scorer)


def check_stages(stages_W: Sequence[int] | np.ndarray) -> np.ndarray:
    """`stages_W` as a 1-D int64 array.

    Raises:
        ValueError: a stage outside -1..3.
    """
    stages_W = np.asarray(stages_W, dtype=np.int64).reshape(-1)
    bad = (stages_W < IGNORE_INDEX) | (stages_W >= N_CLASSES)
    if bad.any():
        raise ValueError(f"stages must be -1..{N_CLASSES - 1}, got {sorted(set(stages_W[bad].tolist()))}")
    return stages_W


def _compared_span(true_W: np.ndarray, pred_W: np.ndarray) -> tuple[int, np.ndarray, np.ndarray] | None:
    """(first epoch, scored, predicted) from the first to the last epoch both staged and scored, -1 in both
    where either has none; None when no epoch is both."""
    true_W, pred_W = check_stages(true_W), check_stages(pred_W)
    both = (true_W != IGNORE_INDEX) & (pred_W != IGNORE_INDEX)
    where = np.flatnonzero(both)
    if where.size == 0:
        return None
    span = slice(where[0], where[-1] + 1)
    keep = both[span]
    return int(where[0]), np.where(keep, true_W[span], IGNORE_INDEX), np.where(keep, pred_W[span], IGNORE_INDEX)


def same_epochs(true_W: np.ndarray, pred_W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scored, predicted) from the first to the last epoch both staged and scored, -1 in both where either
    has none: the two hypnograms whose statistics are compared (empty when no epoch is both)."""
    compared = _compared_span(true_W, pred_W)
    return (np.empty(0, np.int64), np.empty(0, np.int64)) if compared is None else compared[1:]


def hypnogram_statistics(stages: np.ndarray, scorer: str = "predicted") -> dict[str, float]:
    """yasa's SLEEP_STATISTICS of one hypnogram (a stage per 30-s epoch, -1 unscored; at least one epoch),
    NaN where yasa has none."""
    yasa, _ = yasa_module()
    stats = yasa_hypnogram(yasa, stages, scorer).sleep_statistics()
    return {name: float(stats.get(name, math.nan)) for name in SLEEP_STATISTICS}


def sleep_report(stages_W: Sequence[int] | np.ndarray, scorer: str = "predicted") -> dict:
    """The sleep report of one hypnogram (definitions in the module docstring): yasa's statistics over the
    span from the first to the last epoch with a stage.

    Args:
        stages_W: stage per 30-s epoch (0 Wake, 1 Light, 2 Deep, 3 REM, -1 no stage), in time order from the
            recording start.
        scorer: yasa's name of who staged it.
    Returns:
        {"first_epoch": index of the span's first epoch (None when no epoch has a stage), "n_epochs": the span's
        epochs, "n_epochs_with_stage": those with a stage, and each of SLEEP_STATISTICS (None where undefined)}.
    Raises:
        ValueError: a stage outside -1..3.
    """
    stages_W = check_stages(stages_W)
    where = np.flatnonzero(stages_W != IGNORE_INDEX)
    report: dict[str, Any] = {"first_epoch": None, "n_epochs": 0, "n_epochs_with_stage": int(where.size)}
    if where.size == 0:
        return {**report, **dict.fromkeys(SLEEP_STATISTICS)}
    span = stages_W[where[0]:where[-1] + 1]
    report.update(first_epoch=int(where[0]), n_epochs=int(span.size))
    stats = hypnogram_statistics(span, scorer)
    return {**report, **{name: None if math.isnan(v) else v for name, v in stats.items()}}


def compared_reports(true_W: np.ndarray, pred_W: np.ndarray) -> tuple[dict, dict] | None:
    """(predicted, scored) sleep reports over the same epochs (`same_epochs`), `first_epoch` counted from the
    recording start; None when no epoch is both staged and scored."""
    compared = _compared_span(true_W, pred_W)
    if compared is None:
        return None
    offset, scored, predicted = compared
    reports = sleep_report(predicted, "predicted"), sleep_report(scored, "scored")
    for report in reports:
        report["first_epoch"] += offset
    return reports


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def report_difference(predicted: dict, scored: dict) -> dict:
    """predicted - scored for each of SLEEP_STATISTICS (None where either is None)."""
    return {name: _diff(predicted[name], scored[name]) for name in SLEEP_STATISTICS}


def format_sleep_report(subject_id: str, report: dict, extra: str = "", scored: dict | None = None) -> str:
    """The console summary of one night: a table of the sleep report (with `scored`: predicted, scored and
    predicted - scored side by side)."""
    def fmt(v: float | None, signed: bool = False) -> str:
        return "n/a" if v is None else (f"{v:+.1f}" if signed else f"{v:.1f}")

    rows = [(label, report[key], None if scored is None else scored[key]) for label, key in REPORT_ROWS]
    if scored is None:
        lines = [f"  {'':32s}{'predicted':>10s}"] + [f"  {label:32s}{fmt(p):>10s}" for label, p, _ in rows]
    else:
        lines = [f"  {'':32s}{'predicted':>10s}{'scored':>10s}{'difference':>12s}"]
        lines += [f"  {label:32s}{fmt(p):>10s}{fmt(t):>10s}{fmt(_diff(p, t), signed=True):>12s}"
                  for label, p, t in rows]
    return f"[{subject_id}]{extra}\n" + "\n".join(lines)


def format_night(entry: dict) -> str:
    """The console text of one staged night's result.json entry: a headline (accuracy and kappa with labels;
    hours staged and the cache use without), its sleep report table and its warnings."""
    if "performance" in entry:
        perf = entry["performance"]
        kappa = "undefined" if perf["kappa"] is None else f"{perf['kappa']:.3f}"
        extra = f" accuracy {perf['accuracy']:.3f}, kappa {kappa} over {perf['n_epochs_compared']} scored epochs"
    else:
        extra = f" {entry['hours_staged']:.2f} h staged"
        if entry.get("cache_used") is not None:
            extra += f", cache {'reused' if entry['cache_used'] else 'built'}"
    text = format_sleep_report(entry["subject_id"], entry["sleep_report"], extra,
                               scored=entry.get("sleep_report_scored"))
    return "\n".join([text] + [f"  WARNING: {w}" for w in entry["warnings"]])
