"""The nights inference stages, and each one read into the model's input: which files or test subjects
(`resolve_edf_inputs`, `unique_ids`, `select_hdf5_nights`), and a `prepare` function per input kind that
turns one `NightJob` into a `Night` (preprocessed PPG windows, the epochs to stage, labels where there are
some, source facts for result.json).

- EDF or any PPG format (`prepare_edf_night`): the night's cache (sleepppg.cache) when valid, else the
  training preprocessing (`preprocess_recording`, or sleepppg.formats for --ppg) and a new cache. Only whole
  30-s epochs are staged (a trailing part shorter than 29 s is not an epoch); missing samples interpolated
  are counted (`filled_samples`, `filled_s`) and warned about above 1% of the recording.
- HDF5 (`prepare_hdf5_night`): the night's rows of the processed PPG file, with their labels; windows holding
  NaN/inf are left out (not staged, as a gap) and counted, the rest of the night is staged.
- With `--labels` (`prepare_labelled_night`): an EDF or PPG night gets its scored stages from the label file
  of its subject ID (sleepppg.scoring); a night without one, or whose file cannot be read, is staged without.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import glob
import logging
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from sleepppg.cache import NO_CACHE, load_cache, recording_signature, write_cache
from sleepppg.constants import IGNORE_INDEX, MESA_ID_PATTERN, SAMPLES_PER_WINDOW, WINDOW_SECONDS
from sleepppg.errors import BadRecordingError, SetupError
from sleepppg.ids import clash_reason, id_clashes, safe_id, subject_id_from_filename
from sleepppg.paths import OutputRoot
from sleepppg.preprocessing import preprocess_recording
from sleepppg.scoring import labels_for, read_labels

log = logging.getLogger("sleepppg.nights")

FILLED_WARN_FRACTION = 0.01  # interpolated (missing) samples above 1% of a night: a warning in its entry


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


# ----------------------------------------------------------------------------------------------------------
# Which nights: files and their subject IDs, or test subjects of the processed files


def subject_id_for(edf_path: str | os.PathLike, id_pattern: str = MESA_ID_PATTERN) -> str:
    """The subject ID in a file name by `id_pattern` (config preprocessing.id_pattern; MESA's by default:
    mesa-sleep-0010.edf -> '0010'), else the file stem; always one safe file-name part (sleepppg.ids.safe_id):
    a stem that cannot be one ('...csv' has the stem '..') gives the safe form of the whole file name."""
    path = Path(edf_path)
    try:
        return safe_id(subject_id_from_filename(path.stem, id_pattern) or path.stem)
    except ValueError:
        return safe_id(path.name)


def resolve_edf_inputs(spec: str, ppg: bool = False) -> list[Path]:
    """Files named by `spec`: a file, a folder (sorted: its *.edf and *.bdf, any case: the reader reads both; with
    `ppg`, every file with a recording extension, see sleepppg.formats.is_recording_file) or a glob pattern (sorted;
    with `ppg`, WFDB data files whose .hea matched too are left to their header).

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
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in (".edf", ".bdf"))
        if not found:
            raise SetupError(f"no {'recording' if ppg else '.edf or .bdf'} file in folder {path}")
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
    night_2.txt -> night, night_3, night_2; IDs that differ only in letter case count as the same), so no two
    nights share a cache folder or output files."""
    base = [subject_id_for(p, id_pattern) for p in paths]
    taken = {sid.casefold() for sid in base}  # letter case ignored: S1 and s1 are one folder on some disks
    out, kept = [], set()
    for sid in base:
        if sid.casefold() not in kept:
            kept.add(sid.casefold())
            out.append(sid)
            continue
        k = 2
        while f"{sid}_{k}".casefold() in taken:
            k += 1
        taken.add(f"{sid}_{k}".casefold())
        out.append(f"{sid}_{k}")
    return out


def id_clash_reasons(paths: Sequence[Path], id_pattern: str = MESA_ID_PATTERN) -> dict[Path, str]:
    """The reason for each file whose subject ID clashes with another file's (S3.csv and S003.edf: they differ
    only by leading zeros or letter case, sleepppg.ids.id_clashes), naming both IDs and their files. Such
    nights are refused (kind 'id_clash'), as extraction refuses them: a label file or a metadata row would
    match both. Files with one same ID (night.csv, night.npy) are not a clash: `unique_ids` tells them apart."""
    base = {path: subject_id_for(path, id_pattern) for path in paths}
    files_of: dict[str, list[str]] = {}
    for path, sid in base.items():
        files_of.setdefault(sid, []).append(path.name)
    reasons = {}
    for ids in id_clashes(files_of):
        reason = clash_reason(ids, [name for sid in ids for name in files_of[sid]])
        reasons.update({path: reason for path, sid in base.items() if sid in ids})
    return reasons


def refuse_clashing_night(job: NightJob, prepare, clashes: dict[Path, str]) -> Night:
    """`prepare(job)`, unless the night's file is in `clashes` (`id_clash_reasons`).

    Raises:
        BadRecordingError: kind 'id_clash', with the clash's reason.
    """
    if job.path in clashes:
        raise BadRecordingError(f"{job.path.name}: {clashes[job.path]}", kind="id_clash", path=str(job.path))
    return prepare(job)


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


# ----------------------------------------------------------------------------------------------------------
# One night -> model input


def prepare_edf_night(job: NightJob, cache_root: Path, settings: dict) -> Night:
    """Cached or freshly preprocessed PPG windows of one EDF, or with the --ppg `cache_settings` of one
    recording in any format sleepppg.formats reads (the cache then also covers a WFDB record's data files);
    a cache that cannot be written only costs the reuse next time (a warning), not the night.

    Raises:
        BadRecordingError (a ValueError) or OSError for an unusable recording; anything else a broken file
        makes the reader raise (the caller records it as this night's failure).
    """
    subject_id, edf_path = job.subject_id, job.path
    n_windows = settings["n_windows"]
    any_format = settings.get("source") == "ppg"
    signature = recording_signature(edf_path, any_format)
    if signature is None:
        raise BadRecordingError(f"EDF not found: {edf_path}", kind="missing_edf")
    try:  # inside cache_root, no link followed
        cache_dir: Path | None = OutputRoot(cache_root).folder(subject_id)
    except OSError as err:  # OutputPathError too: a link planted at the cache folder, cache_root a file...
        log.warning("%s: cannot write the cache (%s); the night is staged anyway", subject_id,
                    getattr(err, "strerror", None) or err)
        cache_dir = None
    windows_WS, meta, reason = (None, None, NO_CACHE) if cache_dir is None else load_cache(cache_dir, signature,
                                                                                             settings)
    if meta is not None and not isinstance(meta.get("filled_samples"), int):  # facts result.json reports
        windows_WS, meta, reason = None, None, "the cache was written by an older version (no filled_samples)"
    cache_used = windows_WS is not None
    if not cache_used:
        if reason != NO_CACHE:
            log.warning("%s: rebuilding cache in %s: %s", subject_id, cache_dir, reason)
        windows_WS, meta = _preprocess_night(job, signature, settings, any_format)
        try:
            if cache_dir is not None:
                write_cache(cache_dir, windows_WS, meta)
        except OSError as err:
            log.warning("%s: cannot write the cache in %s (%s); the night is staged anyway", subject_id,
                        cache_dir, err.strerror or err)
    n_recorded = int(meta["n_recorded_windows"])
    truncated = bool(meta.get("truncated", False))
    if truncated:
        log.warning("%s: recording is %.2f h long; staging only its first %.1f h (%d epochs)", subject_id,
                    meta.get("recording_hours") or float("nan"), n_windows * WINDOW_SECONDS / 3600, n_windows)
    info = {"cache_dir": None if cache_dir is None else str(cache_dir.resolve()), "cache_used": cache_used,
            "ppg_channel": meta.get("ppg_channel"), "ppg_fs": meta.get("ppg_fs"),
            "recording_hours": meta.get("recording_hours"), "filled_samples": meta.get("filled_samples"),
            "filled_s": meta.get("filled_s"), "warnings": list(meta.get("warnings") or [])}
    if any_format:  # what the file turned out to be; gap epochs are not staged
        info.update({key: meta.get(key) for key in ("source_format", "ppg_fs_found", "gaps", "gap_epochs")})
    elif meta.get("gap_epochs"):  # an EDF+D whose pauses are gaps: their epochs are not staged
        info.update({key: meta.get(key) for key in ("gaps", "gap_epochs")})
    return Night(subject_id, Path(signature["path"]), windows_WS, n_recorded, truncated, None, info)


def _preprocess_night(job: NightJob, signature: dict, settings: dict, any_format: bool) -> tuple[np.ndarray, dict]:
    """The training preprocessing of one recording: (float32 windows (n_windows, 1024), the cache's meta)."""
    n_windows = settings["n_windows"]
    t0 = time.perf_counter()
    if any_format:
        from sleepppg import formats

        pre = formats.preprocess_file(
            job.path, n_windows, settings["resample_method"], tuple(settings["ppg_channels"]),
            settings["ppg_fs"], settings["ppg_column"], settings["max_gap_s"])
    else:
        pre = preprocess_recording(
            job.path, n_windows=n_windows, method=settings["resample_method"],
            ppg_patterns=tuple(settings["ppg_channels"]), with_ecg=False)
    windows_WS = np.asarray(pre["ppg_windows"], dtype=np.float32)
    if windows_WS.shape != (n_windows, SAMPLES_PER_WINDOW):
        raise ValueError(f"preprocessing returned shape {windows_WS.shape}, expected "
                         f"{(n_windows, SAMPLES_PER_WINDOW)}")
    duration_s = float(pre["duration_s"])  # the PPG recording length
    n_recorded = int(pre["n_whole_windows"])  # whole epochs: a trailing part under 29 s is not staged
    filled, fs = int(pre["filled_samples"]), float(pre["ppg_fs"])
    warnings = list(pre["warnings"])  # the reader's (EDF: record count, saturation, pauses ...), in the entry
    if filled > FILLED_WARN_FRACTION * duration_s * fs:
        warnings.append(f"{filled} missing samples ({filled / fs:.1f} s, {filled / (duration_s * fs):.1%} of the "
                        f"recording) are interpolated")
    meta = {
        "subject_id": job.subject_id, "edf": signature, "settings": settings,
        "n_recorded_windows": n_recorded,
        "recording_hours": duration_s / 3600.0,
        "truncated": bool(duration_s > n_windows * WINDOW_SECONDS),
        "ppg_channel": pre.get("ppg_channel"), "ppg_fs": pre.get("ppg_fs"),
        "source_format": pre.get("source_format", "edf"), "ppg_fs_found": pre.get("ppg_fs_found", pre["ppg_fs"]),
        "gaps": pre.get("gaps", []), "filled_samples": filled, "filled_s": round(filled / fs, 3),
        "warnings": warnings,
        "gap_epochs": [e for e in pre["gap_epochs"] if e < n_recorded],
        "created_at": dt.datetime.now().isoformat(timespec="seconds"),
        "preprocess_s": round(time.perf_counter() - t0, 3),
    }
    return windows_WS, meta


def recorded_epochs(ppg_WS: np.ndarray, labels_W: np.ndarray) -> int:
    """Epochs up to the last window that holds signal or a label (trailing padding windows are all zero)."""
    has_data = np.any(ppg_WS != 0, axis=1) | (labels_W != IGNORE_INDEX)
    idx = np.flatnonzero(has_data)
    return int(idx[-1]) + 1 if idx.size else 0


def prepare_hdf5_night(job: NightJob, ppg_h5, n_windows: int) -> Night:
    """One test night from the open processed PPG file (rows job.start_row ... + n_windows - 1).

    Raises:
        ValueError: rows missing; BadRecordingError (kind no_scored_epochs): no recorded or scored epoch.
    """
    import multimodal_dataset_aligned as mda

    arrays = mda.read_night({"ppg": ppg_h5}, job.start_row, n_windows)
    ppg_WS, labels_W = arrays["ppg"], arrays["labels"]
    n_rec = recorded_epochs(ppg_WS, labels_W)
    if n_rec == 0 or not (labels_W != IGNORE_INDEX).any():
        raise BadRecordingError("no recorded or scored epochs", kind="no_scored_epochs")
    info: dict = {"start_row": job.start_row}
    bad_W = ~np.isfinite(ppg_WS).all(axis=1)
    if bad_W.any():  # a NaN would spread through the convolutions to the whole night: stage the rest
        left_out = np.flatnonzero(bad_W[:n_rec])
        if left_out.size == n_rec:
            raise BadRecordingError(f"every one of the {n_rec} recorded windows holds NaN/inf PPG values",
                                    kind="nan_signal")
        ppg_WS = np.where(bad_W[:, None], np.float32(0), ppg_WS)  # zero, as a gap in the recording
        info["gap_epochs"] = left_out.tolist()
        info["windows_left_out"] = {"count": int(left_out.size), "reason": "NaN/inf PPG values in the processed file"}
    return Night(job.subject_id, job.path.resolve(), ppg_WS, n_rec, False, labels_W, info)


def prepare_labelled_night(job: NightJob, prepare, label_files: dict[str, Path], n_windows: int) -> Night:
    """`prepare(job)`, with the scored stages of the night's label file (sleepppg.scoring.labels_for) when it
    has one. A night without a label file, with one that cannot be read or that scores none of the staged
    epochs, is staged without labels (a log line; result.json's `labels_file` / `labels_error` say which);
    unknown stage values left unscored are in `labels_warnings`, which join the night's warnings."""
    night = prepare(job)
    path = labels_for(job.subject_id, label_files)
    night.info["labels_file"] = None if path is None else str(path.resolve())
    if path is None:
        log.info("%s: no label file in --labels; staged without labels", job.subject_id)
        return night
    try:
        labels_W = read_labels(path, n_windows, night.info.setdefault("labels_warnings", []))
    except BadRecordingError as err:
        night.info["labels_error"] = f"labels not used: {err}"
    else:
        if (labels_W[:night.n_recorded] != IGNORE_INDEX).any():
            night.labels_W = labels_W
            return night
        night.info["labels_error"] = f"labels not used: {path.name} scores none of the staged epochs"
    return night  # the error is one of the night's warnings (sleepppg.staging.night_entry logs it)
