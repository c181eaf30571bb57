"""The processed-file format (docs/DESIGN.md section 3) and its one validator; sleepppg.assembly writes the files.

Files, rows in sorted subject-ID order, W windows per subject, N = subjects x W rows:
- mesa_ppg_with_labels.h5: ppg (N, 1024) float32 z-scored PPG at 34.133 Hz, labels (N,) int64 in -1..3,
  subject_ids (N,) bytes; attrs sampling_rate, window_duration, samples_per_window, total_windows,
  total_subjects, windows_per_subject, resample_method;
- mesa_real_ecg.h5: ecg (N, 1024) float32 (zeros without ECG), has_real_ecg (N,) bool, subject_ids, labels,
  real_ecg_indices; attrs windows_with_real_ecg, windows_without_real_ecg;
- mesa_subject_index.h5: subjects/<id>/window_indices (one contiguous block of rows) with attrs n_windows,
  has_ecg, n_recorded_windows; attrs total_subjects, total_windows, windows_per_subject, resample_method;
- data_stats.npy (a pickled dict, as the reference) and data_stats.txt (STATS_NPY, STATS_TXT).

The one validator: `verify_files` (and `verify` on a folder) reports each check as PASS/FAIL with its detail:
layout, keys, attrs, shapes, dtypes, at least one subject, labels in -1..3 and a scored epoch in every night,
the index covering every row once in one contiguous block per subject, and the signal values of every night as
extraction writes them (sleepppg.processed_values: finite, z-scored, not all zero). `Checks` says which run and
how strictly: `WRITTEN`, all of them, every value read, for what the extractor writes (verify_mesa_outputs.py);
`READABLE`, what a reader needs (the values of a sample of each night's rows; nights of another length, any
subject order and the reference's dtypes allowed). `require_valid` turns a failed report into one error for a
program about to read the files; `read_night_starts` and `check_rows` are the same checks on just the subjects
and arrays a dataset reads; `files_record` and `files_changed` tell a final file changed since it was written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from sleepppg.constants import (
    ECG_FILE,
    IGNORE_INDEX,
    INDEX_FILE,
    N_CLASSES,
    PPG_FILE,
    SAMPLES_PER_WINDOW,
    STAGE_NAMES,
    WINDOW_SECONDS,
    WINDOWS_PER_SUBJECT,
)
from sleepppg.errors import DataError, SetupError
from sleepppg.processed_values import (
    ENERGY_WINDOWS,
    HIGH_FREQ_HZ,
    HIGH_FREQ_WARN,
    MAX_ABS_MEAN,
    MAX_ABS_SIGNAL,
    SD_RANGE,
    Values,
    high_frequency_share,
    sample_values,
    scan_values,
)

PPG_KEYS = ("ppg", "labels", "subject_ids")
ECG_KEYS = ("ecg", "has_real_ecg", "subject_ids", "labels", "real_ecg_indices")
INDEX_LAYOUT = "subjects/{subject_id}/window_indices"
STATS_NPY, STATS_TXT = "data_stats.npy", "data_stats.txt"
VALID_LABELS = set(range(IGNORE_INDEX, N_CLASSES))
FS_TOLERANCE = 1e-6  # samples per window: |sampling_rate x 30 - 1024| must be below this
BLOCK_ROWS = 1200  # rows per read: one night, 4.9 MB of float32
SCAN, SAMPLE, NONE = "scan", "sample", "none"  # Checks.values: every row, a sample of each night's rows, none
# what a damaged HDF5 file or dataset raises in h5py/numpy while it is read
READ_ERRORS = (OSError, KeyError, ValueError, TypeError, IndexError, AttributeError, RuntimeError)


@dataclass(frozen=True)
class Checks:
    """Which checks the validator runs, and how strictly."""

    values: str = SCAN  # signal values read: SCAN every row (in blocks: a few MB of memory for any file size),
    #                     SAMPLE a few scored rows of each night (sleepppg.processed_values), NONE
    every_night_full: bool = True  # a night of another length than W fails (else it is counted as information)
    sorted_ids: bool = True  # subjects must follow in sorted ID order, as extraction writes them
    reference_dtypes: bool = False  # accept the reference's float64 signals and whole-number float labels


WRITTEN = Checks()  # what extraction writes, every check
READABLE = Checks(values=SAMPLE, every_night_full=False, sorted_ids=False, reference_dtypes=True)  # what readers need


class ProcessedFilesError(ValueError):
    """The processed files fail the validator; the message names each failed check with its detail, and
    `report` holds every line."""

    def __init__(self, report: Report):
        super().__init__(f"the processed files fail {len(report.failed)} check(s): " + "; ".join(report.problems))
        self.report = report


# ----------------------------------------------------------------------------------------------------------
# Validation


class Report:
    """PASS/FAIL/INFO lines of the checks; `failed` names the failed checks, `problems` adds their details."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.failed: list[str] = []
        self.problems: list[str] = []

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.lines.append(f"[{'PASS' if ok else 'FAIL'}] {name}" + (f": {detail}" if detail else ""))
        if not ok:
            self.failed.append(name)
            self.problems.append(name + (f" ({detail})" if detail else ""))
        return ok

    def info(self, text: str) -> None:
        self.lines.append(f"[INFO] {text}")


def _attr(obj, key: str, default=None):
    """An HDF5 attribute as a plain Python value (`default` when absent)."""
    value = obj.attrs.get(key, default)
    return value.item() if isinstance(value, np.generic) else value


def _text(sid) -> str:
    return sid.decode(errors="replace") if isinstance(sid, bytes) else str(sid)


def label_distribution(labels: np.ndarray) -> dict[int, int]:
    values, counts = np.unique(labels, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def format_distribution(dist: dict[int, int]) -> str:
    names = {IGNORE_INDEX: "unscored/padding", **dict(enumerate(STAGE_NAMES))}
    total = sum(dist.values()) or 1
    return ", ".join(f"{names.get(k, k)} {v} ({v / total:.1%})" for k, v in sorted(dist.items()))


def _blocks(n_rows: int, block: int = BLOCK_ROWS):
    for start in range(0, n_rows, block):
        yield slice(start, min(start + block, n_rows))


def _signal_dtype(key: str, dtype: np.dtype, checks: Checks) -> tuple[str, bool, str]:
    """(check name, passed, detail) of a signal array's dtype: float32 (the reference's float64 too, which
    readers convert as they read)."""
    if checks.reference_dtypes:
        return f"{key} dtype float32 or float64", dtype in (np.float32, np.float64), str(dtype)
    return f"{key} dtype float32", dtype == np.float32, str(dtype)


def check_ppg_file(f, report: Report, expected_wps: int | None, checks: Checks = WRITTEN) -> dict | None:
    """mesa_ppg_with_labels.h5: datasets, shapes, dtypes, attrs, labels, windows per subject, contiguous
    subjects, and the PPG values (`checks.values`). Returns what the other files' checks need, or None when the
    file is too broken to go on."""
    missing = [k for k in PPG_KEYS if k not in f]
    if not report.check("ppg file datasets", not missing, f"missing {missing}" if missing else ", ".join(PPG_KEYS)):
        return None
    ppg, labels_ds, sids_ds = f["ppg"], f["labels"], f["subject_ids"]
    n = ppg.shape[0]
    report.check("ppg samples per window", ppg.ndim == 2 and ppg.shape[1] == SAMPLES_PER_WINDOW,
                 f"shape {ppg.shape}, expected (N, {SAMPLES_PER_WINDOW})")
    report.check(*_signal_dtype("ppg", ppg.dtype, checks))
    fs = float(_attr(f, "sampling_rate", float("nan")))  # absent -> NaN -> the check fails
    report.check("sampling_rate x 30 s = 1024", abs(fs * WINDOW_SECONDS - SAMPLES_PER_WINDOW) < FS_TOLERANCE,
                 f"{fs!r} Hz x {WINDOW_SECONDS} s = {fs * WINDOW_SECONDS!r}")
    report.check("attr window_duration = 30", _attr(f, "window_duration") == WINDOW_SECONDS,
                 str(_attr(f, "window_duration")))
    report.check("attr samples_per_window = 1024", _attr(f, "samples_per_window") == SAMPLES_PER_WINDOW,
                 str(_attr(f, "samples_per_window")))
    labels, sids = labels_ds[()], sids_ds[()]
    report.check("labels and subject_ids have one entry per window", labels.shape == (n,) and sids.shape == (n,),
                 f"ppg {n} rows, labels {labels.shape}, subject_ids {sids.shape}")
    whole_floats = (checks.reference_dtypes and labels.dtype.kind == "f"
                    and bool(np.all(np.isfinite(labels) & (labels == np.floor(labels)))))
    report.check("labels are integers", labels.dtype.kind in "iu" or whole_floats, str(labels.dtype))
    bad_labels = sorted(set(np.unique(labels).tolist()) - VALID_LABELS)
    report.check("labels within {-1, 0, 1, 2, 3}", not bad_labels,
                 f"unexpected values {bad_labels[:10]}" if bad_labels else "")
    report.info("label distribution: " + format_distribution(label_distribution(labels)))

    subjects, first_rows, counts = np.unique(sids, return_index=True, return_counts=True)
    report.check("the files hold at least one subject", n > 0 and subjects.size > 0,
                 f"{n} rows, {subjects.size} subjects")
    wps = expected_wps or int(_attr(f, "windows_per_subject", WINDOWS_PER_SUBJECT))
    wrong = [(_text(s), int(c)) for s, c in zip(subjects, counts) if c != wps]
    if checks.every_night_full or not wrong:
        report.check(f"{wps} windows per subject", not wrong,
                     f"{len(subjects)} subjects" + (f"; wrong counts (id, windows): {wrong[:5]}" if wrong else ""))
    else:
        report.info(f"{len(wrong)} of {len(subjects)} subjects have other than {wps} windows and are not used, "
                    f"e.g. (id, windows) {wrong[:5]}")
    contiguous = all(np.all(sids[first_rows[i]:first_rows[i] + counts[i]] == subjects[i])
                     for i in np.argsort(first_rows))
    report.check("each subject's windows are contiguous", bool(contiguous))
    in_file_order = subjects[np.argsort(first_rows)]
    if checks.sorted_ids:
        later = [i for i in range(1, len(in_file_order)) if in_file_order[i] < in_file_order[i - 1]]
        report.check("subjects in sorted ID order", not later,
                     f"{_text(in_file_order[later[0]])} follows {_text(in_file_order[later[0] - 1])} "
                     f"({len(later)} out of order)" if later else "")
    inverse = np.unique(sids, return_inverse=True)[1].reshape(-1) if sids.shape == (n,) else None
    if inverse is not None and labels.shape == (n,):
        scored = np.bincount(inverse, weights=labels != IGNORE_INDEX, minlength=subjects.size)
        unscored = [_text(s) for s, k in zip(subjects, scored) if k == 0]
        report.check("every subject has a scored epoch", not unscored,
                     f"{len(unscored)} subjects with every label -1 (nothing to train or test on): "
                     f"{', '.join(unscored[:10])}" if unscored else "")
    report.check("attr total_windows", _attr(f, "total_windows") == n, f"{_attr(f, 'total_windows')} vs {n} rows")
    report.check("attr total_subjects", _attr(f, "total_subjects") == len(subjects),
                 f"{_attr(f, 'total_subjects')} vs {len(subjects)} subjects")
    info = {"n": n, "labels": labels, "sids": sids, "subjects": subjects, "inverse": inverse}
    if checks.values == NONE or inverse is None or ppg.shape != (n, SAMPLES_PER_WINDOW):
        return info
    values = _read_values(ppg, info, checks)
    where = " (sampled rows of each night)" if checks.values == SAMPLE else ""
    _report_values(report, "ppg", values, subjects, where)
    silent = [_text(subjects[i]) for i in values.silent()]
    report.check("every subject has non-zero PPG" + where, not silent,
                 f"{len(silent)} subjects whose PPG is all zeros: {silent[:10]}" if silent else "")
    if checks.values == SAMPLE:
        return info
    pick = np.unique(np.linspace(0, n - 1, min(ENERGY_WINDOWS, n)).astype(int)) if n else np.zeros(0, int)
    share = high_frequency_share(ppg[pick] if pick.size else np.zeros((0, SAMPLES_PER_WINDOW)), fs)
    flag = " (WARNING: more than expected after an 8-Hz low-pass)" if share > HIGH_FREQ_WARN else ""
    report.info(f"PPG power above {HIGH_FREQ_HZ:g} Hz: {share:.4%} of total ({pick.size} windows){flag}")
    return info


def check_ecg_file(f, report: Report, ppg_info: dict, checks: Checks = WRITTEN) -> np.ndarray | None:
    """mesa_real_ecg.h5 against itself and the PPG file. Returns has_real_ecg (or None)."""
    missing = [k for k in ECG_KEYS if k not in f]
    if not report.check("ecg file datasets", not missing, f"missing {missing}" if missing else ", ".join(ECG_KEYS)):
        return None
    n = ppg_info["n"]
    ecg = f["ecg"]
    report.check("ecg shape matches ppg", ecg.shape == (n, SAMPLES_PER_WINDOW), f"{ecg.shape} vs ({n}, 1024)")
    report.check(*_signal_dtype("ecg", ecg.dtype, checks))
    report.check("ecg labels equal ppg labels", np.array_equal(f["labels"][()], ppg_info["labels"]))
    report.check("ecg subject_ids equal ppg subject_ids", np.array_equal(f["subject_ids"][()], ppg_info["sids"]))
    has = f["has_real_ecg"][()].astype(bool)
    if not report.check("has_real_ecg has one entry per window", has.shape == (n,), str(has.shape)):
        return None
    report.check("real_ecg_indices = rows with real ECG",
                 np.array_equal(f["real_ecg_indices"][()], np.flatnonzero(has)))
    n_with = int(has.sum())
    report.check("attrs windows_with/without_real_ecg",
                 _attr(f, "windows_with_real_ecg") == n_with and _attr(f, "windows_without_real_ecg") == n - n_with,
                 f"{_attr(f, 'windows_with_real_ecg')}/{_attr(f, 'windows_without_real_ecg')} vs {n_with}/{n - n_with}")
    if checks.values == NONE or ppg_info["inverse"] is None or ecg.shape != (n, SAMPLES_PER_WINDOW):
        return has
    if checks.values == SAMPLE:
        values = _read_values(ecg, ppg_info, checks, has)
        _report_values(report, "ecg", values, ppg_info["subjects"], " (sampled rows of each night with ECG)")
        return has
    values, nonzero_without = Values(ppg_info["subjects"].size), 0
    for rows in _blocks(n):
        block, with_ecg = ecg[rows], has[rows]
        values.add(block[with_ecg], ppg_info["inverse"][rows][with_ecg])
        nonzero_without += int(np.any(block[~with_ecg] != 0, axis=1).sum())
    _report_values(report, "ecg", values, ppg_info["subjects"], "")
    report.check("rows without real ECG are zero", nonzero_without == 0,
                 f"{nonzero_without} non-zero rows marked without ECG" if nonzero_without else "")
    return has


def _read_values(ds, info: dict, checks: Checks, rows_mask=None) -> Values:
    """The per-subject values of the signal dataset `ds`: every row (SCAN) or a sample of each night's."""
    if checks.values == SAMPLE:
        return sample_values(ds, info["inverse"], info["subjects"].size, info["labels"], rows_mask)
    return scan_values(ds, info["inverse"], info["subjects"].size, rows_mask, BLOCK_ROWS)


def _report_values(report: Report, key: str, values: Values, subjects: np.ndarray, where: str) -> None:
    """The checks of the values read: finite, within +/-MAX_ABS_SIGNAL, each night z-scored (naming each
    night that is not, and how)."""
    for name, counts_S, what in (("finite", values.nonfinite_S, "NaN/inf values"),
                                 (f"within +/-{MAX_ABS_SIGNAL:g}", values.absurd_S,
                                  "values beyond (corrupt: the windows are z-scored)")):
        bad = np.flatnonzero(counts_S)
        report.check(f"{key} values {name}{where}", bad.size == 0,
                     f"{int(counts_S.sum())} {what} in {bad.size} subjects: "
                     + ", ".join(f"{_text(subjects[i])} ({counts_S[i]})" for i in bad[:5]) if bad.size else "")
    wrong = values.not_z_scored(SAMPLES_PER_WINDOW)
    report.check(f"{key} values z-scored in every night{where}", not wrong,
                 f"{len(wrong)} subjects not as extraction writes them (mean within +/-{MAX_ABS_MEAN:g}, SD "
                 f"{SD_RANGE[0]:g}..{SD_RANGE[1]:g} over the windows with signal): "
                 + "; ".join(f"{_text(subjects[i])} {what}" for i, what in wrong[:5]) if wrong else "")


def check_index_file(f, report: Report, ppg_info: dict, has_ecg: np.ndarray | None) -> None:
    """mesa_subject_index.h5 against the rows of the PPG file."""
    if not report.check("index file has subjects/", "subjects" in f):
        return
    n, sids = ppg_info["n"], ppg_info["sids"]
    group = f["subjects"]
    expected = sorted(_text(s) for s in ppg_info["subjects"])
    report.check("index subjects = subjects in the data", sorted(group) == expected,
                 f"{len(group)} in index vs {len(expected)} in data")
    covered = np.zeros(n, dtype=np.int64)
    problems = []
    for sid in sorted(group):
        g = group[sid]
        idx = g["window_indices"][()] if "window_indices" in g else np.zeros(0, np.int64)
        if idx.ndim != 1 or idx.dtype.kind not in "iu":
            problems.append(f"{sid}: window_indices are not a list of row numbers ({idx.dtype} {idx.shape})")
            continue
        if idx.size == 0 or idx.min() < 0 or idx.max() >= n:
            problems.append(f"{sid}: window_indices empty or out of range")
            continue
        np.add.at(covered, idx, 1)  # counts a row listed twice by the same subject twice (covered[idx] += 1 would not)
        if not np.all(sids[idx] == sid.encode()):
            problems.append(f"{sid}: window_indices point at other subjects' rows")
        if not rows_are_one_block(idx):
            problems.append(f"{sid}: window_indices are not one contiguous block of rows")
        if _attr(g, "n_windows") != idx.size:
            problems.append(f"{sid}: attr n_windows {_attr(g, 'n_windows')} vs {idx.size} indices")
        if has_ecg is not None and ("has_ecg" not in g.attrs or not np.all(has_ecg[idx] == bool(g.attrs["has_ecg"]))):
            problems.append(f"{sid}: attr has_ecg disagrees with has_real_ecg")
        recorded = _attr(g, "n_recorded_windows")
        if recorded is not None and not 0 <= recorded <= idx.size:
            problems.append(f"{sid}: n_recorded_windows {recorded} outside 0..{idx.size}")
    report.check("index entries agree with the data", not problems, "; ".join(problems[:5]))
    report.check("index covers every row exactly once", bool(np.all(covered == 1)),
                 f"{int((covered == 0).sum())} rows uncovered, {int((covered > 1).sum())} covered twice")
    report.check("index attrs total_subjects/total_windows",
                 _attr(f, "total_subjects") == len(expected) and _attr(f, "total_windows") == n,
                 f"{_attr(f, 'total_subjects')}/{_attr(f, 'total_windows')} vs {len(expected)}/{n}")


def _checked(report: Report, path: Path, check, *args):
    """Open `path` and run `check(f, report, *args)`; a file that is not HDF5, is truncated or holds a damaged
    dataset becomes a failed check naming the file and the error (the checks of the other files still run)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return check(f, report, *args)
    except READ_ERRORS as err:
        report.check(f"{path.name} is readable", False, f"{type(err).__name__}: {err}")
        return None


def verify_files(ppg_file: str | os.PathLike, ecg_file: str | os.PathLike | None, index_file: str | os.PathLike,
                 windows_per_subject: int | None = None, checks: Checks = WRITTEN) -> Report:
    """Every check on the three files; never raises for bad files (each problem is a failed check).

    Args:
        ecg_file: None to skip the ECG file's checks.
        windows_per_subject: W each night must have (None: the files' attr windows_per_subject, else 1,200).
        checks: which checks run, and how strictly (`WRITTEN`: all of them).
    """
    report = Report()
    paths = {"ppg": Path(ppg_file), "ecg": None if ecg_file is None else Path(ecg_file), "index": Path(index_file)}
    for path in paths.values():
        if path is not None:
            report.check(f"{path.name} exists", path.is_file(), str(path))
    if not paths["ppg"].is_file():
        return report
    ppg_info = _checked(report, paths["ppg"], check_ppg_file, windows_per_subject, checks)
    if ppg_info is None:
        return report
    has_ecg = None
    if paths["ecg"] is not None and paths["ecg"].is_file():
        has_ecg = _checked(report, paths["ecg"], check_ecg_file, ppg_info, checks)
    if paths["index"].is_file():
        _checked(report, paths["index"], check_index_file, ppg_info, has_ecg)
    return report


def verify(base: str | os.PathLike, windows_per_subject: int | None = None, checks: Checks = WRITTEN) -> Report:
    """The checks on the three files in the folder `base` (see `verify_files`); return the report."""
    base = Path(base)
    return verify_files(base / PPG_FILE, base / ECG_FILE, base / INDEX_FILE, windows_per_subject, checks)


def require_valid(ppg_file: str | os.PathLike, ecg_file: str | os.PathLike | None, index_file: str | os.PathLike,
                  windows_per_subject: int, checks: Checks = READABLE) -> Report:
    """The validator for a program about to read the files (a pre-flight check before training): the report
    when every check passes, else one clear error.

    Args:
        ecg_file: None when the reader needs no ECG (its checks are then skipped).
        windows_per_subject: W of the nights the reader uses.
        checks: `READABLE` (default) leaves out the scan of the signal values, which reads every row, and lets
            nights of another length (the split leaves them out) and the reference's dtypes pass.
    Raises:
        ProcessedFilesError: naming each failed check and its detail.
    """
    report = verify_files(ppg_file, ecg_file, index_file, windows_per_subject, checks)
    if report.failed:
        raise ProcessedFilesError(report)
    return report


def rows_are_one_block(rows: np.ndarray) -> bool:
    """True when `rows` (one subject's window_indices) are consecutive increasing row numbers, so a reader
    takes the night as one slice."""
    return rows.size == 0 or np.array_equal(rows, np.arange(rows[0], rows[0] + rows.size))


def read_night_starts(index_file: str | os.PathLike, subjects: list[str], windows_per_subject: int) -> np.ndarray:
    """First row of each subject's night, int64 (len(subjects),).

    Raises:
        ValueError: naming the file and the subject, unless its rows are start..start+W-1.
        KeyError: a subject is not in the index.
    """
    import h5py

    starts = np.empty(len(subjects), dtype=np.int64)
    with h5py.File(index_file, "r") as f:
        for i, sid in enumerate(subjects):
            rows = f[INDEX_LAYOUT.format(subject_id=sid)][()]
            if rows.size != windows_per_subject:
                raise ValueError(f"{index_file}: subject {sid} lists {rows.size} window indices but "
                                 f"n_windows = {windows_per_subject}")
            if not rows_are_one_block(rows):
                raise ValueError(f"{index_file}: the windows of subject {sid} are not one contiguous block of "
                                 f"rows (this loader reads each night as one slice)")
            starts[i] = rows[0]
    return starts


def check_rows(path: str | os.PathLike, names: tuple[str, ...], needed_rows: int) -> None:
    """The arrays `names` of one processed file exist, hold at least `needed_rows` rows, and signal arrays
    (all but `labels`) hold 1,024 samples a row.

    Raises:
        ValueError: naming the file and the array.
    """
    import h5py

    with h5py.File(path, "r") as f:
        for name in names:
            if name not in f:
                raise ValueError(f"{path} has no '{name}' dataset")
            ds = f[name]
            if ds.shape[0] < needed_rows:
                raise ValueError(f"{path}: '{name}' has {ds.shape[0]} rows but the index refers to rows up to "
                                 f"{needed_rows}")
            if name != "labels" and ds.shape[1:] != (SAMPLES_PER_WINDOW,):
                raise ValueError(f"{path}: '{name}' rows must hold {SAMPLES_PER_WINDOW} samples, got shape "
                                 f"{ds.shape}")


def check_nights(data: dict, keys: Sequence[str], subjects: list[str], n_windows: int) -> None:
    """What can be checked cheaply before the first step (labels and IDs only; signal values are checked as
    each batch is read): each subject's rows per the index are one block of windows_per_subject rows, its
    labels are integers in -1..3, and the data files' `subject_ids` on those rows read that subject (a
    mismatch means the index and the data come from different extraction runs, or IDs were swapped).
    `data` is the config's data section, `keys` its file keys to check (e.g. "ppg_file", "index_file").
    Raises DataError naming the subjects, SetupError when a file lacks an array or is too short."""
    import h5py

    try:
        starts = read_night_starts(data["index_file"], subjects, n_windows)
    except ValueError as err:
        raise DataError(str(err)) from None
    rows_NW = starts[:, None] + np.arange(n_windows)[None, :]
    sids_N1 = np.asarray(subjects)[:, None]
    for key in keys:
        if key == "index_file":
            continue
        path = data[key]
        try:
            with h5py.File(path, "r") as f:
                missing = [name for name in ("subject_ids", "labels")[:2 if key == "ppg_file" else 1] if name not in f]
                if missing:
                    raise SetupError(f"data.{key} = {path} has no {' or '.join(missing)} array")
                n_rows = f["subject_ids"].shape[0]
                if rows_NW.size and rows_NW.max() >= n_rows:
                    raise SetupError(f"data.{key} = {path} has {n_rows} rows but the index refers to row "
                                     f"{rows_NW.max()}")
                ids_NW = f["subject_ids"][()][rows_NW]
                labels = f["labels"][()] if key == "ppg_file" else None
        except OSError as err:
            raise SetupError(f"data.{key} = {path} cannot be read (truncated?): {err}") from None
        ids_NW = np.char.decode(ids_NW) if ids_NW.dtype.kind == "S" else ids_NW.astype(str)
        wrong = np.flatnonzero((ids_NW != sids_N1).any(axis=1))
        if wrong.size:
            i = int(wrong[0])
            found = sorted(set(ids_NW[i].tolist()))
            raise DataError(f"subject {subjects[i]}: the index puts it at rows {starts[i]}..{starts[i] + n_windows - 1}"
                            f" of data.{key} = {path}, but subject_ids there read {', '.join(found[:3])} "
                            f"({wrong.size} subject(s) disagree, e.g. {', '.join(subjects[j] for j in wrong[:5])}): "
                            f"were the index and the data written by different extraction runs?")
        if labels is None:
            continue
        if labels.dtype.kind not in "iuf":
            raise SetupError(f"data.{key} = {path}: labels must be numbers, got dtype {labels.dtype}")
        labels_NW = labels[rows_NW]
        bad_NW = (labels_NW < IGNORE_INDEX) | (labels_NW >= N_CLASSES) | (labels_NW != np.floor(labels_NW))
        if labels.dtype.kind == "f":
            bad_NW |= ~np.isfinite(labels_NW)
        bad = np.flatnonzero(bad_NW.any(axis=1))
        if bad.size:
            i = int(bad[0])
            value = labels_NW[i][bad_NW[i]][0].item()
            raise DataError(f"subject {subjects[i]}: label {value!r} in data.{key} = {path} (labels must be "
                            f"integers -1..{N_CLASSES - 1}; {bad.size} subject(s) affected, e.g. "
                            f"{', '.join(subjects[j] for j in bad[:5])})")
