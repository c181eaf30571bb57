"""The files an inference run writes: per night a CSV of the staged epochs and hypnogram PNGs (in a
background writer thread), and the run's result.json.

- `csv/<id>/<id>.csv`: one row per staged epoch, columns CSV_COLUMNS (time_hours = epoch start from the
  recording start; p_* = softmax of the logits; true_*/mismatch empty where there is no label; a gap epoch
  has pred_name "Gap" and no prediction; pulse = 1 where the epoch shows a pulse wave, 0 where not, empty where
  not measured: sleepppg.quality).
- `graph/<id>/<id>.png`: the predicted hypnogram; with labels also `<id>_with_label.png` (scored vs predicted).
- `result.json`: RESULT_FORMAT, `"paths": "absolute"` and the run's fields (`write_result`).
Every file is written atomically (sleepppg.runio), so no final name holds a half-written file.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
from pathlib import Path

import numpy as np

from sleepppg.constants import IGNORE_INDEX, N_CLASSES, STAGE_NAMES, WINDOW_SECONDS
from sleepppg.figures import hypnogram_figure, save_figure
from sleepppg.nights import Night
from sleepppg.paths import OutputRoot
from sleepppg.runio import json_safe, write_text_atomic

CSV_COLUMNS = ("epoch", "time_hours", "pred_idx", "pred_name", "true_idx", "true_name", "mismatch",
               "p_wake", "p_light", "p_deep", "p_rem", "pulse")
RESULT_FORMAT = 2  # result.json layout: 2 = "nights"/"failed", absolute paths, split epoch counts
NO_OUTPUTS = {"csv": None, "hypnogram": None, "hypnogram_with_labels": None}  # a night's "outputs" when none


def predicted_stages(probs_WC: np.ndarray) -> np.ndarray:
    """Most probable class per epoch; IGNORE_INDEX (-1) for an epoch without probabilities (NaN: a gap in
    the recording, which is not staged)."""
    gap_W = np.isnan(probs_WC).any(axis=1)
    return np.where(gap_W, IGNORE_INDEX, np.nan_to_num(probs_WC, nan=0.0).argmax(axis=1))


def write_csv(path: Path, probs_WC: np.ndarray, epoch_s: float = WINDOW_SECONDS,
              true_W: np.ndarray | None = None, pulse_W: np.ndarray | None = None) -> None:
    """One row per staged epoch (columns CSV_COLUMNS); true_*/mismatch empty where there is no label; a gap
    epoch (not staged) has pred_name "Gap" and empty pred_idx, mismatch, probabilities and pulse; pulse (1/0,
    `sleepppg.quality.EpochPulse.pulse_W` per epoch) empty everywhere without `pulse_W`."""
    pred_W = predicted_stages(probs_WC)
    pulses = [""] * pred_W.size if pulse_W is None else [str(int(v)) for v in pulse_W[:pred_W.size]]
    lines = [",".join(CSV_COLUMNS)]
    for e, (p, probs) in enumerate(zip(pred_W.tolist(), probs_WC.tolist())):
        t = "" if true_W is None else int(true_W[e])
        if t == "" or t == IGNORE_INDEX:
            truth = ",,"
        else:
            truth = f"{t},{STAGE_NAMES[t]},{int(t != p)}"
        if p == IGNORE_INDEX:  # a gap: the label (if any) is kept, nothing is predicted
            lines.append(f"{e},{e * epoch_s / 3600:.6f},,Gap,{truth.rsplit(',', 1)[0]}," + "," * (N_CLASSES + 1))
            continue
        lines.append(f"{e},{e * epoch_s / 3600:.6f},{p},{STAGE_NAMES[p]},{truth},"
                     + ",".join(f"{v:.6f}" for v in probs) + f",{pulses[e]}")
    write_text_atomic(path, "\n".join(lines) + "\n")


def plot_hypnogram(path: Path, pred_W: np.ndarray, title: str, epoch_s: float = WINDOW_SECONDS,
                   true_W: np.ndarray | None = None) -> None:
    """Save the hypnogram of `sleepppg.figures.hypnogram_figure` (predicted; with `true_W` scored vs predicted,
    mistakes shaded) as a PNG, atomically. Thread-safe (no pyplot state), so it runs in the writer thread."""
    save_figure(hypnogram_figure(pred_W, title, true_W=true_W, epoch_s=epoch_s), path)


def write_night_outputs(run_dir: Path, night: Night, probs_WC: np.ndarray, flags: dict,
                        performance: dict | None = None, pulse_W: np.ndarray | None = None) -> dict:
    """CSV and hypnograms of one night (as the flags save_csv and save_graph allow); `pulse_W`: the CSV's
    pulse column (bool per staged epoch).

    Returns:
        {"csv", "hypnogram", "hypnogram_with_labels"}: absolute paths, None where not written.
    Raises:
        OSError: a file cannot be written.
    """
    sid, root = night.subject_id, OutputRoot(run_dir)  # every path checked: inside run_dir, no link followed
    pred_W = predicted_stages(probs_WC)
    true_W = None if night.labels_W is None else night.labels_W[:night.n_recorded]
    paths: dict[str, str | None] = dict(NO_OUTPUTS)
    if flags["save_csv"]:
        csv_path = root.path("csv", sid, f"{sid}.csv")
        write_csv(csv_path, probs_WC, WINDOW_SECONDS, true_W, pulse_W)
        paths["csv"] = str(csv_path.resolve())
    if flags["save_graph"]:
        hours = night.n_recorded * WINDOW_SECONDS / 3600
        note = " (first part of a longer recording)" if night.truncated else ""
        png = root.path("graph", sid, f"{sid}.png")
        plot_hypnogram(png, pred_W, f"{sid}: predicted hypnogram, {hours:.2f} h{note}")
        paths["hypnogram"] = str(png.resolve())
        if true_W is not None and performance is not None:
            kappa = performance.get("kappa")
            kappa_txt = "undefined" if kappa is None else f"{kappa:.3f}"
            png_lab = root.path("graph", sid, f"{sid}_with_label.png")
            plot_hypnogram(png_lab, pred_W, f"{sid}: kappa {kappa_txt}, accuracy {performance['accuracy']:.1%} "
                           f"({performance['n_epochs_compared']} scored epochs compared)", true_W=true_W)
            paths["hypnogram_with_labels"] = str(png_lab.resolve())
    return paths


class OutputWriter:
    """Writes each night's CSV and hypnograms in one background thread, so the next forward pass does not wait
    for them. `submit` returns a future of the output paths; a write that fails raises from its `result()`,
    where the caller's per-night boundary records it. Use as a context manager: leaving it waits for the
    writes already running and drops the queued ones."""

    def __init__(self, run_dir: Path | None, flags: dict):
        self.run_dir, self.flags = run_dir, flags
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="outputs")

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, night: Night, probs_WC: np.ndarray, performance: dict | None = None,
               pulse_W: np.ndarray | None = None) -> concurrent.futures.Future:
        """Start writing the outputs of `night`; the future's result is `write_night_outputs`' dict of paths
        (NO_OUTPUTS at once when the run has no folder)."""
        if self.run_dir is None:
            done: concurrent.futures.Future = concurrent.futures.Future()
            done.set_result(dict(NO_OUTPUTS))
            return done
        night = dataclasses.replace(night, ppg_windows_WS=None)  # the writer needs no signal: free it early
        return self.pool.submit(write_night_outputs, self.run_dir, night, probs_WC, self.flags, performance, pulse_W)


def write_result(run_dir: Path, run: dict) -> Path:
    """Write `run_dir`/result.json atomically: RESULT_FORMAT, `"paths": "absolute"` (every file path in it is
    absolute), then the fields of `run` (NaN and Inf as null).

    Raises:
        OSError: the file cannot be written.
    """
    path = OutputRoot(run_dir).path("result.json")
    document = {"result_format": RESULT_FORMAT, "paths": "absolute", **run}
    write_text_atomic(path, json.dumps(json_safe(document), indent=2, ensure_ascii=False))
    return path
