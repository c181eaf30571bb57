"""Verify the processed MESA files written by extract_mesa_data.py before training on them.

Input: the output folder (`--base ./mesa-x`) holding mesa_ppg_with_labels.h5, mesa_real_ecg.h5 and
mesa_subject_index.h5. Checks, each printed as PASS/FAIL with its detail:
- the reference's: 1,024 samples per window, sampling_rate x 30 s = 1,024, labels within {-1, 0, 1, 2, 3}
  (distribution printed), the expected windows per subject (1,200 unless the files or --windows-per-subject
  say otherwise), and the share of PPG energy above 8 Hz (reported; the 8-Hz low-pass leaves little there);
- ours: each file is readable HDF5; integer labels; float32 signals that are finite and within +/-1,000
  (they are z-scored: larger values mean corrupt data); no subject whose PPG is all zeros; file attrs that
  match the data; and the three files consistent with each other (same rows, labels and subject IDs;
  has_real_ecg / real_ecg_indices / ECG attrs agree; rows without ECG are zero; the index covers every row
  exactly once, each subject's entry pointing at that subject's rows, with matching attrs).
A damaged file (truncated, not HDF5, a dataset of the wrong kind) is a failed check naming the file and the
error, never a traceback. Signals are read in blocks of rows, so a 5-GB PPG array needs only a few MB of memory.
Exit status: 0 when every check passes, 1 naming the failed checks, 2 when the folder does not exist,
130 on Ctrl-C.

Usage: python verify_mesa_outputs.py --base ./mesa-x
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from sleepppg.constants import (
    ECG_FILE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SETUP,
    IGNORE_INDEX,
    INDEX_FILE,
    N_CLASSES,
    PPG_FILE,
    SAMPLES_PER_WINDOW,
    STAGE_NAMES,
    WINDOW_SECONDS,
    WINDOWS_PER_SUBJECT,
)

FS_TOLERANCE = 1e-6  # samples per window: |sampling_rate x 30 - 1024| must be below this
HIGH_FREQ_HZ = 8.0  # PPG low-pass cut-off (Chebyshev II, 8 Hz, in extraction)
HIGH_FREQ_WARN = 0.01  # report a warning when more than 1% of PPG power lies above 8 Hz
ENERGY_WINDOWS = 200  # windows sampled (evenly over the file) for the spectrum
BLOCK_ROWS = 1200  # rows per read: one night, 4.9 MB of float32
VALID_LABELS = set(range(IGNORE_INDEX, N_CLASSES))
MAX_ABS_SIGNAL = 1000.0  # z-scored windows after a 3-SD clip stay within a few units; beyond this is corruption
# what a damaged HDF5 file or dataset raises in h5py/numpy while it is read
READ_ERRORS = (OSError, KeyError, ValueError, TypeError, IndexError, AttributeError, RuntimeError)


class Report:
    """Collects PASS/FAIL lines; `failed` names the failed checks."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.failed: list[str] = []

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.lines.append(f"[{'PASS' if ok else 'FAIL'}] {name}" + (f": {detail}" if detail else ""))
        if not ok:
            self.failed.append(name)
        return ok

    def info(self, text: str) -> None:
        self.lines.append(f"[INFO] {text}")


def _attr(obj, key: str, default=None):
    """An HDF5 attribute as a plain Python value (`default` when absent)."""
    value = obj.attrs.get(key, default)
    return value.item() if isinstance(value, np.generic) else value


def label_distribution(labels: np.ndarray) -> dict[int, int]:
    values, counts = np.unique(labels, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def format_distribution(dist: dict[int, int]) -> str:
    names = {IGNORE_INDEX: "unscored/padding", **dict(enumerate(STAGE_NAMES))}
    total = sum(dist.values()) or 1
    return ", ".join(f"{names.get(k, k)} {v} ({v / total:.1%})" for k, v in sorted(dist.items()))


def high_frequency_share(windows_WS: np.ndarray, fs: float, cutoff_hz: float = HIGH_FREQ_HZ) -> float:
    """Share of total power above `cutoff_hz`, from the mean periodogram of non-constant windows."""
    from scipy.signal import welch

    windows_WS = windows_WS[windows_WS.std(axis=1) > 0]
    if windows_WS.size == 0:
        return float("nan")
    freqs, psd = welch(windows_WS, fs=fs, nperseg=min(512, windows_WS.shape[1]), axis=1)
    psd = psd.mean(axis=0)
    return float(psd[freqs > cutoff_hz].sum() / psd.sum())


def _blocks(n_rows: int, block: int = BLOCK_ROWS):
    for start in range(0, n_rows, block):
        yield slice(start, min(start + block, n_rows))


def check_ppg_file(f, report: Report, expected_wps: int | None) -> dict | None:
    """The reference's checks on mesa_ppg_with_labels.h5, plus dtype/finite/attrs. Returns what the
    consistency checks need, or None when the file is too broken to go on."""
    missing = [k for k in ("ppg", "labels", "subject_ids") if k not in f]
    detail = f"missing {missing}" if missing else "ppg, labels, subject_ids"
    if not report.check("ppg file datasets", not missing, detail):
        return None
    ppg, labels_ds, sids_ds = f["ppg"], f["labels"], f["subject_ids"]
    n = ppg.shape[0]
    report.check("ppg samples per window", ppg.ndim == 2 and ppg.shape[1] == SAMPLES_PER_WINDOW,
                 f"shape {ppg.shape}, expected (N, {SAMPLES_PER_WINDOW})")
    report.check("ppg dtype float32", ppg.dtype == np.float32, str(ppg.dtype))
    fs = float(_attr(f, "sampling_rate", float("nan")))  # absent -> NaN -> the check fails
    report.check("sampling_rate x 30 s = 1024", abs(fs * WINDOW_SECONDS - SAMPLES_PER_WINDOW) < FS_TOLERANCE,
                 f"{fs!r} Hz x {WINDOW_SECONDS} s = {fs * WINDOW_SECONDS!r}")
    report.check("attr window_duration = 30", _attr(f, "window_duration") == WINDOW_SECONDS,
                 str(_attr(f, "window_duration")))
    report.check("attr samples_per_window = 1024", _attr(f, "samples_per_window") == SAMPLES_PER_WINDOW,
                 str(_attr(f, "samples_per_window")))
    labels = labels_ds[()]
    sids = sids_ds[()]
    report.check("labels and subject_ids have one entry per window", labels.shape == (n,) and sids.shape == (n,),
                 f"ppg {n} rows, labels {labels.shape}, subject_ids {sids.shape}")
    report.check("labels are integers", labels.dtype.kind in "iu", str(labels.dtype))
    bad_labels = sorted(set(np.unique(labels).tolist()) - VALID_LABELS)
    report.check("labels within {-1, 0, 1, 2, 3}", not bad_labels,
                 f"unexpected values {bad_labels[:10]}" if bad_labels else "")
    report.info("label distribution: " + format_distribution(label_distribution(labels)))

    subjects, first_rows, counts = np.unique(sids, return_index=True, return_counts=True)
    wps = expected_wps or int(_attr(f, "windows_per_subject", WINDOWS_PER_SUBJECT))
    wrong = [(s.decode(errors="replace") if isinstance(s, bytes) else str(s), int(c))
             for s, c in zip(subjects, counts) if c != wps]
    report.check(f"{wps} windows per subject", not wrong,
                 f"{len(subjects)} subjects" + (f"; wrong counts (id, windows): {wrong[:5]}" if wrong else ""))
    order = np.argsort(first_rows)
    contiguous = all(np.all(sids[first_rows[i]:first_rows[i] + counts[i]] == subjects[i]) for i in order)
    report.check("each subject's windows are contiguous", bool(contiguous))
    report.check("attr total_windows", _attr(f, "total_windows") == n, f"{_attr(f, 'total_windows')} vs {n} rows")
    report.check("attr total_subjects", _attr(f, "total_subjects") == len(subjects),
                 f"{_attr(f, 'total_subjects')} vs {len(subjects)} subjects")

    nonfinite, absurd = 0, 0
    row_has_signal = np.zeros(n, dtype=bool)
    for rows in _blocks(n):
        block = ppg[rows]
        finite = np.isfinite(block)
        nonfinite += int((~finite).sum())
        absurd += int((np.abs(np.where(finite, block, 0)) > MAX_ABS_SIGNAL).sum())
        row_has_signal[rows] = np.any(block != 0, axis=1) if block.ndim == 2 else block != 0
    report.check("ppg values finite", nonfinite == 0, f"{nonfinite} NaN/inf values" if nonfinite else "")
    report.check(f"ppg values within +/-{MAX_ABS_SIGNAL:g}", absurd == 0,
                 f"{absurd} values beyond (corrupt: the windows are z-scored)" if absurd else "")
    if sids.shape == (n,):
        _, inverse = np.unique(sids, return_inverse=True)
        silent = [s.decode(errors="replace") if isinstance(s, bytes) else str(s)
                  for s, has in zip(subjects, np.bincount(inverse, weights=row_has_signal, minlength=len(subjects)))
                  if has == 0]
        report.check("every subject has non-zero PPG", not silent,
                     f"{len(silent)} subjects whose PPG is all zeros: {silent[:10]}" if silent else "")
    pick = np.unique(np.linspace(0, n - 1, min(ENERGY_WINDOWS, n)).astype(int)) if n else np.zeros(0, int)
    share = high_frequency_share(ppg[pick] if pick.size else np.zeros((0, SAMPLES_PER_WINDOW)), fs)
    flag = " (WARNING: more than expected after an 8-Hz low-pass)" if share > HIGH_FREQ_WARN else ""
    report.info(f"PPG power above {HIGH_FREQ_HZ:g} Hz: {share:.4%} of total ({pick.size} windows){flag}")
    return {"n": n, "labels": labels, "sids": sids, "subjects": subjects}


def check_ecg_file(f, report: Report, ppg_info: dict) -> np.ndarray | None:
    """mesa_real_ecg.h5 against itself and the PPG file. Returns has_real_ecg (or None)."""
    keys = ("ecg", "has_real_ecg", "subject_ids", "labels", "real_ecg_indices")
    missing = [k for k in keys if k not in f]
    if not report.check("ecg file datasets", not missing, f"missing {missing}" if missing else ", ".join(keys)):
        return None
    n = ppg_info["n"]
    ecg = f["ecg"]
    report.check("ecg shape matches ppg", ecg.shape == (n, SAMPLES_PER_WINDOW), f"{ecg.shape} vs ({n}, 1024)")
    report.check("ecg dtype float32", ecg.dtype == np.float32, str(ecg.dtype))
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
    nonfinite, nonzero_without = 0, 0
    if ecg.shape == (n, SAMPLES_PER_WINDOW):
        for rows in _blocks(n):
            block = ecg[rows]
            nonfinite += int((~np.isfinite(block)).sum())
            nonzero_without += int(np.any(block[~has[rows]] != 0, axis=1).sum())
    report.check("ecg values finite", nonfinite == 0, f"{nonfinite} NaN/inf values" if nonfinite else "")
    report.check("rows without real ECG are zero", nonzero_without == 0,
                 f"{nonzero_without} non-zero rows marked without ECG" if nonzero_without else "")
    return has


def check_index_file(f, report: Report, ppg_info: dict, has_ecg: np.ndarray | None) -> None:
    """mesa_subject_index.h5 against the rows of the PPG file."""
    if not report.check("index file has subjects/", "subjects" in f):
        return
    n, sids = ppg_info["n"], ppg_info["sids"]
    group = f["subjects"]
    expected = sorted(s.decode(errors="replace") if isinstance(s, bytes) else str(s) for s in ppg_info["subjects"])
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


def verify(base: Path, windows_per_subject: int | None = None) -> Report:
    """Run every check on the files in `base`; return the report."""
    report = Report()
    paths = {name: base / name for name in (PPG_FILE, ECG_FILE, INDEX_FILE)}
    for name, path in paths.items():
        report.check(f"{name} exists", path.is_file(), str(path))
    if not paths[PPG_FILE].is_file():
        return report
    ppg_info = _checked(report, paths[PPG_FILE], check_ppg_file, windows_per_subject)
    if ppg_info is None:
        return report
    has_ecg = None
    if paths[ECG_FILE].is_file():
        has_ecg = _checked(report, paths[ECG_FILE], check_ecg_file, ppg_info)
    if paths[INDEX_FILE].is_file():
        _checked(report, paths[INDEX_FILE], check_index_file, ppg_info, has_ecg)
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", "--base", dest="base", required=True, metavar="DIR",
                        help="folder with the processed HDF5 files: extraction's --out-dir (e.g. ./mesa-x); "
                             "--base is the reference's name for it")
    parser.add_argument("--windows-per-subject", type=int,
                        help="expected windows per subject (default: the files' attr, else 1200)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = Path(args.base)
    if not base.is_dir():
        print(f"error: --base {base} is not a folder", file=sys.stderr)
        return EXIT_SETUP
    print(f"Verifying {base}")
    try:
        report = verify(base, args.windows_per_subject)
    except KeyboardInterrupt:
        print("interrupted: nothing was written; run the same command again", file=sys.stderr)
        return EXIT_INTERRUPTED
    print("\n".join(report.lines))
    if report.failed:
        print(f"FAILED {len(report.failed)} check(s): {'; '.join(report.failed)}")
        return EXIT_FAILED
    print("all checks passed")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
