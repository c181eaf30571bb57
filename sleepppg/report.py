"""The sleep report of one night: standard sleep statistics of a hypnogram, the difference between a predicted
and a scored report, and the console text of a staged night.

Definitions (`sleep_report`), over the epochs e = 0..N-1 of `epoch_s` seconds each (30 s), counted from the
start of the recording, which is taken as lights-off (the files carry no separate lights-off/on markers).
Sleep = Light, Deep or REM. Epochs without a stage (-1: unscored, or a gap in the recording) count toward no
total and no stage, but keep their place in time.
- time_in_bed_min: number of staged (scored) epochs x epoch length, i.e. the recorded, scored time.
- total_sleep_time_min (TST): sleep epochs x epoch length.
- sleep_efficiency_pct: 100 x TST / time in bed.
- sleep_onset_latency_min: from the recording start to the start of the first sleep epoch.
- sleep_period_min: from sleep onset to the end of the last sleep epoch (the final awakening).
- waso_min (wake after sleep onset): Wake epochs after sleep onset and before the final awakening x epoch
  length; wake after the final awakening is not counted.
- rem_latency_min: from sleep onset to the start of the first REM epoch.
- stage_minutes: minutes of Wake, Light, Deep and REM; stage_percent_of_tst: Light, Deep and REM as % of
  TST; wake_percent_of_time_in_bed: Wake as % of time in bed.
Latencies and the sleep period are None when there is no sleep (REM latency also when there is no REM);
percentages are None when their denominator is zero.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from sleepppg.constants import IGNORE_INDEX, N_CLASSES, STAGE_NAMES, WINDOW_SECONDS

SLEEP_STAGES = (1, 2, 3)  # class indices of Light, Deep and REM (0 is Wake)
WAKE, REM = 0, 3
REPORT_ROWS = (  # (label, sleep_report key) of the console table
    ("time in bed (min)", "time_in_bed_min"), ("total sleep time, TST (min)", "total_sleep_time_min"),
    ("sleep efficiency (%)", "sleep_efficiency_pct"), ("sleep onset latency (min)", "sleep_onset_latency_min"),
    ("WASO (min)", "waso_min"), ("REM latency (min)", "rem_latency_min"), ("sleep period (min)", "sleep_period_min"),
)


def sleep_report(stages_W: Sequence[int] | np.ndarray, epoch_s: float = WINDOW_SECONDS) -> dict:
    """Standard sleep statistics of one hypnogram (definitions in the module docstring).

    Args:
        stages_W: stage per epoch (0 Wake, 1 Light, 2 Deep, 3 REM, -1 no stage), in time order from the
            recording start.
        epoch_s: epoch length in seconds (30).
    Returns:
        dict of minutes (floats), percentages and None where undefined.
    Raises:
        ValueError: a stage outside -1..3.
    """
    stages_W = np.asarray(stages_W, dtype=np.int64).reshape(-1)
    bad = (stages_W < IGNORE_INDEX) | (stages_W >= N_CLASSES)
    if bad.any():
        raise ValueError(f"stages must be -1..{N_CLASSES - 1}, got {sorted(set(stages_W[bad].tolist()))}")
    epoch_min = epoch_s / 60.0
    counts = {name: int((stages_W == k).sum()) for k, name in enumerate(STAGE_NAMES)}
    n_with_stage = int((stages_W != IGNORE_INDEX).sum())
    sleep_idx = np.flatnonzero(np.isin(stages_W, SLEEP_STAGES))
    tst_epochs = int(sleep_idx.size)
    report: dict[str, Any] = {
        "epoch_s": float(epoch_s),
        "n_epochs": int(stages_W.size),
        "n_epochs_with_stage": n_with_stage,
        "time_in_bed_min": n_with_stage * epoch_min,
        "total_sleep_time_min": tst_epochs * epoch_min,
        "sleep_efficiency_pct": 100.0 * tst_epochs / n_with_stage if n_with_stage else None,
        "sleep_onset_latency_min": None,
        "sleep_period_min": None,
        "waso_min": None,
        "rem_latency_min": None,
        "stage_minutes": {name: c * epoch_min for name, c in counts.items()},
        "stage_percent_of_tst": {STAGE_NAMES[k]: (100.0 * counts[STAGE_NAMES[k]] / tst_epochs
                                                  if tst_epochs else None) for k in SLEEP_STAGES},
        "wake_percent_of_time_in_bed": 100.0 * counts[STAGE_NAMES[WAKE]] / n_with_stage if n_with_stage else None,
    }
    if tst_epochs:
        onset, last = int(sleep_idx[0]), int(sleep_idx[-1])
        report["sleep_onset_latency_min"] = onset * epoch_min
        report["sleep_period_min"] = (last - onset + 1) * epoch_min
        report["waso_min"] = int((stages_W[onset:last + 1] == WAKE).sum()) * epoch_min
        rem_idx = np.flatnonzero(stages_W == REM)
        if rem_idx.size:
            report["rem_latency_min"] = (int(rem_idx[0]) - onset) * epoch_min
    return report


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def report_difference(predicted: dict, scored: dict) -> dict:
    """predicted - scored for each number of REPORT_ROWS and each stage's minutes (None where either is None)."""
    out = {key: _diff(predicted[key], scored[key]) for _, key in REPORT_ROWS}
    out["stage_minutes"] = {name: _diff(predicted["stage_minutes"][name], scored["stage_minutes"][name])
                            for name in STAGE_NAMES}
    return out


def format_sleep_report(subject_id: str, report: dict, extra: str = "", scored: dict | None = None) -> str:
    """The console summary of one night: a table of the sleep report (with `scored`: predicted, scored and
    predicted - scored side by side)."""
    def fmt(v: float | None, signed: bool = False) -> str:
        return "n/a" if v is None else (f"{v:+.1f}" if signed else f"{v:.1f}")

    rows = [(label, report[key], None if scored is None else scored[key]) for label, key in REPORT_ROWS]
    rows += [(f"{name} (min)", report["stage_minutes"][name],
              None if scored is None else scored["stage_minutes"][name]) for name in STAGE_NAMES]
    if scored is None:
        lines = [f"  {'':30s}{'predicted':>10s}"] + [f"  {label:30s}{fmt(p):>10s}" for label, p, _ in rows]
    else:
        lines = [f"  {'':30s}{'predicted':>10s}{'scored':>10s}{'difference':>12s}"]
        lines += [f"  {label:30s}{fmt(p):>10s}{fmt(t):>10s}{fmt(_diff(p, t), signed=True):>12s}"
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
