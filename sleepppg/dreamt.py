"""DREAMT wearable CSVs (PhysioNet; one CSV per participant, e.g. data_64Hz/S002_whole_df.csv): TIMESTAMP (s from the
start), BVP (Empatica E4 PPG, 64 Hz), ACC_X/Y/Z, TEMP, EDA, HR, IBI, Sleep_Stage (P = preparation before
lights-off, W, N1, N2, N3, R, Missing) and apnea columns; data_100Hz/S002_PSG_df.csv holds the signals at
100 Hz with PSG channels such as ECG. The night starts at the first sample whose stage is not P
(lights-off); epoch w covers [30 w, 30 w + 30) s from there and is labelled with the class that covers most
of it (stage names by the one table of sleepppg.stages: W 0, N1/N2 1, N3 2, R 3, also Wake, REM, N4 ...;
P, Missing or empty -1; a tie goes to the scored class). A value the table does not know is left unscored and
reported by value, or refuses the participant when it covers half of the staged samples or more. Files are
read in blocks of rows (numpy.loadtxt on 16-MB blocks, only the needed columns), so memory holds the chosen
columns, not the table.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np

from sleepppg.constants import IGNORE_INDEX, WINDOW_SECONDS, WINDOWS_PER_SUBJECT
from sleepppg.errors import BadRecordingError
from sleepppg.formats import naming_file
from sleepppg.grid import (
    MAX_GAP_S,
    RATE_MISMATCH_TOLERANCE,
    check_stamps_rise,
    mark_missing,
    measure_rate,
    to_uniform_grid,
)
from sleepppg.ids import safe_id
from sleepppg.preprocessing import preprocess_signals
from sleepppg.stages import stage_class, unknown_stage_report
from sleepppg.tables import check_times_finite, iter_blocks, sniff_table

# DREAMT
DREAMT_TIME_COLUMN = "TIMESTAMP"
DREAMT_STAGE_COLUMN = "Sleep_Stage"
DREAMT_ECG_COLUMN = "ECG"
DREAMT_PREPARATION = "P"  # before lights-off
DREAMT_FILE_SUFFIXES = ("_whole_df", "_PSG_df")  # S002_whole_df.csv -> subject S002
PREPARATION_CODE = -2  # per-sample stage code of P (before lights-off), below the classes and IGNORE_INDEX


# ----------------------------------------------------------------------------------------------------------
# DREAMT


def dreamt_subject_id(path: Path) -> str:
    """S002_whole_df.csv -> 'S002' (the participant); other names -> the file stem; always one safe file-name
    part (sleepppg.ids.safe_id; the whole file name's safe form when the prefix cannot be one)."""
    stem = path.stem
    for suffix in DREAMT_FILE_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[:-len(suffix)]
            break
    try:
        return safe_id(stem)
    except ValueError:
        return safe_id(path.name)


def find_dreamt_files(csv_dir: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """Participant ID -> CSV for every *.csv in `csv_dir` (sorted), and {id: reason} for IDs with more than
    one file (those are not processed)."""
    by_id: dict[str, list[Path]] = {}
    for path in sorted(p for p in csv_dir.iterdir() if p.is_file() and p.suffix.lower() == ".csv"):
        by_id.setdefault(dreamt_subject_id(path), []).append(path)
    duplicates = {sid: f"more than one file for this ID: {[p.name for p in paths]}"
                  for sid, paths in by_id.items() if len(paths) > 1}
    return {sid: paths[0] for sid, paths in by_id.items()}, duplicates


def stage_codes(texts: np.ndarray, unknown: Counter | None = None) -> np.ndarray:
    """DREAMT Sleep_Stage texts -> int8 per sample: class 0..3 (sleepppg.stages.stage_class, names only),
    PREPARATION_CODE for P, IGNORE_INDEX for unscored and unknown values; `unknown` (value -> samples) gets
    the unknown ones counted."""
    values, inverse, counts = np.unique(np.char.strip(texts.astype(str)), return_inverse=True, return_counts=True)
    codes = []
    for value, count in zip(values.tolist(), counts.tolist()):
        label = PREPARATION_CODE if value == DREAMT_PREPARATION else stage_class(value, numbers=False)
        if label is None and unknown is not None:
            unknown[value] += count
        codes.append(IGNORE_INDEX if label is None else label)
    return np.array(codes, dtype=np.int8)[inverse.reshape(-1)]


def epoch_labels(codes_T: np.ndarray, fs: float, n_windows: int) -> np.ndarray:
    """Per 30-s epoch of a stage-code signal on a uniform grid: the class covering most of the epoch
    (P counts as unscored); a tie goes to the scored class, then to the lower class index."""
    per_epoch = int(round(fs * WINDOW_SECONDS))
    n_epochs = min(n_windows, math.ceil(codes_T.size / per_epoch))
    labels = np.full(n_windows, IGNORE_INDEX, dtype=np.int64)
    if n_epochs == 0:
        return labels
    codes = np.where(codes_T[:n_epochs * per_epoch] < 0, 4, codes_T[:n_epochs * per_epoch]).astype(np.int64)
    epoch_of = np.arange(codes.size) // per_epoch
    counts = np.bincount(epoch_of * 5 + codes, minlength=n_epochs * 5).reshape(n_epochs, 5)
    best = counts.argmax(axis=1)  # columns 0..3 = classes, 4 = unscored: argmax picks a scored class on a tie
    labels[:n_epochs] = np.where(best == 4, IGNORE_INDEX, best)
    return labels


def read_dreamt(path: Path, ppg_column: str = "BVP", nominal_fs: float = 64.0, max_gap_s: float = MAX_GAP_S,
                n_windows: int = WINDOWS_PER_SUBJECT) -> dict:
    """One DREAMT participant CSV -> PPG (and ECG when the file has an `ECG` column) on a uniform grid at
    `nominal_fs`, starting at lights-off, with one label per 30-s epoch.

    Returns:
        dict(ppg float64, fs, ecg float64 or None, labels_W int64 (n_windows,), info: fs_found, column,
        lights_off_s (from the first stamp), duplicated_stamps, warnings (unknown stage values)).
    Raises:
        BadRecordingError: 'empty_file', 'missing_column', 'bad_timestamps', 'stamps_go_back' (the clock restarts
        or goes back: grid.check_stamps_rise), 'rate_mismatch' (the stamps' rate more than 5% off `nominal_fs`),
        'no_stages' (no stage other than P), 'unknown_stages' (half of the staged samples or more carry unknown
        values), 'gap_in_recording' (missing data longer than `max_gap_s` after lights-off), 'no_signal'.
    """
    layout = sniff_table(path)
    if not layout.has_header:
        raise BadRecordingError(f"{path.name}: no header row", kind="missing_column")
    names = {n: i for i, n in enumerate(layout.names)}
    missing = [c for c in (DREAMT_TIME_COLUMN, ppg_column, DREAMT_STAGE_COLUMN) if c not in names]
    if missing:
        raise BadRecordingError(f"{path.name}: missing column(s) {missing}; columns: {layout.names}",
                                kind="missing_column")
    columns = {"time": (names[DREAMT_TIME_COLUMN], "f8"), "ppg": (names[ppg_column], "f8"),
               "stage": (names[DREAMT_STAGE_COLUMN], "U16")}
    if DREAMT_ECG_COLUMN in names:
        columns["ecg"] = (names[DREAMT_ECG_COLUMN], "f8")
    parts: dict[str, list] = {key: [] for key in columns}
    unknown: Counter = Counter()
    for block in iter_blocks(path, layout, columns):
        parts["stage"].append(stage_codes(block.pop("stage"), unknown))
        for key, values in block.items():
            parts[key].append(values)
    if not parts["time"]:
        raise BadRecordingError(f"{path.name}: empty file (no data rows)", kind="empty_file")
    data = {key: np.concatenate(values) for key, values in parts.items()}
    del parts
    t, codes = data["time"], data["stage"]
    check_times_finite(t, path, DREAMT_TIME_COLUMN)
    check_stamps_rise(t, f"{path.name}: {DREAMT_TIME_COLUMN}")
    if np.any(np.diff(t) < 0):  # rows out of order by less than a sampling step (jitter)
        order = np.argsort(t, kind="stable")
        data = {key: values[order] for key, values in data.items()}
        t, codes = data["time"], data["stage"]
    fs_found, n_dup = measure_rate(t)
    if abs(fs_found - nominal_fs) > RATE_MISMATCH_TOLERANCE * nominal_fs:
        raise BadRecordingError(f"{path.name}: {DREAMT_TIME_COLUMN} gives {fs_found:.4g} Hz, expected about "
                                f"{nominal_fs:g} Hz (preprocessing.nominal_fs)", kind="rate_mismatch")
    scored = np.flatnonzero(codes != PREPARATION_CODE)
    stage_warnings = unknown_stage_report(unknown, scored.size, path.name, unit="sample")
    if not (codes >= 0).any() or scored.size == 0:
        raise BadRecordingError(f"{path.name}: no sleep stages in {DREAMT_STAGE_COLUMN} (only P, Missing or "
                                "empty)", kind="no_stages")
    lights_off = float(t[scored[0]])
    after = t >= lights_off
    with naming_file(path):
        ppg, gaps = to_uniform_grid(t[after], mark_missing(data["ppg"][after], None), nominal_fs, max_gap_s,
                                    t0=lights_off)
    if gaps:
        start, length = gaps[0]
        raise BadRecordingError(f"{path.name}: {len(gaps)} gap(s) longer than {max_gap_s:g} s after lights-off, "
                                f"the first {length:.1f} s at {start:.1f} s", kind="gap_in_recording")
    ecg = None
    if "ecg" in data:
        ecg_T = mark_missing(data["ecg"][after], None)
        if not np.isnan(ecg_T).all():
            ecg, _ = to_uniform_grid(t[after], ecg_T, nominal_fs, math.inf, t0=lights_off)
    t_after = t[after]
    grid = lights_off + np.arange(ppg.size) / nominal_fs
    codes_T = codes[after][np.clip(np.searchsorted(t_after, grid, side="right") - 1, 0, t_after.size - 1)]
    labels = epoch_labels(codes_T, nominal_fs, n_windows)
    return {"ppg": ppg, "fs": float(nominal_fs), "ecg": ecg, "labels_W": labels,
            "info": {"source_format": "dreamt", "column": ppg_column, "fs_found": fs_found,
                     "lights_off_s": round(lights_off - float(t[0]), 6), "duplicated_stamps": n_dup,
                     "warnings": stage_warnings}}


def preprocess_dreamt(path: str | Path, n_windows: int = WINDOWS_PER_SUBJECT, method: str = "linear",
                      ppg_column: str = "BVP", nominal_fs: float = 64.0,
                      max_gap_s: float = MAX_GAP_S) -> tuple[np.ndarray, dict]:
    """One DREAMT participant -> (labels_W int64 (n_windows,), preprocess_signals's dict
    plus ppg_channel): what extraction stores for a MESA subject, from lights-off on.

    Raises:
        BadRecordingError: see `read_dreamt` and preprocess_signals.
    """

    path = Path(path)
    night = read_dreamt(path, ppg_column, nominal_fs, max_gap_s, n_windows)
    with naming_file(path):
        rec = preprocess_signals(night["ppg"], night["fs"], n_windows, method, night["ecg"],
                                                   night["fs"] if night["ecg"] is not None else None, name=path.name)
    rec["ppg_channel"] = ppg_column
    rec["warnings"] = night["info"]["warnings"] + rec["warnings"]
    return night["labels_W"], rec
