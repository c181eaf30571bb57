"""Stage nights with a trained SleepPPG-Net (PPG only): test-set nights from the processed HDF5 files (with
labels: metrics) or raw EDF recordings (no labels), with a validated per-night cache, CSV files, hypnograms
and a sleep report.

Modes
- HDF5 analysis (`inference.only_inference: false`): the valid subjects (exactly `data.windows_per_subject`
  windows) that are on the fixed SleepPPG-Net test list, sorted, shuffled with `inference.random_seed`, the
  first `inference.n_subjects`. Per subject: accuracy and Cohen's kappa over the scored epochs (label != -1);
  summary: mean/std over subjects plus pooled figures (`sleepppg.metrics.compute_metrics`).
- EDF (`inference.only_inference: true`, or `--edf PATH|FOLDER|GLOB`): one EDF, every *.edf of a folder, or
  a glob. Each night is preprocessed by `preprocess_recording` (the training
  preprocessing: `preprocessing.resample_method`, `preprocessing.ppg_channels`) to the model's number of
  30-s windows, and cached in `<inference.cache_root>/<id>/` as `ppg_windows.npy` (float32, n_windows x 1024)
  + `meta.json`. The cache is reused only when meta.json matches the EDF (absolute path, size, mtime_ns) and
  the preprocessing settings (method, channel patterns, n_windows, PREPROCESSING_VERSION);
  a stale, truncated or otherwise unreadable cache is rebuilt, with a log line saying why.

- PPG (`--ppg PATH|FOLDER|GLOB`, or `inference.ppg_file`): recordings of any format sleepppg.formats reads,
  chosen by extension (.csv/.tsv/.txt tables, .npy, WFDB .hea with its .dat/.mat, .edf/.bdf; a folder gives
  every such file). `--fs` (`inference.ppg_fs`) is the rate where the file does not state it; `--column`
  (`inference.ppg_column`) the table column or record signal (default: the `preprocessing.ppg_channels`
  patterns). Time-stamped tables are resampled onto a uniform grid; missing stretches longer than
  `preprocessing.max_gap_s` are gaps: their epochs are not staged (CSV pred_name "Gap", empty probabilities;
  a break in the hypnogram; unscored in the sleep report) and listed in result.json (`gap_epochs`, `gaps`).
  Each night's entry also records source_format, ppg_channel (the column used), ppg_fs_found (the rate the
  file states or its stamps show). Same cache, preprocessing and outputs as EDF mode.

Speed: nights are preprocessed in background threads (`preprocessing.workers`, 0 = one per CPU core) while
the model runs on the nights already prepared (batches of at most `inference.batch_size`), outputs are written
in another thread, and the model is served with its BatchNorm layers folded into the convolutions (same
outputs up to float rounding). glibc is told to keep freed memory for reuse (`keep_freed_memory`): the
forward pass no longer page-faults fresh memory for every layer, which halves its time on CPU. On CUDA the
forward runs under bf16 autocast when `gpu.mixed_precision` is true; probabilities are computed in float32.

Only recorded epochs are staged: a night shorter than the model's span (10 h = 1,200 epochs) gets
predictions for its recorded epochs only (the zero padding is never reported as sleep); a longer night is
staged over its first 10 h and flagged (`truncated: true` and a log line). In HDF5 mode the recorded epochs are
those up to the last window that holds signal or a label (the padding windows are all zeros).

Outputs under `<inference.save_dir or --out>/<run_id>/` (run_id = start time, YYYYmmdd_HHMMSS):
- `result.json` (`result_format` 2; every path in it is absolute, `"paths": "absolute"`): run settings, the
  checkpoint (`checkpoint`: path, model_kind, checkpoint_format, model_args, epoch; reference_version for a
  reference checkpoint), `nights` (one entry per
  staged night), `failed` (one entry per night that could not be staged: subject_id, file, step = reading /
  staging / writing outputs, kind, reason), `n_nights_staged`, `n_nights_failed`, `interrupted`, and in HDF5
  mode `metrics` (per-subject mean/std and pooled). A night's entry: subject_id, source_file, n_epochs_staged,
  hours_staged, truncated, (EDF) cache_dir, cache_used, ppg_channel, ppg_fs, recording_hours, (HDF5) start_row;
  signal_quality (flat_share, clipped_share: see `ppg_quality`), warnings (texts, also logged and printed);
  outputs (csv, hypnogram, hypnogram_with_labels: paths or None); sleep_report of the predicted stages; with
  labels also performance (accuracy, kappa, n_epochs_compared = scored epochs the prediction is compared
  with), sleep_report_scored and sleep_report_difference (predicted - scored).
- `csv/<id>/<id>.csv`: one row per staged epoch, columns
  epoch,time_hours,pred_idx,pred_name,true_idx,true_name,mismatch,p_wake,p_light,p_deep,p_rem
  (time_hours = epoch start from the recording start; p_* = softmax of the logits, summing to 1;
  true_*/mismatch empty where there is no label: always in EDF mode, unscored epochs in HDF5 mode).
- `graph/<id>/<id>.png`: predicted hypnogram; with labels also `<id>_with_label.png` (scored vs predicted,
  disagreeing epochs shaded orange, REM in red, a legend; accuracy and kappa in the title).
- `inference.log`.
The console prints each night's sleep report (with labels: predicted, scored and the difference side by side),
its warnings, the failed nights and where the results are.

Bad data: every failure of one night (a file the reader cannot parse, whatever it raises; no PPG channel; a
flat PPG; a forward pass that fails; outputs that cannot be written) is logged with the subject and file,
listed in `failed` and on the console, and the other nights are staged and written; the exit status is then 1.
A damaged cache (unreadable or truncated meta.json or .npy, wrong shape or dtype, bytes that no longer match
the sha256 in meta.json) is rebuilt with a log line; a cache that cannot be written is skipped with a warning.
A night whose PPG is flat (saturated at the sensor's limit, sensor off, dropout markers) over more than
MAX_FLAT_SHARE of its length, or clipped over more than MAX_CLIPPED_SHARE, is staged with a warning in its
entry. A checkpoint that is missing, not a checkpoint, of another model kind or with NaN/Inf weights stops the
run before anything is written (one line, exit status 2).

Sleep report (`sleep_report`), per night, over the staged epochs e = 0..N-1 of `epoch_s` seconds each
(30 s), counted from the start of the recording, which is taken as lights-off (the files carry no separate
lights-off/on markers). Sleep = Light, Deep or REM. Epochs without a stage (-1; only in scored hypnograms)
count toward no total and no stage, but keep their place in time.
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

Exit status: 0 every night staged; 1 some nights failed (the others are staged and written; result.json
lists the failures) or result.json could not be written; 2 bad setup (config, checkpoint, device, no EDF found,
data files, an output folder that cannot be made): nothing is written; 130 Ctrl-C: the nights already staged
keep their outputs and result.json says `"interrupted": true`.

Usage: python inference_ppg_only.py --config configs/config_demo.yaml [--edf DIR | --ppg "nights/*" --fs 64]
       [--checkpoint best_model.pth]
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import datetime as dt
import functools
import glob
import itertools
import json
import logging
import os
import pickle
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from sleepppg.cache import load_cache, write_cache
from sleepppg.cli import log_to_file, setup_logging
from sleepppg.config import load_config
from sleepppg.constants import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SETUP,
    IGNORE_INDEX,
    MESA_ID_PATTERN,
    N_CLASSES,
    SAMPLES_PER_WINDOW,
    STAGE_NAMES,
    WINDOW_SECONDS,
    WINDOWS_PER_SUBJECT,
)
from sleepppg.errors import BadRecordingError, ConfigError, SetupError
from sleepppg.figures import hypnogram_figure, save_figure
from sleepppg.ids import subject_id_from_filename
from sleepppg.metrics import compute_metrics, summary_stats

# one owner of the preprocessing version and of what a cached night depends on: extraction
from sleepppg.preprocessing import file_signature as edf_signature
from sleepppg.preprocessing import preprocess_recording, preprocessing_settings
from sleepppg.quality import ppg_quality, quality_warnings
from sleepppg.report import format_sleep_report, report_difference, sleep_report
from sleepppg.runio import json_safe, make_run_dir, write_text_atomic
from sleepppg.runtime import keep_freed_memory, resolve_device

# ----------------------------------------------------------------------------------------------------------
# Constants
CSV_COLUMNS = ("epoch", "time_hours", "pred_idx", "pred_name", "true_idx", "true_name", "mismatch",
               "p_wake", "p_light", "p_deep", "p_rem")
EXIT_NIGHT_FAILED = EXIT_FAILED  # 1: some nights failed; the others were staged and written
RESULT_FORMAT = 2  # result.json layout: 2 = "nights"/"failed", absolute paths, split epoch counts

log = logging.getLogger("inference_ppg_only")


# ----------------------------------------------------------------------------------------------------------
# Small helpers: ids, inputs, JSON


def subject_id_for(edf_path: str | os.PathLike, id_pattern: str = MESA_ID_PATTERN) -> str:
    """The subject ID in a file name by `id_pattern` (config preprocessing.id_pattern; MESA's by default:
    mesa-sleep-0010.edf -> '0010'), else the file stem."""
    stem = Path(edf_path).stem
    return subject_id_from_filename(stem, id_pattern) or stem


def resolve_edf_inputs(spec: str, ppg: bool = False) -> list[Path]:
    """Files named by `spec`: a file, a folder (sorted: its *.edf, any case; with `ppg`, every file with a
    recording extension, see sleepppg.formats.is_recording_file) or a glob pattern (sorted; with `ppg`, WFDB
    data files whose .hea matched too are left to their header).

    Raises:
        SetupError: when nothing matches, naming what was searched.
    """
    what, setting = ("PPG", "inference.ppg_file is empty and no --ppg") if ppg else (
        "EDF", "inference.edf_file is empty and no --edf")
    if not spec.strip():
        raise SetupError(f"no {what} input: {setting} was given")
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        if ppg:
            from sleepppg import formats

            found = sorted(p for p in path.iterdir() if p.is_file() and formats.is_recording_file(p))
        else:
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".edf")
        if not found:
            raise SetupError(f"no {'recording' if ppg else '.edf'} file in folder {path}")
        return found
    if glob.has_magic(spec):
        found = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True) if Path(p).is_file())
        if ppg:
            from sleepppg import formats

            data_files = {d.resolve() for p in found if p.suffix.lower() == ".hea"
                          for d in formats.wfdb_data_files(p)}  # part of a record, not one
            found = [p for p in found if p.resolve() not in data_files]
        if not found:
            raise SetupError(f"no file matches the pattern {spec!r}")
        return found
    raise SetupError(f"{what} input not found: {spec} (give a file, a folder or a glob pattern)")


def unique_ids(paths: Sequence[Path], id_pattern: str = MESA_ID_PATTERN) -> list[str]:
    """Subject IDs for `paths` (`subject_id_for`), made unique within the run: the first file with an ID keeps
    it, a later one gets the first of _2, _3 ... that no other file's ID already is (night.csv, night.npy and
    night_2.txt -> night, night_3, night_2), so no two nights share a cache folder or output files."""
    base = [subject_id_for(p, id_pattern) for p in paths]
    taken = set(base)
    out, kept = [], set()
    for sid in base:
        if sid not in kept:
            kept.add(sid)
            out.append(sid)
            continue
        k = 2
        while f"{sid}_{k}" in taken:
            k += 1
        taken.add(f"{sid}_{k}")
        out.append(f"{sid}_{k}")
    return out


@dataclasses.dataclass(frozen=True)
class NightJob:
    """One night to stage: its subject ID in this run and the file it comes from (an EDF, or the processed
    PPG file in HDF5 mode, then with the night's first row)."""

    subject_id: str
    path: Path
    start_row: int | None = None


@dataclasses.dataclass
class Night:
    """One night ready for the model (what a `prepare` function returns for a NightJob)."""

    subject_id: str
    source_file: Path
    ppg_windows_WS: np.ndarray | None  # float32 (n_windows, 1024), zero-padded past n_recorded
    n_recorded: int  # epochs to stage (recorded, within the model's span)
    truncated: bool  # the recording was longer than the model's span; only its start is staged
    labels_W: np.ndarray | None = None  # int64 (n_windows,) in HDF5 mode
    info: dict = dataclasses.field(default_factory=dict)  # source facts for result.json (channel, cache ...)


def ppg_settings(settings: dict, fs: float | None, column: str | None, max_gap_s: float) -> dict:
    """`preprocessing_settings` of --ppg mode: also the rate, column and gap limit the cache depends on."""
    return {**settings, "source": "ppg", "ppg_fs": fs, "ppg_column": column, "max_gap_s": max_gap_s}


def prepare_edf_night(job: NightJob, cache_root: Path, settings: dict) -> Night:
    """Cached or freshly preprocessed PPG windows of one EDF, or with `ppg_settings` of one recording in any
    format sleepppg.formats reads (the cache then also covers a WFDB record's data files); a cache that
    cannot be written only costs the reuse next time (a warning), not the night.

    Raises:
        BadRecordingError (a ValueError) or OSError for an unusable recording; anything
        else a broken file makes the reader raise (the caller records it as this night's failure).
    """

    subject_id, edf_path = job.subject_id, job.path
    n_windows = settings["n_windows"]
    cache_dir = cache_root / subject_id
    signature = edf_signature(edf_path)
    if signature is None:
        raise BadRecordingError(f"EDF not found: {edf_path}", kind="missing_edf")
    any_format = settings.get("source") == "ppg"
    if any_format:
        from sleepppg import formats

        formats.recording_format(edf_path)  # an unknown extension fails before any cache is read
        signature["data_files"] = [edf_signature(p) for p in formats.recording_files(edf_path)[1:]]
    windows_WS, meta, reason = load_cache(cache_dir, signature, settings)
    cache_used = windows_WS is not None
    if not cache_used:
        if reason != "no cache yet":
            log.warning("%s: rebuilding cache in %s: %s", subject_id, cache_dir, reason)
        t0 = time.perf_counter()
        if any_format:
            pre = formats.preprocess_file(
                edf_path, n_windows, settings["resample_method"], tuple(settings["ppg_channels"]),
                settings["ppg_fs"], settings["ppg_column"], settings["max_gap_s"])
        else:
            pre = preprocess_recording(
                edf_path, n_windows=n_windows, method=settings["resample_method"],
                ppg_patterns=tuple(settings["ppg_channels"]), with_ecg=False)
        windows_WS = np.asarray(pre["ppg_windows"], dtype=np.float32)
        if windows_WS.shape != (n_windows, SAMPLES_PER_WINDOW):
            raise ValueError(f"preprocessing returned shape {windows_WS.shape}, expected "
                             f"{(n_windows, SAMPLES_PER_WINDOW)}")
        duration_s = float(pre["duration_s"])  # the PPG recording length
        meta = {
            "subject_id": subject_id, "edf": signature, "settings": settings,
            "n_recorded_windows": int(pre["n_recorded_windows"]),
            "recording_hours": duration_s / 3600.0,
            "truncated": bool(duration_s > n_windows * WINDOW_SECONDS),
            "ppg_channel": pre.get("ppg_channel"), "ppg_fs": pre.get("ppg_fs"),
            "source_format": pre.get("source_format", "edf"), "ppg_fs_found": pre.get("ppg_fs_found", pre["ppg_fs"]),
            "gaps": pre.get("gaps", []),
            "gap_epochs": [e for e in pre["gap_epochs"] if e < int(pre["n_recorded_windows"])],
            "created_at": dt.datetime.now().isoformat(timespec="seconds"),
            "preprocess_s": round(time.perf_counter() - t0, 3),
        }
        try:
            write_cache(cache_dir, windows_WS, meta)
        except OSError as err:
            log.warning("%s: cannot write the cache in %s (%s); the night is staged anyway", subject_id,
                        cache_dir, err.strerror or err)
    n_recorded = int(meta["n_recorded_windows"])
    truncated = bool(meta.get("truncated", False))
    if truncated:
        log.warning("%s: recording is %.2f h long; staging only its first %.1f h (%d epochs)", subject_id,
                    meta.get("recording_hours") or float("nan"), n_windows * WINDOW_SECONDS / 3600, n_windows)
    info = {"cache_dir": str(cache_dir.resolve()), "cache_used": cache_used,
            "ppg_channel": meta.get("ppg_channel"), "ppg_fs": meta.get("ppg_fs"),
            "recording_hours": meta.get("recording_hours")}
    if any_format:  # what the file turned out to be; gap epochs are not staged (see `predicted_stages`)
        info.update({key: meta.get(key) for key in ("source_format", "ppg_fs_found", "gaps", "gap_epochs")})
    return Night(subject_id, Path(signature["path"]), windows_WS, n_recorded, truncated, None, info)


def prepare_hdf5_night(job: NightJob, ppg_h5, n_windows: int) -> Night:
    """One test night from the open processed PPG file (rows job.start_row ... + n_windows - 1).

    Raises:
        ValueError: rows missing, or no recorded or scored epoch.
    """
    import multimodal_dataset_aligned as mda

    arrays = mda.read_night({"ppg": ppg_h5}, job.start_row, n_windows)
    ppg_WS, labels_W = arrays["ppg"], arrays["labels"]
    n_rec = recorded_epochs(ppg_WS, labels_W)
    if n_rec == 0 or not (labels_W != IGNORE_INDEX).any():
        raise BadNight("no recorded or scored epochs", kind="no_scored_epochs")
    return Night(job.subject_id, job.path.resolve(), ppg_WS, n_rec, False, labels_W, {"start_row": job.start_row})


class BadNight(ValueError):
    """A night that cannot be staged; `kind` is a short machine-readable reason."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


# ----------------------------------------------------------------------------------------------------------
# Model forward


def predict_proba(model: torch.nn.Module, windows_BWS: np.ndarray, device: torch.device,
                  bf16: bool = False) -> np.ndarray:
    """Stage probabilities for a batch of nights.

    Args:
        windows_BWS: float32 (B, n_windows, 1024) preprocessed PPG.
        bf16: autocast to bfloat16 (CUDA only).
    Returns:
        float32 (B, n_windows, 4): softmax over the 4 classes of the model's logits.
    """
    if windows_BWS.ndim != 3 or windows_BWS.shape[2] != SAMPLES_PER_WINDOW:
        raise ValueError(f"expected (B, n_windows, {SAMPLES_PER_WINDOW}) windows, got {windows_BWS.shape}")
    B, W, S = windows_BWS.shape
    ppg_B1T = torch.from_numpy(np.ascontiguousarray(windows_BWS, dtype=np.float32)).reshape(B, 1, W * S)
    ppg_B1T = ppg_B1T.to(device, non_blocking=True)
    with torch.inference_mode():
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda"):
            logits_BCW = model(ppg_B1T)
        if logits_BCW.shape != (B, N_CLASSES, W):
            raise ValueError(f"model returned {tuple(logits_BCW.shape)}, expected {(B, N_CLASSES, W)}")
        probs_BWC = torch.softmax(logits_BCW.float(), dim=1).permute(0, 2, 1)
    return probs_BWC.cpu().numpy()


# ----------------------------------------------------------------------------------------------------------
# Outputs: CSV and hypnograms


def predicted_stages(probs_WC: np.ndarray) -> np.ndarray:
    """Most probable class per epoch; IGNORE_INDEX (-1) for an epoch without probabilities (NaN: a gap in
    the recording, which is not staged)."""
    gap_W = np.isnan(probs_WC).any(axis=1)
    return np.where(gap_W, IGNORE_INDEX, np.nan_to_num(probs_WC, nan=0.0).argmax(axis=1))


def write_csv(path: Path, probs_WC: np.ndarray, epoch_s: float = WINDOW_SECONDS,
              true_W: np.ndarray | None = None) -> None:
    """One row per staged epoch (columns CSV_COLUMNS); true_*/mismatch empty where there is no label; a gap
    epoch (not staged) has pred_name "Gap" and empty pred_idx, mismatch and probabilities."""
    pred_W = predicted_stages(probs_WC)
    lines = [",".join(CSV_COLUMNS)]
    for e, (p, probs) in enumerate(zip(pred_W.tolist(), probs_WC.tolist())):
        t = "" if true_W is None else int(true_W[e])
        if t == "" or t == IGNORE_INDEX:
            truth = ",,"
        else:
            truth = f"{t},{STAGE_NAMES[t]},{int(t != p)}"
        if p == IGNORE_INDEX:  # a gap: the label (if any) is kept, nothing is predicted
            lines.append(f"{e},{e * epoch_s / 3600:.6f},,Gap,{truth.rsplit(',', 1)[0]}," + "," * N_CLASSES)
            continue
        lines.append(f"{e},{e * epoch_s / 3600:.6f},{p},{STAGE_NAMES[p]},{truth},"
                     + ",".join(f"{v:.6f}" for v in probs))
    write_text_atomic(path, "\n".join(lines) + "\n")


def plot_hypnogram(path: Path, pred_W: np.ndarray, title: str, epoch_s: float = WINDOW_SECONDS,
                   true_W: np.ndarray | None = None) -> None:
    """Save the hypnogram of `sleepppg.figures.hypnogram_figure` (predicted; with `true_W` scored vs predicted,
    mistakes shaded) as a PNG, atomically. Thread-safe (no pyplot state), so it runs in the writer thread."""
    save_figure(hypnogram_figure(pred_W, title, true_W=true_W, epoch_s=epoch_s), path)


def write_night_outputs(run_dir: Path, night: Night, probs_WC: np.ndarray, flags: dict,
                        performance: dict | None = None) -> dict:
    """CSV and hypnograms of one night (as the flags allow); returns their absolute paths (None if skipped)."""
    sid = night.subject_id
    pred_W = predicted_stages(probs_WC)
    true_W = None if night.labels_W is None else night.labels_W[:night.n_recorded]
    paths: dict[str, str | None] = {"csv": None, "hypnogram": None, "hypnogram_with_labels": None}
    if flags["save_csv"]:
        csv_path = run_dir / "csv" / sid / f"{sid}.csv"
        write_csv(csv_path, probs_WC, WINDOW_SECONDS, true_W)
        paths["csv"] = str(csv_path.resolve())
    if flags["save_graph"]:
        hours = night.n_recorded * WINDOW_SECONDS / 3600
        note = " (first part of a longer recording)" if night.truncated else ""
        png = run_dir / "graph" / sid / f"{sid}.png"
        plot_hypnogram(png, pred_W, f"{sid}: predicted hypnogram, {hours:.2f} h{note}")
        paths["hypnogram"] = str(png.resolve())
        if true_W is not None and performance is not None:
            kappa = performance.get("kappa")
            kappa_txt = "undefined" if kappa is None else f"{kappa:.3f}"
            png_lab = run_dir / "graph" / sid / f"{sid}_with_label.png"
            plot_hypnogram(png_lab, pred_W, f"{sid}: kappa {kappa_txt}, accuracy {performance['accuracy']:.1%} "
                           f"({performance['n_epochs_compared']} scored epochs compared)", true_W=true_W)
            paths["hypnogram_with_labels"] = str(png_lab.resolve())
    return paths


class OutputWriter:
    """Writes each night's CSV and hypnograms in one background thread, so the next forward pass does not wait
    for them. A night whose outputs cannot be written (a full disk, a permission problem) is reported by
    `close()`, which waits for every write: {subject_id: reason}."""

    def __init__(self, run_dir: Path | None, flags: dict):
        self.run_dir, self.flags = run_dir, flags
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="outputs")
        self.futures: dict[str, concurrent.futures.Future] = {}

    def submit(self, entry: dict, night: Night, probs_WC: np.ndarray, performance: dict | None = None) -> None:
        """Write the outputs of `night` and record their paths in entry["outputs"] (None where a flag is off)."""
        entry["outputs"] = {"csv": None, "hypnogram": None, "hypnogram_with_labels": None}
        if self.run_dir is None:
            return
        night = dataclasses.replace(night, ppg_windows_WS=None)  # the writer needs no signal: free it early

        def write() -> None:
            entry["outputs"] = write_night_outputs(self.run_dir, night, probs_WC, self.flags, performance)

        self.futures[night.subject_id] = self.pool.submit(write)

    def close(self) -> dict[str, str]:
        errors = {}
        try:
            for sid, future in self.futures.items():
                try:
                    future.result()
                except (OSError, ValueError, RuntimeError) as err:  # per-night boundary: record, go on
                    errors[sid] = f"{type(err).__name__}: {err}"
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
        return errors


# ----------------------------------------------------------------------------------------------------------
# The per-night pipeline, shared by every input format: prepare (read / preprocess / cache) -> stage -> write


def _batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def stage_nights(model: torch.nn.Module, nights: list[Night], device: torch.device, bf16: bool) -> list[np.ndarray]:
    """Forward a batch of nights together; returns each night's probabilities over its staged epochs."""
    windows_BWS = np.stack([n.ppg_windows_WS for n in nights])
    probs_BWC = predict_proba(model, windows_BWS, device, bf16)
    for i, night in enumerate(nights):
        probs_BWC[i, night.info.get("gap_epochs") or []] = np.nan  # gaps in the recording are not staged
    return [probs_BWC[i, :n.n_recorded] for i, n in enumerate(nights)]


def prefetch(jobs: Sequence, prepare: Callable, lookahead: int,
             workers: int = 1) -> Iterable[tuple[Any, concurrent.futures.Future, bool]]:
    """Run `prepare(job)` for each job in `workers` background threads, at most `lookahead` jobs ahead of
    the consumer, and yield (job, future, next_is_ready) in job order. The EDF reading and filtering of the
    next nights then overlap the model's forward pass of the current ones (scipy, numpy and torch release the
    GIL in their loops, so threads run in parallel), while memory stays bounded to `lookahead` nights."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preprocess") as pool:
        pending: collections.deque = collections.deque()
        remaining = iter(jobs)
        for job in itertools.islice(remaining, max(1, lookahead)):
            pending.append((job, pool.submit(prepare, job)))
        try:
            while pending:
                job, future = pending.popleft()
                concurrent.futures.wait([future])
                nxt = next(remaining, None)
                if nxt is not None:
                    pending.append((nxt, pool.submit(prepare, nxt)))
                yield job, future, bool(pending) and pending[0][1].done()
        finally:
            for _, future in pending:  # consumer stopped early (error, Ctrl-C): drop the queued work
                future.cancel()


@dataclasses.dataclass
class RunRecord:
    """What a run has done so far (kept up to date, so an interrupted run can still report it)."""

    nights: list[dict] = dataclasses.field(default_factory=list)  # result entries of staged nights
    failed: list[dict] = dataclasses.field(default_factory=list)  # {subject_id, file, step, kind, reason}
    scored: list[tuple[str, np.ndarray, np.ndarray]] = dataclasses.field(default_factory=list)  # (id, true, pred)

    def fail(self, job_or_night, step: str, err: BaseException | str, kind: str | None = None) -> None:
        """Record one night's failure (logged with its id and file) and go on with the others."""
        reason = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
        path = getattr(job_or_night, "path", None) or getattr(job_or_night, "source_file", None)
        kind = kind or getattr(err, "kind", None) or (type(err).__name__ if not isinstance(err, str) else step)
        log.error("%s: failed while %s %s: %s", job_or_night.subject_id, step, path, reason)
        self.failed.append({"subject_id": job_or_night.subject_id, "file": str(Path(path).resolve()) if path else None,
                            "step": step, "kind": kind, "reason": reason})


def night_entry(night: Night, probs_WC: np.ndarray) -> tuple[dict, dict | None]:
    """The result.json entry of one staged night (and its performance when it has labels)."""
    pred_W = predicted_stages(probs_WC)
    quality = ppg_quality(night.ppg_windows_WS, night.n_recorded, night.info.get("gap_epochs") or ())
    warnings = quality_warnings(quality)
    if night.truncated:
        warnings.append(f"recording longer than the model's span: only its first "
                        f"{night.n_recorded * WINDOW_SECONDS / 3600:.2f} h are staged")
    for text in warnings:
        log.warning("%s: %s", night.subject_id, text)
    entry = {"subject_id": night.subject_id, "source_file": str(night.source_file),
             "n_epochs_staged": night.n_recorded, "hours_staged": night.n_recorded * WINDOW_SECONDS / 3600,
             "truncated": night.truncated, **night.info, "signal_quality": quality, "warnings": warnings,
             "sleep_report": sleep_report(pred_W)}
    performance = None
    if night.labels_W is not None:
        true_W = night.labels_W[:night.n_recorded]
        m = compute_metrics(true_W, pred_W)
        performance = {"accuracy": m["accuracy"], "kappa": json_safe(m["kappa"]), "n_epochs_compared": m["n_epochs"]}
        entry["performance"] = performance
        entry["sleep_report_scored"] = sleep_report(true_W)
        entry["sleep_report_difference"] = report_difference(entry["sleep_report"], entry["sleep_report_scored"])
    return entry, performance


def run_pipeline(model, jobs: Sequence[NightJob], prepare: Callable[[NightJob], Night], record: RunRecord, *,
                 device: torch.device, bf16: bool, batch_size: int, workers: int, run_dir: Path | None,
                 flags: dict) -> None:
    """Stage `jobs`: `prepare` each night in `workers` background threads, forward the nights that are ready in
    batches of at most `batch_size` (never waiting for a night while others are ready, so preparing and forward
    overlap), write the outputs in another thread. Every failure of one night (its file breaks the reader, its
    forward or its outputs fail) is recorded in `record.failed` and the others go on; `record` is updated as
    nights finish, so an interrupted run can still report them.

    A new input format plugs in with its own `prepare(job) -> Night`.
    """
    from tqdm import tqdm

    writer = OutputWriter(run_dir, flags)
    staged: dict[str, dict] = {}

    def flush(nights: list[Night]) -> None:
        try:
            probs = stage_nights(model, nights, device, bf16)
        except (RuntimeError, ValueError) as err:  # e.g. out of memory on this batch: its nights fail, not the run
            for night in nights:
                record.fail(night, "staging", err)
            bar.update(len(nights))
            return
        for night, probs_WC in zip(nights, probs):
            entry, performance = night_entry(night, probs_WC)
            writer.submit(entry, night, probs_WC, performance)
            staged[night.subject_id] = entry
            record.nights.append(entry)
            if night.labels_W is not None:
                record.scored.append((night.subject_id, night.labels_W[:night.n_recorded], predicted_stages(probs_WC)))
            bar.update(1)

    batch: list[Night] = []
    try:
        with tqdm(total=len(jobs), desc="nights", unit="night", disable=None) as bar:
            for job, future, next_ready in prefetch(jobs, prepare, batch_size + workers, workers):
                try:
                    batch.append(future.result())
                except Exception as err:  # noqa: BLE001 - per-night boundary: whatever a broken file raises
                    record.fail(job, "reading", err)
                    bar.update(1)
                if batch and (len(batch) == batch_size or not next_ready):
                    flush(batch)
                    batch = []
            if batch:
                flush(batch)
    finally:
        for sid, reason in writer.close().items():
            entry = staged[sid]
            record.nights.remove(entry)
            record.scored[:] = [s for s in record.scored if s[0] != sid]
            record.fail(NightJob(sid, Path(entry["source_file"])), "writing outputs", reason, kind="write_failed")


def run_edf_mode(model, n_windows: int, cfg: dict, edf_paths: list[Path], run_dir: Path | None,
                 device: torch.device, flags: dict, record: RunRecord | None = None) -> RunRecord:
    """Stage every EDF, or with inference.ppg_file every recording of any format (preprocessed, or read from
    the cache); returns the run record."""
    pre_cfg, inf_cfg = cfg["preprocessing"], cfg["inference"]
    settings = preprocessing_settings(pre_cfg["resample_method"], pre_cfg["ppg_channels"], n_windows)
    if inf_cfg["ppg_file"]:  # --ppg: any format, read by sleepppg.formats
        settings = ppg_settings(settings, inf_cfg["ppg_fs"], inf_cfg["ppg_column"], pre_cfg["max_gap_s"])
    cache_root = Path(inf_cfg["cache_root"])
    record = RunRecord() if record is None else record
    jobs = [NightJob(sid, path) for sid, path in zip(unique_ids(edf_paths, pre_cfg["id_pattern"]), edf_paths)]
    # preprocessing threads: preprocessing.workers (0 = one per CPU core). On a GPU box they keep the GPU fed;
    # on a small CPU box the forward pass dominates and extra threads simply wait.
    workers = max(1, min(pre_cfg["workers"] or os.cpu_count() or 1, len(jobs)))
    run_pipeline(model, jobs, functools.partial(prepare_edf_night, cache_root=cache_root, settings=settings),
                 record, device=device, bf16=cfg["gpu"]["mixed_precision"], batch_size=inf_cfg["batch_size"],
                 workers=workers, run_dir=run_dir, flags=flags)
    return record


def recorded_epochs(ppg_WS: np.ndarray, labels_W: np.ndarray) -> int:
    """Epochs up to the last window that holds signal or a label (trailing padding windows are all zero)."""
    has_data = np.any(ppg_WS != 0, axis=1) | (labels_W != IGNORE_INDEX)
    idx = np.flatnonzero(has_data)
    return int(idx[-1]) + 1 if idx.size else 0


def select_test_subjects(subjects: Sequence[str], n_subjects: int, seed: int) -> list[str]:
    """The reference's selection: sort, shuffle with `seed` (numpy default_rng), take the first n."""
    pool = sorted(subjects)
    np.random.default_rng(seed).shuffle(pool)
    if n_subjects > len(pool):
        log.warning("n_subjects=%d but only %d test subjects are available: staging all of them",
                    n_subjects, len(pool))
    return pool[:n_subjects]


@dataclasses.dataclass
class Hdf5Selection:
    """The test nights to stage in HDF5 mode and where they are."""

    ppg_file: Path
    index_file: Path
    subjects: list[str]  # in staging order
    starts: dict[str, int]  # first row of each subject's night in the PPG file


def select_hdf5_nights(cfg: dict, n_windows: int, n_subjects: int) -> Hdf5Selection:
    """Valid subjects (exactly n_windows windows) on the SleepPPG-Net test list, sorted, shuffled with
    inference.random_seed, the first n_subjects (the reference's selection).

    Raises:
        SetupError: window-count mismatch with the model, missing files, no test subject.
    """
    import multimodal_dataset_aligned as mda

    data_cfg = cfg["data"]
    if data_cfg["windows_per_subject"] != n_windows:
        raise SetupError(f"the checkpoint's model stages {n_windows} windows per night but "
                         f"data.windows_per_subject is {data_cfg['windows_per_subject']}")
    paths = mda.data_paths_from_config(cfg)
    for key in ("ppg", "index"):
        if not Path(paths[key]).is_file():
            raise SetupError(f"processed data file not found: {paths[key]} (run extract_mesa_data.py first)")
    try:
        valid = mda.select_valid_subjects(mda.read_window_counts(paths["index"]), n_windows)
        # the test list of training.test_subjects_file; the SleepPPG-Net list when the split is random
        test_list = mda.test_subjects_from_config(cfg) or mda.SLEEPPPG_TEST_SUBJECTS
        test_set = set(test_list)
        pool = [sid for sid in valid if sid in test_set]
        if not pool:
            raise SetupError(f"none of the {len(valid)} valid subjects (with {n_windows} windows) in "
                             f"{paths['index']} is on the test list ({len(test_list)} IDs)")
        missing = len(test_set) - len(pool)
        if missing:
            log.info("%s", mda.missing_test_message(missing, len(test_set), n_windows))
        chosen = select_test_subjects(pool, n_subjects, cfg["inference"]["random_seed"])
        starts = mda.read_night_starts(paths["index"], chosen, n_windows)
    except (OSError, ValueError, KeyError) as err:
        raise SetupError(f"cannot read the processed data index {paths['index']}: {err}") from None
    return Hdf5Selection(Path(paths["ppg"]), Path(paths["index"]), chosen,
                         {sid: int(start) for sid, start in zip(chosen, starts)})


def run_hdf5_mode(model, n_windows: int, cfg: dict, sel: Hdf5Selection, run_dir: Path | None,
                  device: torch.device, flags: dict, record: RunRecord | None = None) -> RunRecord:
    """Stage the selected test nights from the processed HDF5 file; returns the run record (with the scored
    hypnograms for the metrics)."""
    import h5py

    record = RunRecord() if record is None else record
    jobs = [NightJob(sid, sel.ppg_file, sel.starts[sid]) for sid in sel.subjects]
    try:
        ppg_h5 = h5py.File(sel.ppg_file, "r")
    except OSError as err:
        raise SetupError(f"cannot open the processed PPG file {sel.ppg_file}: {err}") from None
    with ppg_h5:  # one reading thread: h5py serialises access to a file anyway
        run_pipeline(model, jobs, functools.partial(prepare_hdf5_night, ppg_h5=ppg_h5, n_windows=n_windows),
                     record, device=device, bf16=cfg["gpu"]["mixed_precision"],
                     batch_size=cfg["inference"]["batch_size"], workers=1, run_dir=run_dir, flags=flags)
    return record


def run_metrics(record: RunRecord) -> dict | None:
    """Per-subject mean/std and pooled metrics over the staged nights with labels (None when there are none)."""
    if not record.scored:
        return None
    by_sid = {e["subject_id"]: e["performance"] for e in record.nights if "performance" in e}
    accs = [by_sid[sid]["accuracy"] for sid, _, _ in record.scored]
    kappas = [by_sid[sid]["kappa"] for sid, _, _ in record.scored if by_sid[sid]["kappa"] is not None]
    pooled = compute_metrics(np.concatenate([t for _, t, _ in record.scored]),
                             np.concatenate([p for _, _, p in record.scored]),
                             np.concatenate([np.full(t.size, sid) for sid, t, _ in record.scored]))
    acc_stats, kappa_stats = summary_stats(accs), summary_stats(kappas)
    return {"subjects": len(record.scored), "acc_mean": acc_stats["mean"], "acc_std": acc_stats["std"],
            "kappa_mean": kappa_stats["mean"], "kappa_std": kappa_stats["std"],
            "kappa_median": kappa_stats["median"], "per_subject_accuracy": acc_stats,
            "per_subject_kappa": kappa_stats, "pooled": pooled}


# ----------------------------------------------------------------------------------------------------------
# Setup


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Inference-only speed-up, same outputs up to float rounding: inside every nn.Sequential, fold a
    BatchNorm1d (eval statistics) into the Conv1d before it, and let a LeakyReLU that follows another layer
    work in place (its input is a fresh intermediate). Modifies and returns `model` (in eval mode)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    for seq in [m for m in model.modules() if isinstance(m, torch.nn.Sequential)]:
        names = list(seq._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = seq._modules[first], seq._modules[second]
            if isinstance(conv, torch.nn.Conv1d) and isinstance(bn, torch.nn.BatchNorm1d) and bn.track_running_stats:
                seq._modules[first] = fuse_conv_bn_eval(conv, bn)
                seq._modules[second] = torch.nn.Identity()
        for name in names[1:]:
            if isinstance(seq._modules[name], torch.nn.LeakyReLU):
                seq._modules[name].inplace = True
    return model


def load_model(checkpoint: str, device: torch.device) -> tuple[torch.nn.Module, dict, int]:
    """Rebuild the PPG-only model from its checkpoint alone; returns (model in eval mode, info, n_windows).

    Raises:
        SetupError: one line naming the file: missing, not a checkpoint, another model kind, non-finite weights.
    """
    import multimodal_sleep_model

    path = Path(checkpoint)
    if not path.is_file():
        raise SetupError(f"checkpoint not found: {path} (set inference.best_model or pass --checkpoint)")
    try:
        model, ckpt = multimodal_sleep_model.load_model_from_checkpoint(path, map_location="cpu",
                                                                          expected_kind="ppg_only")
    except (ValueError, KeyError, RuntimeError, OSError, EOFError, pickle.UnpicklingError) as err:
        reason = " ".join(str(err).split())  # one line, whatever the loader said
        raise SetupError(f"cannot load checkpoint {path}: {reason[:300]}") from None
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise SetupError(f"checkpoint {path} holds non-finite (NaN/Inf) weights in {len(bad)} tensor(s), e.g. "
                         f"{bad[0]}: a diverged training run; pick an earlier checkpoint")
    model_args = dict(ckpt.get("model_args") or {})
    n_windows = int(model_args.get("n_windows", WINDOWS_PER_SUBJECT))
    fold_batchnorm(model).to(device)
    info = {"path": str(path.resolve()), "model_kind": ckpt.get("model_kind"),
            "checkpoint_format": ckpt.get("checkpoint_format", "sleepppg"), "model_args": model_args,
            "epoch": ckpt.get("epoch")}
    if "reference_version" in ckpt:
        info["reference_version"] = ckpt["reference_version"]
    return model, info, n_windows


def stage_and_report(args: argparse.Namespace, cfg: dict, edf_paths: list[Path], device: torch.device, model,
                     model_info: dict, n_windows: int, selection: Hdf5Selection | None, run_dir: Path) -> int:
    """Stage the nights, write result.json, print the summary; returns the exit status (0 all staged, 1 some
    nights failed or result.json could not be written, 130 on Ctrl-C: what was staged is still reported)."""
    inf_cfg = cfg["inference"]
    edf_mode = inf_cfg["only_inference"]
    mode = ("PPG" if inf_cfg["ppg_file"] else "EDF") if edf_mode else "HDF5"
    flags = {k: inf_cfg[k] for k in ("save_csv", "save_graph", "save_json")}
    started = dt.datetime.now().isoformat(timespec="seconds")
    fmt = model_info["checkpoint_format"]
    if "reference_version" in model_info:
        fmt += f" ({model_info['reference_version']})"
    log.info("run %s: %s mode, %s checkpoint %s (%d windows = %.1f h), device %s", run_dir.name, mode,
             fmt, model_info["path"], n_windows, n_windows * WINDOW_SECONDS / 3600, device)
    t0 = time.perf_counter()
    record, interrupted = RunRecord(), False
    try:
        if edf_mode:
            run_edf_mode(model, n_windows, cfg, edf_paths, run_dir, device, flags, record)
        else:
            run_hdf5_mode(model, n_windows, cfg, selection, run_dir, device, flags, record)
    except KeyboardInterrupt:
        interrupted = True
        log.error("interrupted (Ctrl-C): reporting the %d night(s) staged so far", len(record.nights))
    elapsed = time.perf_counter() - t0
    metrics = run_metrics(record) if not edf_mode else None

    result = {
        "result_format": RESULT_FORMAT,
        "paths": "absolute",  # every file path in this file is absolute
        "run_id": run_dir.name, "run_dir": str(run_dir.resolve()), "mode": mode,
        "config": str(Path(args.config).resolve()), "checkpoint": model_info, "device": str(device),
        "random_seed": inf_cfg["random_seed"], "started_at": started,
        "finished_at": dt.datetime.now().isoformat(timespec="seconds"), "elapsed_s": round(elapsed, 3),
        "interrupted": interrupted, "n_windows": n_windows, "epoch_s": WINDOW_SECONDS,
        "preprocessing": (preprocessing_settings(cfg["preprocessing"]["resample_method"],
                                                 cfg["preprocessing"]["ppg_channels"], n_windows)
                          if edf_mode else None),
        "cache_root": str(Path(inf_cfg["cache_root"]).resolve()) if edf_mode else None,
        "n_nights_staged": len(record.nights), "n_nights_failed": len(record.failed),
        "nights": record.nights, "failed": record.failed, "metrics": metrics,
    }
    status = EXIT_INTERRUPTED if interrupted else (EXIT_FAILED if record.failed else EXIT_OK)
    if flags["save_json"]:
        try:
            write_text_atomic(run_dir / "result.json", json.dumps(json_safe(result), indent=2, ensure_ascii=False))
        except OSError as err:
            log.error("cannot write %s: %s", run_dir / "result.json", err.strerror or err)
            status = status if interrupted else EXIT_FAILED

    for entry in record.nights:
        if "performance" in entry:
            perf = entry["performance"]
            kappa = "undefined" if perf["kappa"] is None else f"{perf['kappa']:.3f}"
            extra = (f" accuracy {perf['accuracy']:.3f}, kappa {kappa} over {perf['n_epochs_compared']} scored "
                     f"epochs")
        else:
            extra = f" {entry['hours_staged']:.2f} h staged"
            if entry.get("cache_used") is not None:
                extra += f", cache {'reused' if entry['cache_used'] else 'built'}"
        print(format_sleep_report(entry["subject_id"], entry["sleep_report"], extra,
                                  scored=entry.get("sleep_report_scored")))
        for text in entry["warnings"]:
            print(f"  WARNING: {text}")
    if metrics is not None:
        print(f"{metrics['subjects']} subjects: accuracy {metrics['acc_mean']:.3f} +/- {metrics['acc_std']:.3f}, "
              f"kappa {metrics['kappa_mean']:.3f} +/- {metrics['kappa_std']:.3f} (per subject); pooled accuracy "
              f"{metrics['pooled']['accuracy']:.3f}, kappa {metrics['pooled']['kappa']:.3f}")
    for fail in record.failed:
        print(f"FAILED {fail['subject_id']} ({fail['file']}): {fail['reason']}")
    print(f"{len(record.nights)} night(s) staged, {len(record.failed)} failed"
          f"{' (interrupted)' if interrupted else ''} in {elapsed:.1f} s. Results at: {run_dir}")
    return status


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config (configs/config_cloud.yaml or config_demo.yaml)")
    p.add_argument("--checkpoint", help="model checkpoint (.pth); overrides inference.best_model")
    p.add_argument("--edf", help="EDF mode on this file, folder (*.edf) or glob; overrides inference.edf_file "
                                 "and only_inference")
    p.add_argument("--ppg", help="stage PPG recordings of any format: a file, a folder or a glob (.csv .tsv .txt "
                                 ".npy .hea .edf .bdf); overrides inference.ppg_file and only_inference")
    p.add_argument("--fs", type=float, help="--ppg: sampling rate in Hz where the file does not state it (a .npy, "
                                            "a table without a time column); overrides inference.ppg_fs")
    p.add_argument("--column", help="--ppg: the PPG column of a table (name or 1-based number) or the signal "
                                    "name of a WFDB/EDF record; overrides inference.ppg_column (default: "
                                    "preprocessing.ppg_channels patterns)")
    p.add_argument("--out-dir", "--out", dest="out", metavar="DIR",
                   help="output root; overrides inference.save_dir (a run folder is made inside; "
                        "--out is an older name)")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N (default: auto; auto and cuda "
                        "take gpu.device_id)")
    p.add_argument("--n-subjects", type=int, help="HDF5 mode: subjects to stage; overrides inference.n_subjects")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run inference; returns the exit status (0 all staged, 1 some nights failed, 2 bad setup, 130 Ctrl-C)."""
    args = parse_args(argv)
    setup_logging()
    try:
        return _run(args)
    except KeyboardInterrupt:
        log.error("interrupted (Ctrl-C): stopped; the outputs of nights already written are kept")
        return EXIT_INTERRUPTED


def _run(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.checkpoint:
        overrides["inference.best_model"] = args.checkpoint
    if args.out:
        overrides["inference.save_dir"] = args.out
    if args.n_subjects is not None:
        overrides["inference.n_subjects"] = args.n_subjects
    if args.edf:
        overrides["inference.edf_file"] = args.edf
        overrides["inference.only_inference"] = True
        overrides["inference.ppg_file"] = ""  # --edf wins over a ppg_file in the config
    if args.ppg:
        overrides["inference.ppg_file"] = args.ppg
        overrides["inference.only_inference"] = True
    if args.fs is not None:
        overrides["inference.ppg_fs"] = args.fs
    if args.column:
        overrides["inference.ppg_column"] = args.column
    try:
        if args.edf and args.ppg:
            raise SetupError("give --edf or --ppg, not both (--ppg reads EDF files too)")
        cfg = load_config(args.config, overrides)
        inf_cfg = cfg["inference"]
        edf_mode = inf_cfg["only_inference"]
        ppg_spec = inf_cfg["ppg_file"]
        edf_paths = (resolve_edf_inputs(ppg_spec or inf_cfg["edf_file"], ppg=bool(ppg_spec)) if edf_mode else [])
        device = resolve_device(args.device, cfg["gpu"]["device_id"])
        model, model_info, n_windows = load_model(inf_cfg["best_model"], device)
        selection = None if edf_mode else select_hdf5_nights(cfg, n_windows, inf_cfg["n_subjects"])
        run_dir = make_run_dir(inf_cfg["save_dir"])  # last: a failed setup leaves no empty run folder
    except (ConfigError, SetupError) as err:
        log.error("%s", err)
        return EXIT_SETUP
    with log_to_file(run_dir / "inference.log"):
        return stage_and_report(args, cfg, edf_paths, device, model, model_info, n_windows, selection, run_dir)


if __name__ == "__main__":
    keep_freed_memory()  # process-wide allocator setting: for the script's own process, not for importers
    sys.exit(main())
