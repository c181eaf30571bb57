"""Stage nights with a trained SleepPPG-Net (PPG only): test-set nights from the processed HDF5 files (with
labels: metrics) or raw EDF recordings (no labels), with a validated per-night cache, CSV files, hypnograms
and a sleep report.

Modes
- HDF5 analysis (`inference.only_inference: false`): the valid subjects (exactly `data.windows_per_subject`
  windows) that are on the fixed SleepPPG-Net test list, sorted, shuffled with `inference.random_seed`, the
  first `inference.n_subjects`. Per subject: accuracy and Cohen's kappa over the scored epochs (label != -1);
  summary: mean/std over subjects plus pooled figures (`sleepppg_common.compute_metrics`).
- EDF (`inference.only_inference: true`, or `--edf PATH|FOLDER|GLOB`): one EDF, every *.edf of a folder, or
  a glob. Each night is preprocessed by `extract_mesa_data.preprocess_recording` (the training
  preprocessing: `preprocessing.resample_method`, `preprocessing.ppg_channels`) to the model's number of
  30-s windows, and cached in `<inference.cache_root>/<id>/` as `ppg_windows.npy` (float32, n_windows x 1024)
  + `meta.json`. The cache is reused only when meta.json matches the EDF (absolute path, size, mtime_ns) and
  the preprocessing settings (method, channel patterns, n_windows, extract_mesa_data.PREPROCESSING_VERSION);
  a stale, truncated or otherwise unreadable cache is rebuilt, with a log line saying why.

- PPG (`--ppg PATH|FOLDER|GLOB`, or `inference.ppg_file`): recordings of any format recording_formats reads,
  chosen by extension (.csv/.tsv/.txt tables, .npy, WFDB .hea with its .dat/.mat, .edf/.bdf; a folder gives
  every such file). `--fs` (`inference.ppg_fs`) is the rate where the file does not state it; `--column`
  (`inference.ppg_column`) the table column or record signal (default: the `preprocessing.ppg_channels`
  patterns). Time-stamped tables are resampled onto a uniform grid; missing stretches longer than
  `preprocessing.max_gap_s` are gaps: their epochs are not staged (CSV pred_name "Gap", empty probabilities;
  a break in the hypnogram; unscored in the sleep report) and listed in result.json (`gap_epochs`, `gaps`).
  Each item also records source_format, ppg_channel (the column used), ppg_fs_found (the rate the file states
  or its stamps show) and input_file. Same cache, preprocessing and outputs as EDF mode.

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
- `result.json`: run settings, one entry per night in `items` (subject_id, cache_used, epochs staged,
  truncated, files written, sleep_report, and in HDF5 mode performance and the scored sleep report),
  `failures` (subject/file and reason), and in HDF5 mode `metrics` (per-subject mean/std and pooled).
- `csv/<id>/<id>.csv`: one row per staged epoch, columns
  epoch,time_hours,pred_idx,pred_name,true_idx,true_name,mismatch,p_wake,p_light,p_deep,p_rem
  (time_hours = epoch start from the recording start; p_* = softmax of the logits, summing to 1;
  true_*/mismatch empty where there is no label: always in EDF mode, unscored epochs in HDF5 mode).
- `graph/<id>/<id>.png`: predicted hypnogram; with labels also `<id>_with_label.png` (scored vs predicted,
  mistakes marked, accuracy and kappa in the title).
- `inference.log`.

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

Exit status: 0 when every night was staged, 1 when any night failed (the others still run and result.json
lists the failures), 2 on bad setup (config, checkpoint, no EDF found, data files, device).

Usage: python inference_ppg_only.py --config configs/config_demo.yaml [--edf DIR | --ppg "nights/*" --fs 64]
       [--checkpoint best_model.pth]
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import datetime as dt
import glob
import itertools
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

# one owner of the preprocessing version and of what a cached night depends on: extraction
from extract_mesa_data import file_signature as edf_signature
from extract_mesa_data import preprocessing_settings
from sleepppg_common import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_SETUP, IGNORE_INDEX, N_CLASSES,
                             SAMPLES_PER_WINDOW, STAGE_NAMES, WINDOW_SECONDS, WINDOWS_PER_SUBJECT,
                             ConfigError, SetupError, atomic_output, compute_metrics, hypnogram_figure, json_safe,
                             keep_freed_memory, load_config, log_to_file, make_run_dir, resolve_device,
                             save_figure, setup_logging, subject_id_from_filename, summary_stats,
                             write_text_atomic)

# ----------------------------------------------------------------------------------------------------------
# Constants
CACHE_WINDOWS_FILE = "ppg_windows.npy"  # float32 (n_windows, 1024), z-scored PPG at 34.13 Hz, zero-padded
CACHE_META_FILE = "meta.json"  # EDF signature + preprocessing settings + night facts; written last
CSV_COLUMNS = ("epoch", "time_hours", "pred_idx", "pred_name", "true_idx", "true_name", "mismatch",
               "p_wake", "p_light", "p_deep", "p_rem")
SLEEP_STAGES = (1, 2, 3)  # class indices of Light, Deep and REM (0 is Wake)
WAKE, REM = 0, 3
EXIT_NIGHT_FAILED = EXIT_FAILED  # 1: some nights failed; the others were staged and written

log = logging.getLogger("inference_ppg_only")


# ----------------------------------------------------------------------------------------------------------
# Sleep report


def sleep_report(stages_W: Sequence[int] | np.ndarray, epoch_s: float = WINDOW_SECONDS) -> dict:
    """Standard sleep statistics of one hypnogram (definitions in the module docstring).

    Args:
        stages_W: stage per epoch (0 Wake, 1 Light, 2 Deep, 3 REM, -1 no stage), in time order from the
            recording start.
        epoch_s: epoch length in seconds (30).
    Returns:
        dict of minutes (floats), percentages and None where undefined.
    """
    stages_W = np.asarray(stages_W, dtype=np.int64).reshape(-1)
    bad = (stages_W < IGNORE_INDEX) | (stages_W >= N_CLASSES)
    if bad.any():
        raise ValueError(f"stages must be -1..{N_CLASSES - 1}, got {sorted(set(stages_W[bad].tolist()))}")
    epoch_min = epoch_s / 60.0
    counts = {name: int((stages_W == k).sum()) for k, name in enumerate(STAGE_NAMES)}
    n_scored = int((stages_W != IGNORE_INDEX).sum())
    sleep_idx = np.flatnonzero(np.isin(stages_W, SLEEP_STAGES))
    tst_epochs = int(sleep_idx.size)
    report: dict[str, Any] = {
        "epoch_s": float(epoch_s),
        "n_epochs": int(stages_W.size),
        "n_scored_epochs": n_scored,
        "time_in_bed_min": n_scored * epoch_min,
        "total_sleep_time_min": tst_epochs * epoch_min,
        "sleep_efficiency_pct": 100.0 * tst_epochs / n_scored if n_scored else None,
        "sleep_onset_latency_min": None,
        "sleep_period_min": None,
        "waso_min": None,
        "rem_latency_min": None,
        "stage_minutes": {name: c * epoch_min for name, c in counts.items()},
        "stage_percent_of_tst": {STAGE_NAMES[k]: (100.0 * counts[STAGE_NAMES[k]] / tst_epochs
                                                  if tst_epochs else None) for k in SLEEP_STAGES},
        "wake_percent_of_time_in_bed": 100.0 * counts[STAGE_NAMES[WAKE]] / n_scored if n_scored else None,
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


def format_sleep_report(subject_id: str, report: dict, extra: str = "") -> str:
    """A few human-readable lines for the console summary."""
    def fmt(v: float | None, unit: str) -> str:
        return "n/a" if v is None else f"{v:.1f}{unit}"

    mins, pct = report["stage_minutes"], report["stage_percent_of_tst"]
    stages = "  ".join(f"{name} {mins[name]:.1f} min" + ("" if name == "Wake" else f" ({fmt(pct[name], '%')})")
                       for name in STAGE_NAMES)
    return (f"[{subject_id}]{extra}\n"
            f"  time in bed {fmt(report['time_in_bed_min'], ' min')}, "
            f"TST {fmt(report['total_sleep_time_min'], ' min')}, "
            f"efficiency {fmt(report['sleep_efficiency_pct'], '%')}, "
            f"onset latency {fmt(report['sleep_onset_latency_min'], ' min')}, WASO {fmt(report['waso_min'], ' min')}, "
            f"REM latency {fmt(report['rem_latency_min'], ' min')}, "
            f"sleep period {fmt(report['sleep_period_min'], ' min')}\n"
            f"  {stages}")


# ----------------------------------------------------------------------------------------------------------
# Small helpers: ids, inputs, JSON


def subject_id_for(edf_path: str | os.PathLike) -> str:
    """MESA subject ID from a file name (mesa-sleep-0010.edf -> '0010'), else the file stem."""
    stem = Path(edf_path).stem
    return subject_id_from_filename(stem) or stem


def resolve_edf_inputs(spec: str, ppg: bool = False) -> list[Path]:
    """Files named by `spec`: a file, a folder (sorted: its *.edf, any case; with `ppg`, every file with a
    recording extension, see recording_formats.is_recording_file) or a glob pattern (sorted; with `ppg`, WFDB
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
            import recording_formats

            found = sorted(p for p in path.iterdir() if p.is_file() and recording_formats.is_recording_file(p))
        else:
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".edf")
        if not found:
            raise SetupError(f"no {'recording' if ppg else '.edf'} file in folder {path}")
        return found
    if glob.has_magic(spec):
        found = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True) if Path(p).is_file())
        if ppg:
            import recording_formats

            headers = {p.with_suffix("") for p in found if p.suffix.lower() == ".hea"}
            found = [p for p in found if not (p.suffix.lower() in recording_formats.WFDB_DATA_SUFFIXES
                                              and p.with_suffix("") in headers)]
        if not found:
            raise SetupError(f"no file matches the pattern {spec!r}")
        return found
    raise SetupError(f"{what} input not found: {spec} (give a file, a folder or a glob pattern)")


def unique_ids(paths: Sequence[Path]) -> list[str]:
    """Subject IDs for `paths`, made unique within the run (a repeated ID gets _2, _3 ...)."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        sid = subject_id_for(p)
        seen[sid] = seen.get(sid, 0) + 1
        out.append(sid if seen[sid] == 1 else f"{sid}_{seen[sid]}")
    return out


# ----------------------------------------------------------------------------------------------------------
# Cache: <cache_root>/<id>/ppg_windows.npy + meta.json


def load_cache(cache_dir: Path, signature: dict, settings: dict) -> tuple[np.ndarray | None, dict | None, str]:
    """Read a cached night if it is valid for this EDF and these settings.

    Returns:
        (ppg_windows_WS, meta, "") when valid; (None, None, reason) when missing, stale or corrupt.
    """
    meta_path, npy_path = cache_dir / CACHE_META_FILE, cache_dir / CACHE_WINDOWS_FILE
    if not meta_path.exists() and not npy_path.exists():
        return None, None, "no cache yet"
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("edf") != signature:
            return None, None, "the EDF changed (path, size or mtime differ)"
        if meta.get("settings") != settings:
            return None, None, "the preprocessing settings changed"
        n_windows = settings["n_windows"]
        n_recorded = int(meta["n_recorded_windows"])
        if not 0 < n_recorded <= n_windows:
            return None, None, f"bad n_recorded_windows {n_recorded} in meta.json"
        windows_WS = np.load(npy_path, allow_pickle=False)
    except FileNotFoundError as err:
        return None, None, f"incomplete cache ({Path(err.filename).name} missing)"
    except (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError) as err:
        # ValueError covers bad JSON and a truncated/garbled .npy; AttributeError a JSON that is not an object
        return None, None, f"corrupt cache ({type(err).__name__}: {err})"
    if windows_WS.dtype != np.float32 or windows_WS.shape != (n_windows, SAMPLES_PER_WINDOW):
        return None, None, f"corrupt cache (array {windows_WS.dtype} {windows_WS.shape})"
    if not np.isfinite(windows_WS).all():
        return None, None, "corrupt cache (non-finite values)"
    return windows_WS, meta, ""


def write_cache(cache_dir: Path, windows_WS: np.ndarray, meta: dict) -> None:
    """Write a night's cache atomically: drop the old meta.json, write the .npy, then meta.json last, so a
    crash at any point leaves either a complete valid cache or one that `load_cache` rejects."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / CACHE_META_FILE).unlink(missing_ok=True)
    with atomic_output(cache_dir / CACHE_WINDOWS_FILE) as tmp:
        with open(tmp, "wb") as fh:  # a file handle: np.save on a path would append ".npy" to the temp name
            np.save(fh, np.ascontiguousarray(windows_WS, dtype=np.float32), allow_pickle=False)
    write_text_atomic(cache_dir / CACHE_META_FILE, json.dumps(json_safe(meta), indent=2))


@dataclasses.dataclass
class Night:
    """One night ready for the model."""

    subject_id: str
    ppg_windows_WS: np.ndarray  # float32 (n_windows, 1024), zero-padded past n_recorded
    n_recorded: int  # epochs to stage (recorded, within the model's span)
    truncated: bool  # the recording was longer than the model's span; only its start is staged
    labels_W: np.ndarray | None = None  # int64 (n_windows,) in HDF5 mode
    info: dict = dataclasses.field(default_factory=dict)  # what goes into result.json


def ppg_settings(settings: dict, fs: float | None, column: str | None, max_gap_s: float) -> dict:
    """`preprocessing_settings` of --ppg mode: also the rate, column and gap limit the cache depends on."""
    return {**settings, "source": "ppg", "ppg_fs": fs, "ppg_column": column, "max_gap_s": max_gap_s}


def prepare_edf_night(edf_path: Path, subject_id: str, cache_root: Path, settings: dict) -> Night:
    """Cached or freshly preprocessed PPG windows of one EDF, or with `ppg_settings` of one recording in
    any format recording_formats reads (the cache then also covers a WFDB record's data files).

    Raises:
        extract_mesa_data.BadRecordingError (a ValueError) or OSError for an unusable recording.
    """
    import extract_mesa_data  # imported here: it pulls in scipy and (inside its readers) mne

    n_windows = settings["n_windows"]
    cache_dir = cache_root / subject_id
    signature = edf_signature(edf_path)
    any_format = settings.get("source") == "ppg"
    if any_format:
        import recording_formats

        recording_formats.recording_format(edf_path)  # an unknown extension fails before any cache is read
        signature["data_files"] = [edf_signature(p) for p in recording_formats.recording_files(edf_path)[1:]]
    windows_WS, meta, reason = load_cache(cache_dir, signature, settings)
    cache_used = windows_WS is not None
    if not cache_used:
        if reason != "no cache yet":
            log.info("%s: rebuilding cache in %s: %s", subject_id, cache_dir, reason)
        t0 = time.perf_counter()
        if any_format:
            pre = recording_formats.preprocess_file(
                edf_path, n_windows, settings["resample_method"], tuple(settings["ppg_channels"]),
                settings["ppg_fs"], settings["ppg_column"], settings["max_gap_s"])
        else:
            pre = extract_mesa_data.preprocess_recording(
                edf_path, n_windows=n_windows, method=settings["resample_method"],
                ppg_patterns=tuple(settings["ppg_channels"]), with_ecg=False)
        windows_WS = np.asarray(pre["ppg_windows"], dtype=np.float32)
        if windows_WS.shape != (n_windows, SAMPLES_PER_WINDOW):
            raise ValueError(f"preprocessing returned shape {windows_WS.shape}, expected "
                             f"{(n_windows, SAMPLES_PER_WINDOW)}")
        duration_s = float(pre["duration_s"])  # the PPG recording length
        n_recorded = int(pre["n_recorded_windows"])
        meta = {
            "subject_id": subject_id, "edf": signature, "settings": settings,
            "n_recorded_windows": n_recorded,
            "recording_hours": duration_s / 3600.0,
            "truncated": bool(duration_s > n_windows * WINDOW_SECONDS),
            "ppg_channel": pre.get("ppg_channel"), "ppg_fs": pre.get("ppg_fs"),
            "source_format": pre.get("source_format", "edf"), "ppg_fs_found": pre.get("ppg_fs_found", pre["ppg_fs"]),
            "gaps": pre.get("gaps", []), "gap_epochs": [e for e in pre["gap_epochs"] if e < n_recorded],
            "created_at": dt.datetime.now().isoformat(timespec="seconds"),
            "preprocess_s": round(time.perf_counter() - t0, 3),
        }
        write_cache(cache_dir, windows_WS, meta)
    n_recorded = int(meta["n_recorded_windows"])
    truncated = bool(meta.get("truncated", False))
    if truncated:
        log.warning("%s: recording is %.2f h long; staging only its first %.1f h (%d epochs)", subject_id,
                    meta.get("recording_hours") or float("nan"), n_windows * WINDOW_SECONDS / 3600, n_windows)
    info = {"input_file" if any_format else "edf_file": signature["path"], "cache_dir": str(cache_dir),
            "cache_used": cache_used, "ppg_channel": meta.get("ppg_channel"), "ppg_fs": meta.get("ppg_fs"),
            "recording_hours": meta.get("recording_hours")}
    if any_format:  # what the file turned out to be; gap epochs are not staged (see `predicted_stages`)
        info.update({key: meta.get(key) for key in ("source_format", "ppg_fs_found", "gaps", "gap_epochs")})
    return Night(subject_id, windows_WS, n_recorded, truncated, None, info)


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
    """Save the hypnogram of `sleepppg_common.hypnogram_figure` (predicted; with `true_W` scored vs predicted,
    mistakes shaded) as a PNG, atomically. Thread-safe (no pyplot state), so it runs in the writer thread."""
    save_figure(hypnogram_figure(pred_W, title, true_W=true_W, epoch_s=epoch_s), path)


def write_night_outputs(run_dir: Path, night: Night, probs_WC: np.ndarray, flags: dict,
                        performance: dict | None = None) -> dict:
    """CSV and hypnograms of one night (as the flags allow); returns the paths written (None if skipped)."""
    sid = night.subject_id
    pred_W = predicted_stages(probs_WC)
    true_W = None if night.labels_W is None else night.labels_W[:night.n_recorded]
    paths: dict[str, str | None] = {"csv": None, "graph_pred": None, "graph_with_label": None}
    if flags["save_csv"]:
        csv_path = run_dir / "csv" / sid / f"{sid}.csv"
        write_csv(csv_path, probs_WC, WINDOW_SECONDS, true_W)
        paths["csv"] = str(csv_path)
    if flags["save_graph"]:
        hours = night.n_recorded * WINDOW_SECONDS / 3600
        note = " (first part of a longer recording)" if night.truncated else ""
        png = run_dir / "graph" / sid / f"{sid}.png"
        plot_hypnogram(png, pred_W, f"{sid}: predicted hypnogram, {hours:.2f} h{note}")
        paths["graph_pred"] = str(png)
        if true_W is not None and performance is not None:
            kappa = performance.get("kappa")
            kappa_txt = "undefined" if kappa is None else f"{kappa:.3f}"
            png_lab = run_dir / "graph" / sid / f"{sid}_with_label.png"
            plot_hypnogram(png_lab, pred_W, f"{sid}: kappa {kappa_txt}, accuracy {performance['accuracy']:.1%} "
                           f"({performance['n_scored_epochs']} scored epochs)", true_W=true_W)
            paths["graph_with_label"] = str(png_lab)
    return paths


class OutputWriter:
    """Writes each night's CSV and hypnograms in one background thread, so the next forward pass does not wait
    for them; `close()` waits for every write and re-raises the first error (e.g. a full disk)."""

    def __init__(self, run_dir: Path | None, flags: dict):
        self.run_dir, self.flags = run_dir, flags
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="outputs")
        self.futures: list[concurrent.futures.Future] = []

    def submit(self, item: dict, night: Night, probs_WC: np.ndarray, performance: dict | None = None) -> None:
        """Write the outputs of `night` and record their paths in `item` (None where a flag is off)."""
        item.update({"csv": None, "graph_pred": None, "graph_with_label": None})
        if self.run_dir is None:
            return
        night = dataclasses.replace(night, ppg_windows_WS=None)  # the writer needs no signal: free it early

        def write() -> None:
            item.update(write_night_outputs(self.run_dir, night, probs_WC, self.flags, performance))

        self.futures.append(self.pool.submit(write))

    def close(self) -> None:
        try:
            for future in self.futures:
                future.result()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------------------------------------
# Modes


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


def prefetch(jobs: Sequence[tuple], prepare, lookahead: int,
             workers: int = 1) -> Iterable[tuple[tuple, concurrent.futures.Future, bool]]:
    """Run `prepare(*job)` for each job in `workers` background threads, at most `lookahead` jobs ahead of
    the consumer, and yield (job, future, next_is_ready) in job order. The EDF reading and filtering of the
    next nights then overlap the model's forward pass of the current ones (scipy, numpy and torch release the
    GIL in their loops, so threads run in parallel), while memory stays bounded to `lookahead` nights."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preprocess") as pool:
        pending: collections.deque = collections.deque()
        remaining = iter(jobs)
        for job in itertools.islice(remaining, max(1, lookahead)):
            pending.append((job, pool.submit(prepare, *job)))
        try:
            while pending:
                job, future = pending.popleft()
                concurrent.futures.wait([future])
                nxt = next(remaining, None)
                if nxt is not None:
                    pending.append((nxt, pool.submit(prepare, *nxt)))
                yield job, future, bool(pending) and pending[0][1].done()
        finally:
            for _, future in pending:  # consumer stopped early (error, Ctrl-C): drop the queued work
                future.cancel()


def run_edf_mode(model, n_windows: int, cfg: dict, edf_paths: list[Path], run_dir: Path | None,
                 device: torch.device, flags: dict) -> tuple[list[dict], list[dict]]:
    """Stage every EDF: preprocess (or reuse the cache) in a background thread, forward the nights that are
    ready in batches of at most `inference.batch_size` (never waiting for a night while others are ready, so
    preprocessing and forward overlap), write outputs. Returns (items, failures) for result.json."""
    from tqdm import tqdm

    import extract_mesa_data

    pre_cfg, inf_cfg = cfg["preprocessing"], cfg["inference"]
    settings = preprocessing_settings(pre_cfg["resample_method"], pre_cfg["ppg_channels"], n_windows)
    mode = "PPG" if inf_cfg["ppg_file"] else "EDF"  # --ppg: any format, read by recording_formats
    if mode == "PPG":
        settings = ppg_settings(settings, inf_cfg["ppg_fs"], inf_cfg["ppg_column"], pre_cfg["max_gap_s"])
    cache_root = Path(inf_cfg["cache_root"])
    batch_size, bf16 = inf_cfg["batch_size"], cfg["gpu"]["mixed_precision"]
    items, failures = [], []
    jobs = [(path, sid, cache_root, settings) for sid, path in zip(unique_ids(edf_paths), edf_paths)]
    # preprocessing threads: preprocessing.workers (0 = one per CPU core). On a GPU box they keep the GPU fed;
    # on a small CPU box the forward pass dominates and extra threads simply wait.
    workers = max(1, min(pre_cfg["workers"] or os.cpu_count() or 1, len(jobs)))
    if workers > 1:
        import mne

        # mne switches its log level per call and back, which is not thread-safe: set it once for all threads
        mne.set_log_level("WARNING")

    def flush(nights: list[Night]) -> None:
        for night, probs_WC in zip(nights, stage_nights(model, nights, device, bf16)):
            item = {"subject_id": night.subject_id, "mode": mode, "n_epochs_staged": night.n_recorded,
                    "hours_staged": night.n_recorded * WINDOW_SECONDS / 3600, "truncated": night.truncated,
                    **night.info, "sleep_report": sleep_report(predicted_stages(probs_WC))}
            writer.submit(item, night, probs_WC)
            items.append(item)
            bar.update(1)

    batch: list[Night] = []
    writer = OutputWriter(run_dir, flags)
    with tqdm(total=len(jobs), desc="nights", unit="night", disable=None) as bar:
        for (path, sid, *_), future, next_ready in prefetch(jobs, prepare_edf_night, batch_size + workers, workers):
            try:
                batch.append(future.result())
            except (extract_mesa_data.BadRecordingError, ValueError, OSError) as err:
                log.error("%s: skipped %s: %s", sid, path, err)
                failures.append({"subject_id": sid, "input_file" if mode == "PPG" else "edf_file": str(path),
                                 "error": f"{type(err).__name__}: {err}",
                                 "kind": getattr(err, "kind", type(err).__name__)})
                bar.update(1)
            if batch and (len(batch) == batch_size or not next_ready):
                flush(batch)
                batch = []
        if batch:
            flush(batch)
        writer.close()
    return items, failures


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
        test_set = set(mda.SLEEPPPG_TEST_SUBJECTS)
        pool = [sid for sid in valid if sid in test_set]
        if not pool:
            raise SetupError(f"none of the {len(valid)} valid subjects (with {n_windows} windows) in "
                             f"{paths['index']} is on the SleepPPG-Net test list")
        chosen = select_test_subjects(pool, n_subjects, cfg["inference"]["random_seed"])
        starts = mda.read_night_starts(paths["index"], chosen, n_windows)
    except (OSError, ValueError, KeyError) as err:
        raise SetupError(f"cannot read the processed data index {paths['index']}: {err}") from None
    return Hdf5Selection(Path(paths["ppg"]), Path(paths["index"]), chosen,
                         {sid: int(start) for sid, start in zip(chosen, starts)})


def run_hdf5_mode(model, n_windows: int, cfg: dict, sel: Hdf5Selection, run_dir: Path | None,
                  device: torch.device, flags: dict) -> tuple[list[dict], list[dict], dict | None]:
    """Stage the selected test nights from the processed HDF5 file; per-subject and pooled metrics."""
    import h5py
    from tqdm import tqdm

    import multimodal_dataset_aligned as mda

    items, failures = [], []
    all_true, all_pred, all_sid, accs, kappas = [], [], [], [], []
    bf16 = cfg["gpu"]["mixed_precision"]
    file_info = {"ppg_file": str(sel.ppg_file.resolve()), "index_file": str(sel.index_file.resolve())}
    writer = OutputWriter(run_dir, flags)
    with h5py.File(sel.ppg_file, "r") as ppg_h5:
        for chunk in tqdm(list(_batches(sel.subjects, cfg["inference"]["batch_size"])), desc="batches",
                          unit="batch", disable=None):
            nights = []
            for sid in chunk:
                try:
                    night_arrays = mda.read_night({"ppg": ppg_h5}, sel.starts[sid], n_windows)
                    ppg_WS, labels_W = night_arrays["ppg"], night_arrays["labels"]
                except (OSError, ValueError) as err:
                    log.error("%s: skipped: cannot read its night: %s", sid, err)
                    failures.append({"subject_id": sid, "error": f"{type(err).__name__}: {err}", "kind": "unreadable"})
                    continue
                n_rec = recorded_epochs(ppg_WS, labels_W)
                if n_rec == 0 or not (labels_W != IGNORE_INDEX).any():
                    log.error("%s: skipped: no recorded or scored epochs", sid)
                    failures.append({"subject_id": sid, "error": "no recorded or scored epochs",
                                     "kind": "no_scored_epochs"})
                    continue
                nights.append(Night(sid, ppg_WS, n_rec, False, labels_W, dict(file_info)))
            if not nights:
                continue
            for night, probs_WC in zip(nights, stage_nights(model, nights, device, bf16)):
                pred_W = probs_WC.argmax(axis=1)
                true_W = night.labels_W[:night.n_recorded]
                m = compute_metrics(true_W, pred_W)
                perf = {"accuracy": m["accuracy"], "kappa": json_safe(m["kappa"]), "n_scored_epochs": m["n_epochs"]}
                accs.append(m["accuracy"])
                if perf["kappa"] is not None:
                    kappas.append(m["kappa"])
                all_true.append(true_W)
                all_pred.append(pred_W)
                all_sid.append(np.full(true_W.size, night.subject_id))
                item = {"subject_id": night.subject_id, "mode": "H5", "n_epochs_staged": night.n_recorded,
                        "hours_staged": night.n_recorded * WINDOW_SECONDS / 3600, "truncated": False,
                        **night.info, "performance": perf, "sleep_report": sleep_report(pred_W),
                        "sleep_report_scored": sleep_report(true_W)}
                writer.submit(item, night, probs_WC, perf)
                items.append(item)
    writer.close()
    metrics = None
    if items:
        pooled = compute_metrics(np.concatenate(all_true), np.concatenate(all_pred), np.concatenate(all_sid))
        acc_stats, kappa_stats = summary_stats(accs), summary_stats(kappas)
        metrics = {"subjects": len(items), "acc_mean": acc_stats["mean"], "acc_std": acc_stats["std"],
                   "kappa_mean": kappa_stats["mean"], "kappa_std": kappa_stats["std"],
                   "kappa_median": kappa_stats["median"], "per_subject_accuracy": acc_stats,
                   "per_subject_kappa": kappa_stats, "pooled": pooled}
    return items, failures, metrics


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
    """Rebuild the PPG-only model from its checkpoint alone; returns (model in eval mode, info, n_windows)."""
    import multimodal_sleep_model

    path = Path(checkpoint)
    if not path.is_file():
        raise SetupError(f"checkpoint not found: {path} (set inference.best_model or pass --checkpoint)")
    try:
        model, ckpt = multimodal_sleep_model.load_model_from_checkpoint(path, map_location="cpu",
                                                                          expected_kind="ppg_only")
    except (ValueError, KeyError, RuntimeError, OSError) as err:
        raise SetupError(f"cannot load checkpoint {path}: {err}") from None
    model_args = dict(ckpt.get("model_args") or {})
    n_windows = int(model_args.get("n_windows", WINDOWS_PER_SUBJECT))
    fold_batchnorm(model).to(device)
    info = {"path": str(path.resolve()), "model_kind": ckpt.get("model_kind"), "model_args": model_args,
            "epoch": ckpt.get("epoch")}
    return model, info, n_windows


def stage_and_report(args: argparse.Namespace, cfg: dict, edf_paths: list[Path], device: torch.device, model,
                     model_info: dict, n_windows: int, selection: Hdf5Selection | None, run_dir: Path) -> int:
    """Stage the nights, write result.json, print the summary; returns the exit status."""
    inf_cfg = cfg["inference"]
    edf_mode = inf_cfg["only_inference"]
    flags = {k: inf_cfg[k] for k in ("save_csv", "save_graph", "save_json")}
    started = dt.datetime.now().isoformat(timespec="seconds")
    mode = ("PPG" if inf_cfg["ppg_file"] else "EDF") if edf_mode else "H5"
    log.info("run %s: %s mode, model %s (%d windows = %.1f h), device %s", run_dir.name, mode, model_info["path"],
             n_windows, n_windows * WINDOW_SECONDS / 3600, device)
    t0 = time.perf_counter()
    metrics = None
    if edf_mode:
        items, failures = run_edf_mode(model, n_windows, cfg, edf_paths, run_dir, device, flags)
    else:
        items, failures, metrics = run_hdf5_mode(model, n_windows, cfg, selection, run_dir, device, flags)
    elapsed = time.perf_counter() - t0

    result = {
        "run_id": run_dir.name, "mode": mode, "config": str(Path(args.config).resolve()),
        "model_checkpoint": model_info["path"], "model": model_info, "device": str(device),
        "random_seed": inf_cfg["random_seed"], "started_at": started,
        "finished_at": dt.datetime.now().isoformat(timespec="seconds"), "elapsed_s": round(elapsed, 3),
        "n_windows": n_windows, "epoch_s": WINDOW_SECONDS,
        "preprocessing": (preprocessing_settings(cfg["preprocessing"]["resample_method"],
                                                 cfg["preprocessing"]["ppg_channels"], n_windows)
                          if edf_mode else None),
        "cache_root": str(Path(inf_cfg["cache_root"]).resolve()) if edf_mode else None,
        "n_ok": len(items), "n_failed": len(failures), "items": items, "failures": failures, "metrics": metrics,
    }
    if flags["save_json"]:
        write_text_atomic(run_dir / "result.json", json.dumps(json_safe(result), indent=2, ensure_ascii=False))

    for item in items:
        extra = ""
        if "performance" in item:
            perf = item["performance"]
            kappa = "undefined" if perf["kappa"] is None else f"{perf['kappa']:.3f}"
            extra = f" accuracy {perf['accuracy']:.3f}, kappa {kappa}"
        elif item.get("cache_used") is not None:
            extra = f" {item['hours_staged']:.2f} h staged, cache {'reused' if item['cache_used'] else 'built'}"
            if item["truncated"]:
                extra += " (recording longer than the model's span: first part only)"
        print(format_sleep_report(item["subject_id"], item["sleep_report"], extra))
    if metrics is not None:
        print(f"{metrics['subjects']} subjects: accuracy {metrics['acc_mean']:.3f} +/- {metrics['acc_std']:.3f}, "
              f"kappa {metrics['kappa_mean']:.3f} +/- {metrics['kappa_std']:.3f} (per subject); pooled accuracy "
              f"{metrics['pooled']['accuracy']:.3f}, kappa {metrics['pooled']['kappa']:.3f}")
    for fail in failures:
        print(f"FAILED {fail['subject_id']}: {fail['error']}")
    print(f"{len(items)} night(s) staged, {len(failures)} failed in {elapsed:.1f} s. Results at: {run_dir}")
    return EXIT_NIGHT_FAILED if failures else EXIT_OK


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
    p.add_argument("--out", help="output root; overrides inference.save_dir (a run folder is made inside)")
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
