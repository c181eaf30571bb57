"""Signal quality of a night's preprocessed PPG: the share of flat and of clipped samples, and the warnings a
staged night gets when they exceed their limits (the night is still staged).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from sleepppg.constants import TARGET_FS

FLAT_STEP_SD = 1e-3  # a z-scored PPG "does not move" when a 34.13-Hz step is below this (a pulse moves ~0.1-0.5)
FLAT_RUN_S = 2.0  # a flat stretch shorter than about two beats is not counted
MAX_FLAT_SHARE = 0.2  # more than 20% of the night flat: warned (extraction refuses a night over 50% flat)
MAX_CLIPPED_SHARE = 0.02  # more than 2% at the +/-3 SD clip (a Gaussian puts 0.27% beyond 3 SD)


def ppg_quality(ppg_WS: np.ndarray, n_recorded: int, gap_epochs: Sequence[int] = ()) -> dict:
    """Signal-quality shares of a night's preprocessed PPG (z-scored, 34.13 Hz), over its recorded windows
    outside the gaps in the recording (`gap_epochs`: zero-filled, not staged, so not flat signal either).

    - flat_share: share of the samples lying in runs of at least FLAT_RUN_S seconds where the signal does
      not move (|step| < FLAT_STEP_SD). A PPG held at the ADC limit (saturation), a sensor that fell off, or a
      dropout marker value written in place of the signal all leave such runs; a real pulse wave moves by
      ~0.1-0.5 SD per sample.
    - clipped_share: share of the samples at the night's extreme values: extraction clips the PPG at
      mean +/- 3 SD before z-scoring, so a night with long excursions (saturated bursts) piles samples there;
      a clean night has a handful.

    Args:
        ppg_WS: (n_windows, 1024) preprocessed PPG.
        n_recorded: windows holding the recording (the rest is padding).
        gap_epochs: windows inside a gap of the recording.
    Returns:
        {"flat_share": float, "clipped_share": float}, both in 0..1.
    """
    keep = np.ones(n_recorded, dtype=bool)
    keep[[e for e in gap_epochs if 0 <= e < n_recorded]] = False
    x = np.asarray(ppg_WS[:n_recorded][keep], dtype=np.float32).reshape(-1)
    if x.size < 2:
        return {"flat_share": 0.0, "clipped_share": 0.0}
    still = np.abs(np.diff(x)) < FLAT_STEP_SD
    # lengths of the runs of "still" steps: a run of k still steps covers k + 1 samples
    edges = np.flatnonzero(np.diff(np.concatenate(([0], still.astype(np.int8), [0]))))
    run_steps = edges[1::2] - edges[0::2]
    long_runs = run_steps[run_steps + 1 >= FLAT_RUN_S * TARGET_FS]
    flat = float((long_runs + 1).sum()) / x.size
    lo, hi = x.min(), x.max()
    clipped = float(np.count_nonzero((x <= lo) | (x >= hi))) / x.size if hi > lo else 0.0
    return {"flat_share": flat, "clipped_share": clipped}


def quality_warnings(quality: dict) -> list[str]:
    """Human-readable warnings for the shares of `ppg_quality` above their limits (empty when fine)."""
    out = []
    if quality["flat_share"] > MAX_FLAT_SHARE:
        out.append(f"{quality['flat_share']:.0%} of the recorded PPG is flat (saturated at the sensor's limit, "
                   f"sensor off, or dropout markers): the stages there rest on no pulse signal")
    if quality["clipped_share"] > MAX_CLIPPED_SHARE:
        out.append(f"{quality['clipped_share']:.1%} of the recorded PPG sits at the +/-3 SD clip (long "
                   f"saturated or artefact excursions)")
    return out
