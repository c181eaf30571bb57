"""Preprocess MESA polysomnography (EDF + NSRR XML) into the HDF5 windows and labels SleepPPG-Net trains on.

Other NSRR-style cohorts work too: files pair by the subject ID that `preprocessing.id_pattern` (`--id-pattern`,
a regex with one group; MESA's by default) finds in their names, and the annotation of `<stem>.edf` is
`<stem>-nsrr.xml` (NSRR XML) or `<stem>-profusion.xml` (Compumedics Profusion XML; NSRR preferred when both).
IDs that differ only by leading zeros (282, 0282) are all skipped as 'id_clash'.

For every subject with both files: read the PPG (Pleth) and ECG (EKG) channels (our own EDF/BDF reader: one
open and one pass per file), filter, resample to 34.133 Hz (1,024 samples per 30-s epoch), clip at
mean +/- 3 SD and z-score (Kotzen et al. 2023), cut into 1,200 windows (the first 10 h, zero-padded) and
label each 30-s epoch from the XML stage runs (Wake 0, Light 1, Deep 2, REM 3, -1 unscored or beyond the
recording).

Outputs in the output folder (default ./mesa-x; names, keys and attrs as the reference's), rows in sorted
subject-ID order:
- mesa_ppg_with_labels.h5: ppg (N_windows, 1024) float32, labels (N_windows,) int64, subject_ids (N_windows,) S4;
- mesa_real_ecg.h5: ecg (N_windows, 1024) float32 (zeros without ECG), has_real_ecg, subject_ids, labels,
  real_ecg_indices;
- mesa_subject_index.h5: subjects/<id>/window_indices with attrs n_windows, has_ecg, n_recorded_windows;
- data_stats.npy/.txt, failed_subjects.json (id, file, kind, reason per skipped subject),
  subject_warnings.json (id, file, warning per kept subject that looks suspicious), extract_manifest.json
  (settings, sources, subjects: says whether a rerun is up to date), logs/processing.log.

How it runs: worker processes preprocess subjects one at a time and each writes `<out>/.parts/<id>.npz`
(temporary name, then rename), so a run killed at any moment resumes without redoing finished subjects. A
child process then streams the parts, in sorted ID order, into pre-sized HDF5 datasets written under
temporary names and renamed at the end. Memory stays at about one subject per process whatever the cohort size.

Bad data never stops the run: a subject whose EDF or XML is missing, unreadable (no permission), truncated,
not an EDF, has an absurd header field (no signals, record duration 0/negative/NaN, a header size that
disagrees with the signal count, a PPG with no scale or no samples), no PPG channel, a flat or mostly-NaN PPG,
a malformed XML, no stage events, or no scored epoch within the recording is logged, skipped and listed in
failed_subjects.json with its file, kind and reason. Suspicious but usable data (a PPG at its digital limits
for over 5% of the night, stages ending over 30 min before or after the EDF, a record count that disagrees
with the file size, bytes after the last record, two channels with the same label, an unusable ECG) is kept
and listed in subject_warnings.json. A damaged part file from an earlier run is detected (each array's CRC-32
and shape) and rebuilt.

Exit status: 0 every subject done; 1 some subjects failed; 2 bad setup (a missing or unreadable folder, an
output folder that is a file or not writable, no subjects, a bad config) or a full disk (one line saying how
much to free; run the same command again); 130 on Ctrl-C (finished subjects are kept).

DREAMT (`--format dreamt --csv-dir DIR`, or preprocessing.format/csv_dir): one CSV per participant
(S002_whole_df.csv -> subject S002) read by sleepppg.formats.preprocess_dreamt: the `preprocessing.ppg_column`
(BVP) signal, the ECG column when present, stages from Sleep_Stage; epochs start at lights-off (the first
sample not staged P). The same preprocessing, part files, outputs and bad-subject handling as the EDF path.

Usage: python extract_mesa_data.py --config configs/config_cloud.yaml --workers 8
       python extract_mesa_data.py --format dreamt --csv-dir ./DREAMT/data_64Hz --out-dir ./dreamt-x
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import errno
import json
import logging
import math
import os
import shutil
import sys
import time
import zipfile
import zlib
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np

from sleepppg.annotations import xml_to_labels
from sleepppg.cli import setup_logging
from sleepppg.config import load_config
from sleepppg.constants import (
    ECG_FILE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SETUP,
    IGNORE_INDEX,
    INDEX_FILE,
    MESA_ID_PATTERN,
    PPG_FILE,
    SAMPLES_PER_WINDOW,
    STAGE_NAMES,
    TARGET_FS,
    WINDOW_SECONDS,
)
from sleepppg.errors import BadRecordingError, ConfigError, SetupError
from sleepppg.ids import compile_id_pattern
from sleepppg.preprocessing import (
    file_signature,
    input_signature,
    preprocess_recording,
    preprocessing_settings,
)
from sleepppg.runio import atomic_output, write_text_atomic
from sleepppg.runtime import keep_freed_memory

log = logging.getLogger("extract_mesa_data")

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "config_cloud.yaml"
FAILED_FILE = "failed_subjects.json"
MANIFEST_FILE = "extract_manifest.json"
WARNINGS_FILE = "subject_warnings.json"  # subjects kept despite something suspicious (id, file, warning)
PARTS_DIR = ".parts"
DREAMT_KEYS = ("ppg_column", "nominal_fs", "max_gap_s")  # preprocessing keys only DREAMT extraction uses
LABEL_HORIZON_EPOCHS = 2880  # stages are read over 24 h to compare the XML's length with the EDF's
XML_LENGTH_WARN_S = 1800.0  # warn when the stages end more than 30 min before or after the EDF does


class BadPartError(RuntimeError):
    """A part file is damaged (truncated, bad CRC, wrong arrays); `part` is its path. It is rebuilt."""

    def __init__(self, message: str, part: str | os.PathLike):
        super().__init__(message)
        self.part = str(part)


def _part_arrays(rec: dict, labels: np.ndarray) -> dict[str, np.ndarray]:
    arrays = {"ppg": rec["ppg_windows"], "labels": labels}
    if rec["has_ecg"]:
        arrays["ecg"] = rec["ecg_windows"]
    return arrays


def read_part(part: Path, n_windows: int) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, arrays) of one part file, checked: every array is read in full, which checks its CRC-32
    (np.savez stores each array as a zip member with its checksum), and shapes and dtypes must match the meta.

    Raises:
        BadPartError: naming the file and the problem.
    """
    try:
        with np.load(part, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
            arrays = {name: npz[name] for name in npz.files if name != "meta"}
    except FileNotFoundError:
        raise BadPartError(f"part file {part} is missing", part) from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise BadPartError(f"part file {part} is damaged ({type(err).__name__}: {err})", part) from None
    expected = {"ppg": ((n_windows, SAMPLES_PER_WINDOW), np.float32), "labels": ((n_windows,), np.int64)}
    if isinstance(meta, dict) and meta.get("has_ecg"):
        expected["ecg"] = ((n_windows, SAMPLES_PER_WINDOW), np.float32)
    if not isinstance(meta, dict) or sorted(arrays) != sorted(expected) or any(
            arrays[k].shape != shape or arrays[k].dtype != dtype for k, (shape, dtype) in expected.items()):
        raise BadPartError(f"part file {part} holds unexpected arrays "
                           f"{ {k: (v.shape, str(v.dtype)) for k, v in arrays.items()} }", part)
    return meta, arrays


def _read_part_meta(part: Path) -> dict | None:
    """The meta of a part file, or None when it cannot be read (cheap: the arrays are not read)."""
    try:
        with np.load(part, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
        return None
    return meta if isinstance(meta, dict) else None


def _labels_for(labels_long: np.ndarray, xml: str, rec: dict, n_windows: int) -> tuple[np.ndarray, list[str]]:
    """From the XML's labels over LABEL_HORIZON_EPOCHS (`xml_to_labels`): the labels of the first
    `n_windows` epochs (-1 after the recording) and warnings about the XML's length against the EDF's.

    Raises:
        BadRecordingError: 'no_scored_epochs' when no epoch within the recording carries a stage (e.g. every
            stage lies after the recording ends).
    """
    labels = labels_long[:n_windows].copy()
    labels[rec["n_recorded_windows"]:] = IGNORE_INDEX  # epochs beyond the recording
    scored = np.flatnonzero(labels_long != IGNORE_INDEX)
    hours = rec["duration_s"] / 3600
    if not (labels != IGNORE_INDEX).any():
        where = (f"stages span {scored[0] * WINDOW_SECONDS / 3600:.2f}-{(scored[-1] + 1) * WINDOW_SECONDS / 3600:.2f} h"
                 if scored.size else "no epoch carries a sleep stage")
        raise BadRecordingError(f"no scored epoch within the first {rec['n_recorded_windows']} recorded epochs "
                                f"(EDF {hours:.2f} h; {where})", kind="no_scored_epochs", path=xml)
    warnings = []
    stage_end_s = (scored[-1] + 1) * WINDOW_SECONDS
    if abs(stage_end_s - rec["duration_s"]) > XML_LENGTH_WARN_S:
        warnings.append(f"the XML's stages end at {stage_end_s / 3600:.2f} h but the EDF lasts {hours:.2f} h")
    return labels, warnings


def process_subject(job: dict) -> dict:
    """Preprocess one subject and write `<parts>/<id>.npz` atomically.

    Args:
        job: dict(id, edf, xml, part, signature, windows_per_subject, resample_method, ppg_channels, format;
            with format 'dreamt' also ppg_column, nominal_fs, max_gap_s, and edf = xml = the participant's CSV).
    Returns:
        dict(id, ok, kind, reason, file, warnings, seconds, has_ecg, n_recorded_windows); bad data gives
        ok=False with the reason and the file at fault instead of raising.
    Raises:
        OSError: only when the part cannot be written (a full disk): that stops the run, not the subject.
    """
    t0 = time.perf_counter()
    sid = job["id"]
    n_windows = job["windows_per_subject"]
    try:
        if job.get("format") == "dreamt":
            from sleepppg import formats

            labels, rec = formats.preprocess_dreamt(job["edf"], n_windows, job["resample_method"],
                                                              job["ppg_column"], job["nominal_fs"], job["max_gap_s"])
            labels = np.array(labels, dtype=np.int64)
            labels[rec["n_recorded_windows"]:] = IGNORE_INDEX  # epochs beyond the recording
            xml_warnings = []
        else:
            labels_long = xml_to_labels(job["xml"], max(n_windows, LABEL_HORIZON_EPOCHS))  # first: it is cheap
            rec = preprocess_recording(job["edf"], n_windows, job["resample_method"], tuple(job["ppg_channels"]))
            labels, xml_warnings = _labels_for(labels_long, job["xml"], rec, n_windows)
    except BadRecordingError as err:
        return {"id": sid, "ok": False, "kind": err.kind, "reason": str(err), "file": err.path or job["edf"],
                "warnings": [], "seconds": time.perf_counter() - t0}
    except Exception as err:  # noqa: BLE001 - a failure nobody foresaw (out of memory, ...) costs this subject only
        log.debug("subject %s failed", sid, exc_info=True)
        return {"id": sid, "ok": False, "kind": "unexpected_error", "reason": f"{type(err).__name__}: {err}",
                "file": job["edf"], "warnings": [], "seconds": time.perf_counter() - t0}
    warnings = rec["warnings"] + xml_warnings
    for text in xml_warnings:
        log.warning("%s: %s", Path(job["xml"]).name, text)
    meta = {"id": sid, "signature": job["signature"], "has_ecg": rec["has_ecg"],
            "n_recorded_windows": rec["n_recorded_windows"], "ppg_channel": rec["ppg_channel"],
            "ppg_fs": rec["ppg_fs"], "warnings": warnings}
    part = Path(job["part"])
    with atomic_output(part) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **_part_arrays(rec, labels), meta=np.array(json.dumps(meta)))
    return {"id": sid, "ok": True, "kind": None, "reason": None, "file": job["edf"], "warnings": warnings,
            "seconds": time.perf_counter() - t0, "has_ecg": rec["has_ecg"],
            "n_recorded_windows": rec["n_recorded_windows"]}


# ----------------------------------------------------------------------------------------------------------
# Assembly: parts -> three HDF5 files


def _compression_args(compression: str) -> dict:
    return {} if compression == "none" else {"compression": compression}


def assemble(out_dir: Path, subjects: list[str], parts_dir: Path, settings: dict) -> dict:
    """Stream the part files of `subjects` (sorted) into the three HDF5 files (written under temporary
    names, renamed when complete); return statistics.

    Raises:
        BadPartError: a part file fails its checks (`read_part`); OSError from h5py (a full disk).
    """
    import h5py

    n_windows = settings["windows_per_subject"]
    total = len(subjects) * n_windows
    sid_dtype = f"S{max(4, max(len(s) for s in subjects))}"
    chunk_rows = min(settings["chunk_windows"], total)
    signal_args = dict(shape=(total, SAMPLES_PER_WINDOW), dtype=np.float32, fillvalue=np.float32(0),
                       chunks=(chunk_rows, SAMPLES_PER_WINDOW), **_compression_args(settings["compression"]))
    with contextlib.ExitStack() as stack:
        tmp_ppg, tmp_ecg, tmp_index = (stack.enter_context(atomic_output(out_dir / name))
                                       for name in (PPG_FILE, ECG_FILE, INDEX_FILE))
        f_ppg = stack.enter_context(h5py.File(tmp_ppg, "w"))
        f_ecg = stack.enter_context(h5py.File(tmp_ecg, "w"))
        f_index = stack.enter_context(h5py.File(tmp_index, "w"))
        d_ppg = f_ppg.create_dataset("ppg", **signal_args)
        d_ecg = f_ecg.create_dataset("ecg", **signal_args)
        labels_all = np.empty(total, dtype=np.int64)
        has_ecg_all = np.empty(total, dtype=bool)
        subjects_group = f_index.create_group("subjects")
        for i, sid in enumerate(subjects):
            rows = slice(i * n_windows, (i + 1) * n_windows)
            meta, part = read_part(parts_dir / f"{sid}.npz", n_windows)
            d_ppg[rows] = part["ppg"]
            if meta["has_ecg"]:
                d_ecg[rows] = part["ecg"]  # without ECG the rows keep the fill value 0
            labels_all[rows] = part["labels"]
            has_ecg_all[rows] = meta["has_ecg"]
            g = subjects_group.create_group(sid)
            g.create_dataset("window_indices", data=np.arange(rows.start, rows.stop, dtype=np.int64))
            g.attrs["n_windows"] = n_windows
            g.attrs["has_ecg"] = bool(meta["has_ecg"])
            g.attrs["n_recorded_windows"] = int(meta["n_recorded_windows"])
        subject_ids = np.repeat(np.array(subjects, dtype=sid_dtype), n_windows)
        for f in (f_ppg, f_ecg):
            f.create_dataset("labels", data=labels_all)
            f.create_dataset("subject_ids", data=subject_ids)
        f_ecg.create_dataset("has_real_ecg", data=has_ecg_all)
        f_ecg.create_dataset("real_ecg_indices", data=np.flatnonzero(has_ecg_all).astype(np.int64))
        settings_attrs = {"windows_per_subject": n_windows, "resample_method": settings["resample_method"]}
        f_ppg.attrs.update(sampling_rate=TARGET_FS, window_duration=WINDOW_SECONDS,
                           samples_per_window=SAMPLES_PER_WINDOW, total_windows=total,
                           total_subjects=len(subjects), **settings_attrs)
        n_ecg = int(has_ecg_all.sum())
        f_ecg.attrs.update(windows_with_real_ecg=n_ecg, windows_without_real_ecg=total - n_ecg)
        f_index.attrs.update(total_subjects=len(subjects), total_windows=total, **settings_attrs)
        valid = labels_all[labels_all != IGNORE_INDEX]
        label_counts = {int(k): int(v) for k, v in zip(*np.unique(valid, return_counts=True))}
    return {
        "total_windows": total, "total_subjects": len(subjects), "windows_with_real_ecg": n_ecg,
        "windows_without_real_ecg": total - n_ecg, "ppg_shape": (total, SAMPLES_PER_WINDOW),
        "ecg_shape": (total, SAMPLES_PER_WINDOW), "valid_labels": int(valid.size),
        "label_distribution": label_counts, "sampling_rate": TARGET_FS,
        "window_duration": WINDOW_SECONDS, "samples_per_window": SAMPLES_PER_WINDOW,
        "windows_per_subject": n_windows, "resample_method": settings["resample_method"],
        "file_structure": {PPG_FILE: ["ppg", "labels", "subject_ids"],
                           ECG_FILE: ["ecg", "has_real_ecg", "subject_ids", "labels", "real_ecg_indices"],
                           INDEX_FILE: ["subjects/{subject_id}/window_indices"]},
    }


def write_stats(out_dir: Path, stats: dict) -> None:
    """data_stats.npy (a pickled dict, as the reference: np.load(..., allow_pickle=True).item()) and .txt."""
    with atomic_output(out_dir / "data_stats.npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.array(stats, dtype=object), allow_pickle=True)
    lines = ["MESA sleep data processing statistics", "=" * 50, "",
             f"Total windows: {stats['total_windows']}", f"Total subjects: {stats['total_subjects']}",
             f"Windows with real ECG: {stats['windows_with_real_ecg']}",
             f"Windows without real ECG: {stats['windows_without_real_ecg']}",
             f"Valid labels: {stats['valid_labels']}", "", "Label distribution:"]
    lines += [f"  {STAGE_NAMES[k]}: {v}" for k, v in stats["label_distribution"].items()]
    lines += ["", f"Sampling rate: {stats['sampling_rate']} Hz",
              f"Window duration: {stats['window_duration']} seconds",
              f"Samples per window: {stats['samples_per_window']}",
              f"Windows per subject: {stats['windows_per_subject']}",
              f"Resample method: {stats['resample_method']}", ""]
    write_text_atomic(out_dir / "data_stats.txt", "\n".join(lines))


# ----------------------------------------------------------------------------------------------------------
# Driver


def find_subjects(edf_dir: Path, xml_dir: Path, id_pattern: str = MESA_ID_PATTERN
                  ) -> tuple[dict[str, tuple[Path | None, Path | None]], dict[str, tuple[str, str]]]:
    """All subject IDs seen in either folder -> (edf or None, xml or None), plus {id: (kind, reason)} for IDs
    that are not processed: 'duplicate_files' (two files of one kind) and 'id_clash' (IDs that differ only
    by leading zeros, e.g. 282 and 0282: every one of them is skipped, none is guessed).

    Annotations are `<stem>-nsrr.xml` or `<stem>-profusion.xml` (verify_mesa_dataset.pair_files); when an ID
    has both, the NSRR XML is used and the log says so.
    """
    from sleepppg.pairing import pair_files

    pairing = pair_files(edf_dir, xml_dir, id_pattern)
    problems: dict[str, tuple[str, str]] = {}
    for dup in pairing.duplicates():
        problems[dup["id"]] = ("duplicate_files", f"more than one {dup['kind']} file for this ID: {dup['files']}")
    for clash in pairing.id_clashes():
        for sid in clash["ids"]:
            problems[sid] = ("id_clash", f"IDs {' and '.join(clash['ids'])} differ only by leading zeros "
                                         f"(files {', '.join(clash['files'])}): not paired, rename the files")
    subjects, both = {}, []
    for sid in pairing.ids():
        edfs, annotation = pairing.edf_by_id.get(sid, []), pairing.annotation(sid)
        subjects[sid] = (edf_dir / edfs[0] if edfs else None, xml_dir / annotation[1] if annotation else None)
        if annotation and annotation[2]:
            both.append(sid)
            log.debug("subject %s: NSRR XML %s used, not %s", sid, annotation[1], ", ".join(annotation[2]))
    if both:
        log.info("%d subject(s) have both an NSRR and a Profusion XML; the NSRR XML is used (e.g. %s)",
                 len(both), ", ".join(both[:5]))
    if pairing.no_id:
        log.warning("%d file(s) whose name has no subject ID (pattern %r) are not used, e.g. %s",
                    len(pairing.no_id), id_pattern, ", ".join(pairing.no_id[:5]))
    return subjects, problems


def find_dreamt_subjects(csv_dir: Path) -> tuple[dict[str, tuple[Path, Path]], dict[str, tuple[str, str]]]:
    """DREAMT: participant ID -> (csv, csv) (one file holds both the signals and the stages), plus {id:
    ('duplicate_files', reason)} for IDs with more than one CSV (not processed), as `find_subjects`."""
    from sleepppg import formats

    files, duplicates = formats.find_dreamt_files(csv_dir)
    return ({sid: (path, path) for sid, path in files.items()},
            {sid: ("duplicate_files", reason) for sid, reason in duplicates.items()})


def resolve_settings(args: argparse.Namespace) -> dict:
    """Settings from the config (--config, else configs/config_cloud.yaml) with flags on top."""
    cfg = load_config(args.config or DEFAULT_CONFIG)
    pre = cfg["preprocessing"]
    settings = {
        "edf_dir": args.edf_dir or pre["edf_dir"],
        "xml_dir": args.xml_dir or pre["xml_dir"],
        "out_dir": args.out_dir or pre["out_dir"],
        "workers": args.workers if args.workers is not None else pre["workers"],
        "resample_method": args.resample_method or pre["resample_method"],
        "ppg_channels": [p.lower() for p in pre["ppg_channels"]],
        "compression": args.compression or pre["compression"],
        "chunk_windows": pre["chunk_windows"],
        "windows_per_subject": args.windows_per_subject or cfg["data"]["windows_per_subject"],
        "id_pattern": pre["id_pattern"],
        "format": args.format or pre["format"],
        "csv_dir": args.csv_dir or pre["csv_dir"],
        **{key: pre[key] for key in DREAMT_KEYS},
    }
    if args.id_pattern is not None:
        try:
            settings["id_pattern"] = compile_id_pattern(args.id_pattern).pattern
        except ValueError as err:
            raise ConfigError(f"--id-pattern: {err}") from None
    if settings["workers"] == 0:
        settings["workers"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return settings


def _settings_of(settings: dict) -> dict:
    """The run's settings as `preprocessing_settings` (what a part file depends on)."""
    keyed = preprocessing_settings(settings["resample_method"], settings["ppg_channels"],
                                   settings["windows_per_subject"])
    if settings["format"] == "dreamt":
        keyed.update(format="dreamt", **{key: settings[key] for key in DREAMT_KEYS})
    return keyed


def _check_setup(settings: dict) -> str | None:
    """A one-line description of bad setup, or None."""
    for key in ("csv_dir",) if settings["format"] == "dreamt" else ("edf_dir", "xml_dir"):
        folder = Path(settings[key])
        if not folder.is_dir():
            return f"{key.replace('_', ' ')} {folder} is not a folder"
        if not os.access(folder, os.R_OK | os.X_OK):
            return f"{key.replace('_', ' ')} {folder} is not readable (permission denied)"
    out = Path(settings["out_dir"])
    if out.exists() and not out.is_dir():
        return f"output folder {out} is a file, not a folder"
    try:
        write_text_atomic(out / ".write_test", "ok")  # creates the folder too
        (out / ".write_test").unlink()
    except OSError as err:
        return f"output folder {out} is not writable: {err.strerror or err}"
    if settings["workers"] < 1:
        return f"--workers must be >= 1, got {settings['workers']}"
    if settings["windows_per_subject"] < 1:
        return f"--windows-per-subject must be >= 1, got {settings['windows_per_subject']}"
    return None


class DiskFullError(OSError):
    """The output disk filled up; `filename` is the file being written. Stops the run (exit status 2)."""


def _is_disk_full(err: BaseException) -> bool:
    """True for a full disk or quota. h5py reports the C library's errno inside its message, and raises
    RuntimeError rather than OSError when the failure comes while it closes a file."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(err, (OSError, RuntimeError)) and ("errno = 28" in str(err) or "No space left" in str(err))


def _bytes_needed(n_parts: int, n_subjects: int, n_windows: int) -> int:
    """Disk space for `n_parts` part files still to write and the HDF5 files of `n_subjects` (uncompressed,
    PPG and ECG at 4 bytes a sample, plus labels, IDs and indices), beside the parts they are built from."""
    signal_bytes = n_windows * SAMPLES_PER_WINDOW * 4
    return n_parts * 2 * signal_bytes + n_subjects * (2 * signal_bytes + n_windows * 40)


def _disk_full_message(path: str | os.PathLike, needed: int) -> str:
    try:
        free = shutil.disk_usage(Path(path).parent).free
    except OSError:
        free = 0
    more_gb = max(0.1, math.ceil((needed - free) / 1e8) / 10)
    return f"disk full while writing {path}: free {more_gb:.1f} GB and run the same command again"


@contextlib.contextmanager
def _naming_a_full_disk(path: str | os.PathLike, needed: int = 0) -> Iterator[None]:
    """Turn a full disk inside the block into DiskFullError, with the one line the user sees."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as err:
        if not _is_disk_full(err):
            raise
        path = err.filename or path
        raise DiskFullError(errno.ENOSPC, _disk_full_message(path, needed), str(path)) from None


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Temporaries left by a killed run (atomic_output names them .<final name>.<random>.tmp)."""
    for tmp in list(out_dir.glob(".*.tmp")) + list((out_dir / PARTS_DIR).glob(".*.tmp")):
        tmp.unlink(missing_ok=True)


def _plan(wanted: list[str], all_subjects: dict, problems: dict, settings: dict,
          overwrite: bool) -> tuple[list[dict], dict[str, list[str]], list[dict]]:
    """Split the wanted IDs into jobs to run, IDs whose part file from an earlier run still holds (same
    settings, same source files, every array intact: {id: its warnings}), and failures known before reading
    anything (missing partner, duplicate files, IDs that clash). A damaged part is logged and rebuilt."""
    parts_dir = Path(settings["out_dir"]) / PARTS_DIR
    jobs, reused, failed = [], {}, []
    for sid in wanted:
        edf, xml = all_subjects[sid]
        if sid in problems:
            kind, reason = problems[sid]
            failed.append({"id": sid, "file": str(edf or xml), "kind": kind, "reason": reason})
        elif edf is None:
            failed.append({"id": sid, "file": str(xml), "kind": "missing_edf", "reason": "XML without an EDF"})
        elif xml is None:
            failed.append({"id": sid, "file": str(edf), "kind": "missing_xml", "reason": "EDF without an XML"})
        else:
            signature = input_signature(_settings_of(settings), edf, xml)
            part = parts_dir / f"{sid}.npz"
            meta = None if overwrite or not part.is_file() else _read_part_meta(part)
            if meta is not None and meta.get("signature") == signature:
                try:
                    read_part(part, settings["windows_per_subject"])
                    reused[sid] = list(meta.get("warnings", []))
                    continue
                except BadPartError as err:
                    log.warning("subject %s: %s; processing it again", sid, err)
            elif part.is_file() and not overwrite and meta is None:
                log.warning("subject %s: part file %s is damaged (unreadable); processing it again", sid, part)
            jobs.append({"id": sid, "edf": str(edf), "xml": str(xml), "part": str(part), "signature": signature,
                         "windows_per_subject": settings["windows_per_subject"],
                         "resample_method": settings["resample_method"],
                         "ppg_channels": settings["ppg_channels"], "format": settings["format"],
                         **{key: settings[key] for key in DREAMT_KEYS}})
    return jobs, reused, failed


def _worker_init(parent_pid: int) -> None:
    """Worker initializer: on Linux, ask the kernel to SIGKILL this worker when the main process dies
    (kill -9 included), so no orphaned worker keeps running or holding memory after the run is gone; and
    leave Ctrl-C to the main process, which stops the workers (a subject in progress is redone next run)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1  # from <sys/prctl.h>
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the main process died before the line above took effect
        os._exit(1)


def _process_subject_or_disk_full(job: dict) -> dict:
    """process_subject, with a full disk reported as an OSError that names the part file."""
    try:
        return process_subject(job)
    except OSError as err:
        if _is_disk_full(err):
            raise OSError(errno.ENOSPC, "No space left on device", job["part"]) from None
        raise


def _run_jobs(jobs: list[dict], workers: int) -> list[dict]:
    """process_subject over `jobs`, in `workers` processes (in this process when 1); results in job order.
    On an error or Ctrl-C the jobs not yet started are cancelled; parts already written are kept."""
    from tqdm import tqdm

    pool = None
    if workers > 1 and len(jobs) > 1:
        pool = concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(jobs)), initializer=_worker_init,
                                                      initargs=(os.getpid(),))
    try:
        # pool.map forks the workers now, before tqdm starts its monitor thread
        results = pool.map(_process_subject_or_disk_full, jobs) if pool else map(_process_subject_or_disk_full, jobs)
        done = []
        with tqdm(total=len(jobs), desc="subjects", unit="subject", disable=not jobs) as bar:
            for result in results:  # the bar is closed before any error reaches the user
                done.append(result)
                bar.update(1)
    except BaseException:
        if pool:  # stop now: a subject in progress is lost (its part is never half-written), finished ones stay
            # the worker list must be taken first: shutdown() forgets it (and there is no public one before
            # Python 3.14's terminate_workers)
            workers_alive = list((getattr(pool, "_processes", None) or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for process in workers_alive:
                process.terminate()
        raise
    if pool:
        pool.shutdown()
    return done


def _assembly_child(send, out_dir: Path, subjects: list[str], parts_dir: Path, settings: dict) -> None:
    """Runs `assemble` in a child process and sends back ('ok', stats) or (kind, message)."""
    status = 0
    try:
        send.send(("ok", assemble(out_dir, subjects, parts_dir, settings)))
    except KeyboardInterrupt:
        send.send(("interrupted", ""))
    except BadPartError as err:
        send.send(("bad_part", (str(err), err.part)))
    except BaseException as err:
        if _is_disk_full(err):
            send.send(("disk_full", "No space left on device"))
        elif isinstance(err, OSError):
            send.send(("os_error", f"{err.strerror or err}"))
        else:  # a bug: its traceback goes to the main process, which raises it
            import traceback

            send.send(("bug", traceback.format_exc()))
            status = 1
    finally:
        send.close()
        # No interpreter teardown: after a failed write (a full disk) the HDF5 library can crash while it
        # closes its files at exit. Everything this process wrote is closed or removed by now.
        os._exit(status)


def assemble_isolated(out_dir: Path, subjects: list[str], parts_dir: Path, settings: dict) -> dict:
    """`assemble` in a forked child process, so that a failed HDF5 write (a full disk) cannot crash this
    process; its outcome comes back as statistics or as the matching exception.

    Raises:
        BadPartError, KeyboardInterrupt, OSError (ENOSPC: a full disk), SetupError (the child was killed);
        RuntimeError for a bug (with its traceback).
    """
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_assembly_child, args=(send, out_dir, subjects, parts_dir, settings))
    child.start()
    send.close()
    try:
        kind, payload = receive.recv()
    except EOFError:
        kind, payload = "died", ""
    finally:
        child.join()
    if kind == "died":
        raise SetupError(f"the process writing the HDF5 files in {out_dir} was killed (exit status "
                         f"{child.exitcode}; out of memory?): run the same command again")
    if kind == "ok":
        return payload
    if kind == "interrupted":
        raise KeyboardInterrupt
    if kind == "bad_part":
        raise BadPartError(*payload)
    if kind == "disk_full":
        raise OSError(errno.ENOSPC, payload, str(out_dir / PPG_FILE))
    if kind == "os_error":
        raise OSError(f"writing the HDF5 files in {out_dir} failed: {payload}")
    raise RuntimeError(f"assembly failed: {payload}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="YAML config (preprocessing section and data.windows_per_subject); "
                                         "default: the defaults of configs/config_cloud.yaml")
    parser.add_argument("--edf-dir", help="EDF folder (default ./mesa-commercial-use/polysomnography/edfs)")
    parser.add_argument("--xml-dir", help="XML folder (default .../polysomnography/annotations-events-nsrr)")
    parser.add_argument("--out-dir", help="output folder (default ./mesa-x)")
    parser.add_argument("--format", choices=("edf", "dreamt"),
                        help="edf: MESA EDF + NSRR XML (default); dreamt: one DREAMT CSV per participant in --csv-dir")
    parser.add_argument("--csv-dir", help="--format dreamt: the folder of DREAMT CSVs (e.g. data_64Hz)")
    parser.add_argument("--workers", type=int, help="processes (default: preprocessing.workers; 0 = all cores)")
    parser.add_argument("--subjects", help="only these IDs, comma-separated (e.g. 0001,0002)")
    parser.add_argument("--id-pattern", help="regex with one group around the subject ID, searched in file "
                                             "names, any case (default: preprocessing.id_pattern, MESA's "
                                             "'mesa[-_]?sleep[-_]?(\\d+)')")
    parser.add_argument("--limit", type=int, help="only the first N subject IDs (sorted)")
    parser.add_argument("--overwrite", action="store_true", help="redo every subject, ignoring earlier results")
    parser.add_argument("--keep-parts", action="store_true", help="keep the per-subject part files after success")
    parser.add_argument("--windows-per-subject", type=int, help="windows per night (default 1200 = 10 h)")
    parser.add_argument("--resample-method", choices=("linear", "polyphase"),
                        help="linear (the reference) or polyphase (default: preprocessing.resample_method, linear)")
    parser.add_argument("--compression", choices=("none", "lzf", "gzip"),
                        help="HDF5 compression (default: preprocessing.compression, none: fastest reads)")
    return parser.parse_args(argv)


def _read_manifest(path: Path) -> dict | None:
    """The manifest of the last finished run, or None (absent, or damaged: then it is ignored, with a log line)."""
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        log.warning("ignoring damaged %s (%s)", path, err)
        return None
    return manifest if isinstance(manifest, dict) else None


def run(args: argparse.Namespace) -> int:
    """The whole extraction; bad setup raises SetupError, a full disk DiskFullError."""
    t_start = time.perf_counter()
    try:
        settings = resolve_settings(args)
    except ConfigError as err:
        raise SetupError(str(err)) from None
    problem = _check_setup(settings)
    if problem:
        raise SetupError(problem)
    out_dir, parts_dir = Path(settings["out_dir"]), Path(settings["out_dir"]) / PARTS_DIR
    edf_dir, xml_dir = Path(settings["edf_dir"]), Path(settings["xml_dir"])
    setup_logging(out_dir / "logs" / "processing.log")

    dreamt = settings["format"] == "dreamt"
    try:
        if dreamt:
            all_subjects, problems = find_dreamt_subjects(Path(settings["csv_dir"]))
        else:
            all_subjects, problems = find_subjects(edf_dir, xml_dir, settings["id_pattern"])
    except OSError as err:
        raise SetupError(f"cannot list {err.filename or edf_dir}: {err.strerror or err}") from None
    wanted = sorted(all_subjects)
    if args.subjects:
        requested = sorted({s.strip() for s in args.subjects.split(",") if s.strip()})
        unknown = [s for s in requested if s not in all_subjects]
        if unknown:
            raise SetupError(f"--subjects: no EDF or XML file for {', '.join(unknown)}")
        wanted = requested
    if args.limit is not None:
        wanted = wanted[:max(args.limit, 0)]
    if not any(all_subjects[s][0] and all_subjects[s][1] for s in wanted):
        where = f"CSV files in {settings['csv_dir']}" if dreamt else f"EDF/XML pairs in {edf_dir} and {xml_dir}"
        raise SetupError(f"no {where} to process")

    sources = {sid: [file_signature(all_subjects[sid][0]), file_signature(all_subjects[sid][1])]
               for sid in wanted}
    manifest_key = {"settings": _settings_of(settings), "compression": settings["compression"],
                    "chunk_windows": settings["chunk_windows"], "sources": sources}
    manifest_path = out_dir / MANIFEST_FILE
    outputs_exist = all((out_dir / name).is_file() for name in (PPG_FILE, ECG_FILE, INDEX_FILE))
    previous = None if args.overwrite or not outputs_exist else _read_manifest(manifest_path)
    if previous is not None and previous.get("key") == manifest_key:
        n_failed = len(previous.get("failed", []))
        print(f"up to date: {out_dir} already holds {len(previous.get('subjects', []))} subjects "
              f"({n_failed} failed earlier; see {FAILED_FILE}); use --overwrite to redo")
        return EXIT_FAILED if n_failed else EXIT_OK
    manifest_path.unlink(missing_ok=True)  # outputs are about to change: the old manifest no longer holds
    _remove_stale_temporaries(out_dir)

    n_windows = settings["windows_per_subject"]
    results: list[dict] = []
    for attempt in range(2):  # a part damaged after it was checked is rebuilt once, then assembly retried
        jobs, reused, failed = _plan(wanted, all_subjects, problems, settings, args.overwrite and attempt == 0)
        if attempt == 0:
            for item in failed:
                log.warning("subject %s skipped (%s): %s", item["id"], item["kind"], item["reason"])
        log.info("%d subjects: %d to process, %d reused from %s, %d without a usable pair; %d worker(s)",
                 len(wanted), len(jobs), len(reused), parts_dir, len(failed), settings["workers"])
        n_ok_max = len(jobs) + len(reused)
        with _naming_a_full_disk(parts_dir, _bytes_needed(len(jobs), n_ok_max, n_windows)):
            results = _run_jobs(jobs, settings["workers"])
        warnings = dict(reused)
        ok = sorted(reused)
        for result in results:
            if result["ok"]:
                ok.append(result["id"])
                warnings[result["id"]] = result["warnings"]
            else:
                log.warning("subject %s skipped (%s): %s", result["id"], result["kind"], result["reason"])
                failed.append({"id": result["id"], "file": result["file"], "kind": result["kind"],
                               "reason": result["reason"]})
        ok.sort()
        failed.sort(key=lambda item: item["id"])
        warning_list = [{"id": sid, "file": str(all_subjects[sid][0]), "warning": text}
                        for sid in ok for text in warnings.get(sid, [])]
        with _naming_a_full_disk(out_dir / FAILED_FILE, _bytes_needed(0, len(ok), n_windows)):
            write_text_atomic(out_dir / FAILED_FILE, json.dumps(failed, indent=2) + "\n")
            write_text_atomic(out_dir / WARNINGS_FILE, json.dumps(warning_list, indent=2) + "\n")
        if not ok:
            log.error("no subject could be processed; no HDF5 written (any HDF5 files in %s are from an earlier "
                      "run)", out_dir)
            break
        log.info("assembling %d subjects into %s", len(ok), out_dir)
        try:
            with _naming_a_full_disk(out_dir / PPG_FILE, _bytes_needed(0, len(ok), n_windows)):
                stats = assemble_isolated(out_dir, ok, parts_dir, settings)
        except BadPartError as err:
            if attempt == 1:
                raise
            log.warning("%s; rebuilding it", err)
            Path(err.part).unlink(missing_ok=True)  # the next pass processes that subject again
            continue
        stats["failed_subjects"] = len(failed)
        stats["subjects_with_warnings"] = len({w["id"] for w in warning_list})
        manifest = {"key": manifest_key, "subjects": ok, "failed": [f["id"] for f in failed]}
        with _naming_a_full_disk(out_dir / MANIFEST_FILE):
            write_stats(out_dir, stats)
            write_text_atomic(manifest_path, json.dumps(manifest, indent=1) + "\n")
        if not args.keep_parts:
            for sid in ok:
                (parts_dir / f"{sid}.npz").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                parts_dir.rmdir()
        break

    seconds = time.perf_counter() - t_start
    if results:
        log.info("preprocessing took %.2f s per subject (per worker)", np.mean([r["seconds"] for r in results]))
    by_kind = Counter(item["kind"] for item in failed)
    n_warned = len({w["id"] for w in warning_list})
    print(f"done in {seconds:.1f} s: {len(ok)} subjects ok ({len(reused)} reused), {len(failed)} failed"
          + (" (" + ", ".join(f"{k}: {v}" for k, v in sorted(by_kind.items())) + f"; see {out_dir / FAILED_FILE})"
             if failed else "")
          + (f"; {n_warned} with warnings (see {out_dir / WARNINGS_FILE})" if n_warned else ""))
    return EXIT_FAILED if failed else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 every subject done, 1 some subjects failed, 2 bad setup or a full disk, 130 Ctrl-C."""
    args = parse_args(argv)
    try:
        return run(args)
    except SetupError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_SETUP
    except DiskFullError as err:
        print(f"error: {err.strerror}", file=sys.stderr)
        return EXIT_SETUP
    except BadPartError as err:  # damaged again right after it was rebuilt: the disk itself is suspect
        Path(err.part).unlink(missing_ok=True)
        print(f"error: {err} again after it was rebuilt (removed; check the disk, then run the same command "
              "again)", file=sys.stderr)
        return EXIT_FAILED
    except OSError as err:
        if not _is_disk_full(err):
            raise
        print(f"error: {_disk_full_message(err.filename or args.out_dir or '.', 0)}", file=sys.stderr)
        return EXIT_SETUP
    except KeyboardInterrupt:
        print("interrupted: finished subjects are kept; run the same command again to go on from there",
              file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    # The filters copy ~80-MB arrays many times per night; reusing freed memory instead of faulting in fresh
    # pages saves ~12% per subject here. Forked workers inherit the setting.
    keep_freed_memory()
    logging.raiseExceptions = False  # a log line that cannot be written (a full disk) is dropped, not a traceback
    sys.exit(main())
