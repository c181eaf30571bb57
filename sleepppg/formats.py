"""Read PPG recordings that are not MESA EDF + XML: DREAMT wearable CSVs (with sleep stages), generic PPG
tables (.csv, .tsv, .txt), NumPy arrays (.npy) and WFDB records (.hea + .dat/.mat); EDF/BDF through the EDF
reader of sleepppg.edf. Every reader returns the PPG on a uniform time grid; preprocessing (filters,
resampling to 34.133 Hz, windows) is preprocess_signals, the same as for MESA.

Missing data. NaN/inf samples, saturated integer samples (an integer signal at a rail of its range, e.g.
32767 or -32768 for 16 bits) and time gaps are missing, not signal. A missing stretch up to `max_gap_s`
(default 30 s) is bridged by linear interpolation; a longer one stays a gap: its samples are NaN on the grid,
and preprocess_signals marks the 30-s epochs it touches (inference does not stage them; a
DREAMT night with such a gap is a bad subject).

Tables. Delimiter from the extension (.csv comma, or semicolon/tab when the first line has no comma; .tsv
tab; .txt tab, comma, semicolon or white space, whichever the first line has). A first line with a
non-numeric field is the header. The time column, when there is one, is a header named like time, timestamp,
datetime, date, t, seconds, sec, ms, or a column of ISO date-times (2024-03-01T22:15:00.015, with or
without a time zone), or in a table without a header the first of two columns when it rises monotonically.
Numeric stamps are seconds, or milliseconds when the header says so (ms, msec, millis) or when the median
step is 0.5 or more (as seconds that would be under 2 Hz, no PPG). Stamps give the sampling rate (the mean
step between consecutive samples, ignoring gaps; snapped to a whole number of Hz within 0.1%), duplicates are
averaged, irregular samples are interpolated onto the uniform grid. The PPG column is --column (a header
name, any case, or a 1-based column number), else the first header containing one of the configured PPG
patterns (preprocessing.ppg_channels: pleth, ppg, bvp), else the only numeric column besides the time. A
table without a time column, and every .npy, needs the rate (--fs).

DREAMT (PhysioNet; one CSV per participant, e.g. data_64Hz/S002_whole_df.csv): TIMESTAMP (s from the
start), BVP (Empatica E4 PPG, 64 Hz), ACC_X/Y/Z, TEMP, EDA, HR, IBI, Sleep_Stage (P = preparation before
lights-off, W, N1, N2, N3, R, Missing) and apnea columns; data_100Hz/S002_PSG_df.csv holds the signals at
100 Hz with PSG channels such as ECG. The night starts at the first sample whose stage is not P
(lights-off); epoch w covers [30 w, 30 w + 30) s from there and is labelled with the class that covers most
of it (W 0, N1/N2 1, N3 2, R 3; P, Missing, empty or unknown -1; a tie goes to the scored class). Files are
read in blocks of rows (numpy.loadtxt on 16-MB blocks, only the needed columns), so memory holds the chosen
columns, not the table.

Usage (as a library): rec = read_recording(Path("night.csv"), fs=None, column=None, patterns=("pleth",
"ppg", "bvp"), max_gap_s=30.0); dreamt = read_dreamt(Path("S002_whole_df.csv"))
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import math
import os
import re
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from sleepppg.channels import PPG_PATTERNS, find_ppg_channel
from sleepppg.constants import IGNORE_INDEX, WINDOW_SECONDS, WINDOWS_PER_SUBJECT
from sleepppg.edf import read_edf, read_edf_header
from sleepppg.errors import BadRecordingError
from sleepppg.ids import safe_id
from sleepppg.preprocessing import preprocess_signals

log = logging.getLogger("sleepppg.formats")

# ----------------------------------------------------------------------------------------------------------
# Constants

FORMAT_BY_SUFFIX = {".csv": "table", ".tsv": "table", ".txt": "table", ".npy": "npy", ".hea": "wfdb",
                    ".edf": "edf", ".bdf": "edf"}
WFDB_DATA_SUFFIXES = (".dat", ".mat")  # belong to a .hea record; never a recording of their own
MIN_FS = 16.0  # Hz: the PPG low-pass is at 8 Hz (SleepPPG-Net), so 16 Hz is the lowest rate that holds it
MAX_GAP_S = 30.0  # s: missing stretches up to this are interpolated; longer ones stay gaps (one epoch)
RATE_SNAP_TOLERANCE = 1e-3  # a measured rate within 0.1% of a whole number of Hz is that number
RATE_MISMATCH_TOLERANCE = 0.05  # a measured rate more than 5% off the declared/nominal one is an error
SAMPLE_ROWS = 100  # data rows a table's sniffer looks through for each column's first non-empty field
MAX_SPAN_H = 48.0  # h: time stamps spanning more than this are not one night (a stray or corrupt stamp)
REGULAR_STEP_FACTOR = 1.5  # steps up to 1.5x the median step are ordinary sampling (not gaps) for the rate
MS_STEP_THRESHOLD = 0.5  # numeric stamps whose median step is >= 0.5 are milliseconds (as seconds: < 2 Hz)
BLOCK_BYTES = 16 << 20  # rows are parsed 16 MB of text at a time
SNIFF_BYTES = 1 << 16  # the first 64 kB decide delimiter, header and columns
INTEGER_WIDTHS = (8, 10, 12, 14, 16, 24, 32)  # ADC widths whose rails count as saturation
TIME_NAMES = {"time", "timestamp", "timestamps", "datetime", "date", "t", "sec", "secs", "seconds", "s", "ms",
              "msec", "millis", "milliseconds", "time_s", "time_ms", "elapsed", "clock"}
MS_NAME_RE = re.compile(r"(^|[^a-z])(ms|msec|millis|milliseconds)([^a-z]|$)")
ISO_DATETIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")

# DREAMT
DREAMT_TIME_COLUMN = "TIMESTAMP"
DREAMT_STAGE_COLUMN = "Sleep_Stage"
DREAMT_ECG_COLUMN = "ECG"
DREAMT_PREPARATION = "P"  # before lights-off
DREAMT_STAGE_TO_CLASS = {"W": 0, "N1": 1, "N2": 1, "N3": 2, "R": 3}  # P, Missing, unknown -> IGNORE_INDEX
DREAMT_FILE_SUFFIXES = ("_whole_df", "_PSG_df")  # S002_whole_df.csv -> subject S002
PREPARATION_CODE = -2  # per-sample stage code of P (before lights-off), below the classes and IGNORE_INDEX


@dataclasses.dataclass
class Recording:
    """One PPG recording on a uniform time grid.

    signal_T: float64 samples at `fs`, NaN inside gaps longer than max_gap_s (shorter ones interpolated).
    info: what result.json reports: source_format, column, fs_found (the rate the file states or its stamps
    show), time_column, duplicated_stamps, gaps ([start_s, duration_s] from the recording start), start_time.
    """

    signal_T: np.ndarray
    fs: float
    info: dict


# ----------------------------------------------------------------------------------------------------------
# Missing samples and the uniform grid


def integer_rails(x: np.ndarray, dtype: np.dtype | None = None) -> tuple[float, float] | None:
    """The rails (lowest and highest code) of an integer signal, or None when `x` is not integer-valued.

    With an integer `dtype` (a .npy array), the dtype's own limits. Otherwise the smallest common ADC range
    (8 to 32 bits; unsigned 0..2^k-1 when the signal has no negative value, else -2^(k-1)..2^(k-1)-1) that
    holds every finite value of `x`.
    """
    if dtype is not None and np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    finite = x[np.isfinite(x)]
    if finite.size == 0 or not np.array_equal(finite, np.round(finite)):
        return None
    lo, hi = float(finite.min()), float(finite.max())
    for k in INTEGER_WIDTHS:
        rails = (0.0, 2.0 ** k - 1) if lo >= 0 else (-2.0 ** (k - 1), 2.0 ** (k - 1) - 1)
        if rails[0] <= lo and hi <= rails[1]:
            return rails
    return None


def mark_missing(x: np.ndarray, rails: tuple[float, float] | None) -> np.ndarray:
    """float64 copy of `x` with NaN where a sample is non-finite or sits on a rail (saturated)."""
    out = np.array(x, dtype=np.float64)
    out[~np.isfinite(out)] = np.nan
    if rails is not None:
        out[(out == rails[0]) | (out == rails[1])] = np.nan
    return out


def snap_rate(fs: float) -> float:
    """`fs`, or the nearest whole number of Hz when within 0.1% of it (clock jitter, float stamps)."""
    whole = round(fs)
    return float(whole) if whole > 0 and abs(fs - whole) <= RATE_SNAP_TOLERANCE * whole else float(fs)


def measure_rate(t_s: np.ndarray) -> tuple[float, int]:
    """(sampling rate in Hz, number of duplicated stamps) from sorted time stamps in seconds: the mean of
    the ordinary steps (those up to 1.5x the median positive step, so gaps do not lower it), snapped.

    Raises:
        BadRecordingError 'bad_timestamps': fewer than two distinct stamps.
    """
    steps = np.diff(t_s)
    n_dup = int(np.count_nonzero(steps == 0))
    positive = steps[steps > 0]
    if positive.size == 0:
        raise BadRecordingError("fewer than two distinct time stamps", kind="bad_timestamps")
    ordinary = positive[positive <= REGULAR_STEP_FACTOR * np.median(positive)]
    return snap_rate(ordinary.size / float(ordinary.sum())), n_dup


def to_uniform_grid(t_s: np.ndarray, x: np.ndarray, fs: float, max_gap_s: float = MAX_GAP_S,
                    t0: float | None = None) -> tuple[np.ndarray, list[list[float]]]:
    """Linear interpolation of the samples (t_s, x) onto t0 + k / fs, k = 0 .. up to the last stamp.

    Missing samples (NaN in `x`) are dropped first, so they count as time gaps. Stamps need not be sorted
    or unique (duplicates are averaged). Grid points inside a gap between two kept samples longer than
    `max_gap_s` are NaN; shorter gaps are interpolated.

    Args:
        t_s: stamps in seconds; x: values (float, NaN = missing); t0: grid start (default the first stamp).
    Returns:
        (float64 values on the grid, gaps as [start_s, duration_s] relative to t0).
    Raises:
        BadRecordingError 'no_signal' when no sample is left; 'bad_timestamps' when the stamps span more than
        MAX_SPAN_H hours (one wrong stamp, e.g. 1e13, would otherwise ask for a grid of petabytes).
    """
    t_s = np.asarray(t_s, dtype=np.float64)
    keep = ~np.isnan(x)
    if not keep.any():
        raise BadRecordingError("every sample is missing (NaN or saturated)", kind="no_signal")
    t_first = float(t_s.min()) if t0 is None else float(t0)
    t_all_last = float(t_s.max())
    if t_all_last - t_first > MAX_SPAN_H * 3600:
        raise BadRecordingError(f"the time stamps span {(t_all_last - t_first) / 3600:.3g} h (from {t_first:g} to "
                                f"{t_all_last:g} s); more than {MAX_SPAN_H:g} h is not one night: a stray or "
                                "corrupt time stamp?", kind="bad_timestamps")
    t_k, x_k = t_s[keep], np.asarray(x, dtype=np.float64)[keep]
    if np.any(np.diff(t_k) < 0):
        order = np.argsort(t_k, kind="stable")
        t_k, x_k = t_k[order], x_k[order]
    if np.any(np.diff(t_k) == 0):
        t_k, inverse, counts = np.unique(t_k, return_inverse=True, return_counts=True)
        x_k = np.bincount(inverse, weights=x_k) / counts
    n_grid = math.floor((t_all_last - t_first) * fs + 1e-6) + 1
    grid = t_first + np.arange(n_grid) / fs
    out = np.interp(grid, t_k, x_k)  # holds the first/last kept value before/after them (fixed below)
    gaps = []
    for i in np.flatnonzero(np.diff(t_k) > max_gap_s):  # grid points strictly between two far-apart samples
        out[np.searchsorted(grid, t_k[i], side="right"):np.searchsorted(grid, t_k[i + 1], side="left")] = np.nan
        gaps.append([t_k[i] - t_first, t_k[i + 1] - t_k[i]])
    if t_k[0] - t_first > max_gap_s:  # missing at the start
        out[:np.searchsorted(grid, t_k[0], side="left")] = np.nan
        gaps.insert(0, [0.0, t_k[0] - t_first])
    if t_all_last - t_k[-1] > max_gap_s:  # missing at the end
        out[np.searchsorted(grid, t_k[-1], side="right"):] = np.nan
        gaps.append([t_k[-1] - t_first, t_all_last - t_k[-1]])
    gaps = [[round(float(start), 6), round(float(length), 6)] for start, length in gaps]
    return out, gaps


def regular_signal(x: np.ndarray, fs: float, max_gap_s: float = MAX_GAP_S) -> tuple[np.ndarray, list]:
    """A signal already on a uniform grid (no time column): missing stretches up to `max_gap_s`
    interpolated, longer ones left NaN. Returns (values, gaps) as `to_uniform_grid`."""
    if not np.isnan(x).any():
        return x, []
    return to_uniform_grid(np.arange(x.size) / fs, x, fs, max_gap_s, t0=0.0)


def check_rate(fs: float, path: Path) -> None:
    """Raise BadRecordingError 'low_sampling_rate' below 16 Hz (the 8-Hz PPG low-pass needs 16 Hz)."""
    if not (math.isfinite(fs) and fs >= MIN_FS):
        raise BadRecordingError(f"{path.name}: sampled at {fs:g} Hz; PPG needs at least {MIN_FS:g} Hz",
                                kind="low_sampling_rate")


# ----------------------------------------------------------------------------------------------------------
# Tables: layout, block reading, time stamps


@dataclasses.dataclass
class TableLayout:
    """What the first lines of a table say: delimiter (None = white space), column names (header, or
    "column 1", "column 2" ... without one), whether there is a header, and a sample row: each column's first
    non-empty field among the first data rows (a missing first sample must not hide what a column holds)."""

    delimiter: str | None
    names: list[str]
    has_header: bool
    sample_row: list[str]


def _split(line: str, delimiter: str | None) -> list[str]:
    return [f.strip().strip('"').strip() for f in (line.split(delimiter) if delimiter else line.split())]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_datetime(text: str) -> bool:
    if not ISO_DATETIME_RE.match(text):
        return False
    try:
        dt.datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def _pick_delimiter(line: str, suffix: str) -> str | None:
    if suffix == ".tsv":
        return "\t"
    candidates = (",", ";", "\t") if suffix == ".csv" else ("\t", ",", ";")
    for delimiter in candidates:
        if delimiter in line:
            return delimiter
    return "," if suffix == ".csv" else None


def sniff_table(path: Path) -> TableLayout:
    """Delimiter, header and a sample row (see TableLayout) from the first 64 kB of a table.

    Raises:
        BadRecordingError 'empty_file' (no data line) or 'unreadable_table' (not text).
    """
    try:
        with open(path, encoding="utf-8-sig", errors="strict") as fh:
            head = fh.read(SNIFF_BYTES)
    except UnicodeDecodeError:
        raise BadRecordingError(f"{path.name}: not a text table (not UTF-8)", kind="unreadable_table") from None
    lines = [ln for ln in head.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if len(head) == SNIFF_BYTES and len(lines) > 1:
        lines = lines[:-1]  # the last line of the sniffed text may be cut
    if not lines:
        raise BadRecordingError(f"{path.name}: empty file (no data rows)", kind="empty_file")
    delimiter = _pick_delimiter(lines[0], path.suffix.lower())
    fields = _split(lines[0], delimiter)
    has_header = any(f and not _is_number(f) and not _is_datetime(f) for f in fields)
    if has_header and len(lines) < 2:
        raise BadRecordingError(f"{path.name}: empty file (a header and no data rows)", kind="empty_file")
    names = fields if has_header else [f"column {i + 1}" for i in range(len(fields))]
    sample = ["" for _ in names]
    for line in lines[1 if has_header else 0:][:SAMPLE_ROWS]:
        for i, field in enumerate(_split(line, delimiter)[:len(names)]):
            if not sample[i] and field.strip():
                sample[i] = field
        if all(sample):
            break
    return TableLayout(delimiter, names, has_header, sample)


def iter_blocks(path: Path, layout: TableLayout, columns: dict[str, tuple[int, str]]) -> Iterator[dict]:
    """Parse the table in blocks of about 16 MB of text; yield {key: array} per block.

    Args:
        columns: key -> (0-based column index, numpy dtype: "f8" for numbers, "U40" for text). Numbers that
            are empty or unparseable are NaN.
    """
    with open(path, encoding="utf-8-sig") as fh:
        if layout.has_header:
            for line in fh:  # skip comments and blank lines up to the header itself
                if line.strip() and not line.lstrip().startswith("#"):
                    break
        while True:
            lines = fh.readlines(BLOCK_BYTES)
            if not lines:
                return
            lines = [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
            if lines:
                yield {key: _parse_column(lines, layout.delimiter, index, dtype, path)
                       for key, (index, dtype) in columns.items()}


def _float_or_nan(text: str) -> float:
    try:
        return float(text.strip().strip('"'))
    except ValueError:
        return math.nan


def _parse_column(lines: list[str], delimiter: str | None, index: int, dtype: str, path: Path) -> np.ndarray:
    kwargs = dict(delimiter=delimiter, usecols=(index,), comments="#", quotechar='"', ndmin=1)
    try:
        if dtype == "f8":
            try:  # fast path: the C parser
                return np.loadtxt(lines, dtype=np.float64, **kwargs)
            except ValueError:  # empty or non-numeric fields: per value, NaN where it is not a number
                return np.loadtxt(lines, dtype=np.float64, converters=_float_or_nan, **kwargs)
        return np.loadtxt(lines, dtype=dtype, **kwargs)
    except (ValueError, IndexError) as err:
        raise BadRecordingError(f"{path.name}: cannot read column {index + 1}: {err}",
                                kind="unreadable_table") from None


def parse_datetimes(texts: np.ndarray) -> np.ndarray:
    """ISO date-times -> datetime64[us] (UTC when a time zone is given; as written when none is).

    Raises:
        ValueError naming the first value that is not an ISO date-time.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy warns on time zones: those take the slow, exact path
            return np.array(texts, dtype="datetime64[us]")
    except (ValueError, UserWarning, DeprecationWarning):
        pass
    out = np.empty(len(texts), dtype="datetime64[us]")
    for i, text in enumerate(texts):
        try:
            stamp = dt.datetime.fromisoformat(str(text).strip())
        except ValueError:
            raise ValueError(f"row {i + 1} of its block: {str(text)!r} is not an ISO date-time") from None
        if stamp.tzinfo is not None:
            stamp = stamp.astimezone(dt.timezone.utc).replace(tzinfo=None)
        out[i] = np.datetime64(stamp, "us")
    return out


def _time_kind(name: str, has_header: bool, first_value: str) -> str | None:
    """'datetime', 'ms', 's' or 'auto' (numbers, unit from the step) for a time column, else None."""
    if _is_datetime(first_value):
        return "datetime"
    low = name.strip().lower()
    if not has_header or not _is_number(first_value):
        return None
    bare = re.sub(r"[\s_\-()\[\]]+", " ", low).strip()
    if MS_NAME_RE.search(bare):
        return "ms"
    if bare in TIME_NAMES or "time" in bare or bare.split(" ")[0] in TIME_NAMES:
        return "s" if re.search(r"(^| )(s|sec|secs|seconds)$", bare) else "auto"
    return None


def _column_number(column: str, n_columns: int) -> int | None:
    if column.strip().isdigit() and 1 <= int(column) <= n_columns:
        return int(column) - 1
    return None


def choose_columns(layout: TableLayout, column: str | None, patterns: Sequence[str],
                   path: Path) -> tuple[int | None, str | None, int]:
    """(time column index or None, its kind, PPG column index) of a table.

    Raises:
        BadRecordingError 'no_ppg_column' when no PPG column can be chosen, listing the columns.
    """
    names, first = layout.names, layout.sample_row
    kinds = [_time_kind(n, layout.has_header, first[i] if i < len(first) else "") for i, n in enumerate(names)]
    time_idx = next((i for i, k in enumerate(kinds) if k), None)
    if time_idx is None and not layout.has_header and len(names) == 2 and all(_is_number(f) for f in first):
        time_idx = 0  # a provisional guess: kept only when the column rises (see read_table)
        kinds[0] = "auto"
    numeric = [i for i, f in enumerate(first) if i != time_idx and _is_number(f)]
    ppg_idx = None
    if column:
        lowered = [n.lower() for n in names]
        if column.lower() in lowered:
            ppg_idx = lowered.index(column.lower())
        else:
            ppg_idx = _column_number(column, len(names))
        if ppg_idx is None:
            raise BadRecordingError(f"{path.name}: no column {column!r}; columns: {names}", kind="no_ppg_column")
    elif layout.has_header:
        candidates = [names[i] for i in numeric] or names
        name = find_ppg_channel(candidates, [1.0] * len(candidates), patterns)  # one rate for all columns
        ppg_idx = names.index(name) if name is not None else (numeric[0] if len(numeric) == 1 else None)
    elif len(numeric) == 1:
        ppg_idx = numeric[0]
    if ppg_idx is None:
        hint = "a header name or a column number" if layout.has_header else "a column number"
        raise BadRecordingError(f"{path.name}: no usable PPG column (none named like {list(patterns)}, and not "
                                f"exactly one numeric column besides the time); columns: {names}; pass --column "
                                f"with {hint}", kind="no_ppg_column")
    if ppg_idx == time_idx:
        time_idx = None
    return time_idx, (kinds[time_idx] if time_idx is not None else None), ppg_idx


def check_times_finite(t: np.ndarray, path: Path, what: str) -> None:
    """BadRecordingError (kind 'bad_timestamps') naming the first data row whose time (`what`) did not parse."""
    if not np.isfinite(t).all():
        row = int(np.flatnonzero(~np.isfinite(t))[0])
        raise BadRecordingError(f"{path.name}: unparseable {what} in data row {row + 1}", kind="bad_timestamps")


def stamps_to_seconds(raw: list[np.ndarray], kind: str, path: Path) -> tuple[np.ndarray, str | None]:
    """Time-column blocks -> float64 seconds from the first stamp, and the first stamp as text (date-times).

    Raises:
        BadRecordingError 'bad_timestamps' for values that are not stamps.
    """
    if kind == "datetime":
        try:
            stamps = np.concatenate([parse_datetimes(block) for block in raw])
        except ValueError as err:
            raise BadRecordingError(f"{path.name}: unparseable time stamp: {err}", kind="bad_timestamps") from None
        if np.isnat(stamps).any():
            raise BadRecordingError(f"{path.name}: empty time stamps", kind="bad_timestamps")
        origin = stamps.min()
        return (stamps - origin).astype(np.int64) / 1e6, str(origin)
    t = np.concatenate(raw)
    check_times_finite(t, path, "time stamp")
    if kind == "auto":
        steps = np.diff(np.sort(t))
        positive = steps[steps > 0]
        kind = "ms" if positive.size and np.median(positive) >= MS_STEP_THRESHOLD else "s"
    t = t - t.min()
    return (t / 1000.0 if kind == "ms" else t), None


def read_table(path: Path, fs: float | None = None, column: str | None = None,
               patterns: Sequence[str] = PPG_PATTERNS, max_gap_s: float = MAX_GAP_S) -> Recording:
    """A PPG table -> Recording (see the module docstring for delimiter, header, time and column rules).

    Args:
        fs: the rate (Hz); required without a time column, checked against the stamps with one.
        column: header name (any case) or 1-based column number of the PPG.
    Raises:
        BadRecordingError: 'empty_file', 'unreadable_table', 'no_ppg_column', 'bad_timestamps', 'needs_fs',
            'rate_mismatch', 'low_sampling_rate', 'no_signal'.
    """
    layout = sniff_table(path)
    time_idx, time_kind, ppg_idx = choose_columns(layout, column, patterns, path)
    columns = {"ppg": (ppg_idx, "f8")}
    if time_idx is not None:
        columns["time"] = (time_idx, "U40" if time_kind == "datetime" else "f8")
    blocks: dict[str, list] = {key: [] for key in columns}
    for block in iter_blocks(path, layout, columns):
        for key, values in block.items():
            blocks[key].append(values)
    if not blocks["ppg"]:
        raise BadRecordingError(f"{path.name}: empty file (no data rows)", kind="empty_file")
    raw = np.concatenate(blocks["ppg"])
    ppg = mark_missing(raw, integer_rails(raw))
    info = {"source_format": "table", "column": layout.names[ppg_idx], "time_column": None,
            "duplicated_stamps": 0, "start_time": None}
    t = None
    if time_idx is not None:
        t, info["start_time"] = stamps_to_seconds(blocks["time"], time_kind, path)
        if not layout.has_header and np.any(np.diff(t) < 0):  # a headerless first column that does not rise
            if column is None:  # is a second signal, not stamps: which one is the PPG is not known
                raise BadRecordingError(f"{path.name}: two signal columns and no header; pass --column 1 or 2",
                                        kind="no_ppg_column")
            t = None
        else:
            info["time_column"] = layout.names[time_idx]
    if t is None:
        if fs is None:
            raise BadRecordingError(f"{path.name}: no time column, so the sampling rate is unknown; pass --fs",
                                    kind="needs_fs")
        check_rate(fs, path)
        signal, gaps = regular_signal(ppg, fs, max_gap_s)
        return Recording(signal, float(fs), {**info, "fs_found": float(fs), "gaps": gaps})
    fs_found, info["duplicated_stamps"] = measure_rate(np.sort(t))
    check_rate(fs_found, path)
    if fs is not None and abs(fs_found - fs) > RATE_MISMATCH_TOLERANCE * fs:
        raise BadRecordingError(f"{path.name}: the time column gives {fs_found:.4g} Hz but --fs is {fs:g}",
                                kind="rate_mismatch")
    grid_fs = float(fs) if fs is not None else fs_found
    check_rate(grid_fs, path)
    signal, gaps = to_uniform_grid(t, ppg, grid_fs, max_gap_s)
    return Recording(signal, grid_fs, {**info, "fs_found": fs_found, "gaps": gaps})


# ----------------------------------------------------------------------------------------------------------
# NumPy, WFDB, EDF


def read_npy(path: Path, fs: float | None, max_gap_s: float = MAX_GAP_S) -> Recording:
    """A .npy array of one signal (1-D, or 2-D with one row or column) at `fs` Hz -> Recording.
    Integer arrays: samples at the dtype's limits are saturated (missing)."""
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError, EOFError) as err:
        raise BadRecordingError(f"{path.name}: not a readable .npy file: {err}", kind="unreadable_npy") from None
    if arr.size == 0:
        raise BadRecordingError(f"{path.name}: empty array", kind="empty_file")
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.number) and not np.iscomplexobj(arr)):
        raise BadRecordingError(f"{path.name}: expected one real signal (a 1-D array), got {arr.dtype} "
                                f"{arr.shape}", kind="unreadable_npy")
    if fs is None:
        raise BadRecordingError(f"{path.name}: a .npy file does not store its sampling rate; pass --fs",
                                kind="needs_fs")
    check_rate(fs, path)
    ppg = mark_missing(np.asarray(arr), integer_rails(np.asarray(arr), arr.dtype))
    signal, gaps = regular_signal(ppg, fs, max_gap_s)
    return Recording(signal, float(fs), {"source_format": "npy", "column": None, "fs_found": float(fs),
                                         "time_column": None, "duplicated_stamps": 0, "start_time": None,
                                         "gaps": gaps})


def _pick_signal(names: list[str], rates: list[float], column: str | None, patterns: Sequence[str], path: Path,
                 what: str) -> str:
    """The signal named `column` (exact, any case), else the highest-rate one matching the PPG patterns."""
    if column:
        match = [n for n in names if n.lower() == column.lower()]
        if not match:
            raise BadRecordingError(f"{path.name}: no {what} named {column!r}; signals: {names}",
                                    kind="no_ppg_channel")
        return match[0]
    name = find_ppg_channel(names, rates, patterns)
    if name is None:
        raise BadRecordingError(f"{path.name}: no PPG signal (names containing {list(patterns)}); signals: "
                                f"{names}; pass --column", kind="no_ppg_channel")
    return name


def read_wfdb(path: Path, column: str | None = None, patterns: Sequence[str] = PPG_PATTERNS,
              max_gap_s: float = MAX_GAP_S) -> Recording:
    """A WFDB record (its .hea; samples in .dat or .mat beside it) -> Recording, read with the `wfdb`
    package. The rate is the header's (times samples per frame for the chosen signal); samples WFDB marks
    invalid are missing."""
    import wfdb

    record_name = str(path.with_suffix(""))
    try:
        header = wfdb.rdheader(record_name)
    except (ValueError, OSError, IndexError, TypeError) as err:
        raise BadRecordingError(f"{path.name}: unreadable WFDB header: {err}", kind="unreadable_wfdb") from None
    if getattr(header, "seg_name", None):
        raise BadRecordingError(f"{path.name}: multi-segment WFDB records are not supported",
                                kind="unreadable_wfdb")
    names = list(header.sig_name or [])
    rates = [float(header.fs) * int(spf or 1) for spf in (header.samps_per_frame or [1] * len(names))]
    name = _pick_signal(names, rates, column, patterns, path, "signal")
    channel = names.index(name)
    data_file = path.parent / header.file_name[channel]
    if not data_file.is_file():
        raise BadRecordingError(f"{path.name}: its data file {data_file.name} is missing", kind="missing_data_file")
    try:
        rec = wfdb.rdrecord(record_name, channels=[channel], smooth_frames=False)
    except (ValueError, OSError, IndexError, TypeError, EOFError) as err:
        raise BadRecordingError(f"{path.name}: unreadable WFDB record: {err}", kind="unreadable_wfdb") from None
    signal = np.asarray(rec.e_p_signal[0], dtype=np.float64)
    fs = float(rec.fs) * int(rec.samps_per_frame[0])
    check_rate(fs, path)
    if signal.size == 0:
        raise BadRecordingError(f"{path.name}: no samples", kind="empty_file")
    signal, gaps = regular_signal(mark_missing(signal, None), fs, max_gap_s)
    return Recording(signal, fs, {"source_format": "wfdb", "column": name, "fs_found": fs, "time_column": None,
                                  "duplicated_stamps": 0, "start_time": None, "gaps": gaps})


def read_edf_ppg(path: Path, column: str | None = None, patterns: Sequence[str] = PPG_PATTERNS) -> Recording:
    """The PPG channel of an EDF/BDF through read_edf (the MESA reader): `column` is an
    exact label (any case), else the configured patterns. No gap handling: as for MESA, up to 1% NaN samples
    are interpolated by preprocessing and more make the night bad."""

    label = None
    if column:  # the header alone, with the same parser as read_edf (BadRecordingError when it is broken)
        try:
            with open(path, "rb") as fh:
                header = read_edf_header(fh, path, os.fstat(fh.fileno()).st_size)
        except OSError as err:
            raise BadRecordingError(f"unreadable EDF {path.name}: {err}", kind="unreadable_edf") from None
        label = _pick_signal(header.labels, [s.fs for s in header.signals], column, patterns, path, "channel")
    rec = read_edf(path, patterns, with_ecg=False, ppg_label=label)
    return Recording(rec["ppg"], float(rec["ppg_fs"]),
                     {"source_format": "edf", "column": rec["ppg_channel"], "fs_found": float(rec["ppg_fs"]),
                      "time_column": None, "duplicated_stamps": 0, "start_time": None, "gaps": []})


def recording_format(path: Path) -> str:
    """'table', 'npy', 'wfdb' or 'edf' from the extension.

    Raises:
        BadRecordingError 'unknown_format' for any other extension (a WFDB .dat/.mat: name its .hea)."""
    suffix = path.suffix.lower()
    if suffix in WFDB_DATA_SUFFIXES:
        raise BadRecordingError(f"{path.name}: a WFDB data file; give its header ({path.stem}.hea)",
                                kind="unknown_format")
    if suffix not in FORMAT_BY_SUFFIX:
        raise BadRecordingError(f"{path.name}: unknown extension {suffix or '(none)'!r}; known: "
                                f"{', '.join(sorted(FORMAT_BY_SUFFIX))}", kind="unknown_format")
    return FORMAT_BY_SUFFIX[suffix]


def read_recording(path: Path, fs: float | None = None, column: str | None = None,
                   patterns: Sequence[str] = PPG_PATTERNS, max_gap_s: float = MAX_GAP_S) -> Recording:
    """Any supported PPG recording -> Recording (format from the extension; see `recording_format`).

    Args:
        fs: rate in Hz, needed where the file cannot state it (a table without a time column, a .npy).
        column: the PPG column of a table, or the signal name of a WFDB/EDF record.
        patterns: the PPG name patterns tried when `column` is None (preprocessing.ppg_channels).
        max_gap_s: longer missing stretches stay gaps (NaN).
    Raises:
        BadRecordingError naming the file and the problem.
    """
    path = Path(path)
    kind = recording_format(path)
    if not path.is_file():
        raise BadRecordingError(f"{path}: file not found", kind="missing_file")
    if path.stat().st_size == 0:
        raise BadRecordingError(f"{path.name}: empty file", kind="empty_file")
    readers = {"table": lambda: read_table(path, fs, column, patterns, max_gap_s),
               "npy": lambda: read_npy(path, fs, max_gap_s),
               "wfdb": lambda: read_wfdb(path, column, patterns, max_gap_s),
               "edf": lambda: read_edf_ppg(path, column, patterns)}
    with naming_file(path):
        return readers[kind]()


@contextlib.contextmanager
def naming_file(path: Path) -> Iterator[None]:
    """Re-raise a BadRecordingError whose message does not name `path` with the file name in front."""
    try:
        yield
    except BadRecordingError as err:
        if path.name in str(err):
            raise
        raise BadRecordingError(f"{path.name}: {err}", kind=err.kind) from None


def is_recording_file(path: Path) -> bool:
    """Whether a file found in a folder is a recording to stage (a known extension; WFDB data files are
    part of their .hea record)."""
    return path.suffix.lower() in FORMAT_BY_SUFFIX


def wfdb_data_files(header: Path) -> list[Path]:
    """The existing data files a WFDB header names (any name: converters often write e.g. signals.dat), in
    its folder; <stem>.dat/.mat when the header names none or cannot be parsed."""
    try:
        import wfdb

        names = wfdb.rdheader(str(header.with_suffix(""))).file_name or []
    except Exception:  # noqa: BLE001 - a broken header fails where the record is read, with its reason
        names = []
    files = sorted({header.parent / name for name in names if name})
    if not files:
        files = sorted(p for p in header.parent.glob(header.stem + ".*") if p.suffix.lower() in WFDB_DATA_SUFFIXES)
    return [p for p in files if p.is_file()]


def recording_files(path: Path) -> list[Path]:
    """The files a recording is made of (a WFDB header and its data files), for cache signatures."""
    if path.suffix.lower() != ".hea":
        return [path]
    return [path] + wfdb_data_files(path)


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


def stage_codes(texts: np.ndarray) -> np.ndarray:
    """DREAMT Sleep_Stage texts -> int8 per sample: class 0..3, PREPARATION_CODE for P, IGNORE_INDEX else."""
    values, inverse = np.unique(np.char.strip(texts.astype(str)), return_inverse=True)
    table = np.array([PREPARATION_CODE if v == DREAMT_PREPARATION else DREAMT_STAGE_TO_CLASS.get(v, IGNORE_INDEX)
                      for v in values.tolist()], dtype=np.int8)
    return table[inverse.reshape(-1)]


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
        lights_off_s (from the first stamp), duplicated_stamps).
    Raises:
        BadRecordingError: 'empty_file', 'missing_column', 'bad_timestamps', 'rate_mismatch' (the stamps'
        rate more than 5% off `nominal_fs`), 'no_stages' (no stage other than P), 'gap_in_recording' (missing
        data longer than `max_gap_s` after lights-off), 'no_signal'.
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
    for block in iter_blocks(path, layout, columns):
        parts["stage"].append(stage_codes(block.pop("stage")))
        for key, values in block.items():
            parts[key].append(values)
    if not parts["time"]:
        raise BadRecordingError(f"{path.name}: empty file (no data rows)", kind="empty_file")
    data = {key: np.concatenate(values) for key, values in parts.items()}
    del parts
    t, codes = data["time"], data["stage"]
    check_times_finite(t, path, DREAMT_TIME_COLUMN)
    if np.any(np.diff(t) < 0):
        order = np.argsort(t, kind="stable")
        data = {key: values[order] for key, values in data.items()}
        t, codes = data["time"], data["stage"]
    fs_found, n_dup = measure_rate(t)
    if abs(fs_found - nominal_fs) > RATE_MISMATCH_TOLERANCE * nominal_fs:
        raise BadRecordingError(f"{path.name}: {DREAMT_TIME_COLUMN} gives {fs_found:.4g} Hz, expected about "
                                f"{nominal_fs:g} Hz (preprocessing.nominal_fs)", kind="rate_mismatch")
    scored = np.flatnonzero(codes != PREPARATION_CODE)
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
                     "lights_off_s": round(lights_off - float(t[0]), 6), "duplicated_stamps": n_dup}}


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
    return night["labels_W"], rec


def preprocess_file(path: str | Path, n_windows: int = WINDOWS_PER_SUBJECT, method: str = "linear",
                    patterns: Sequence[str] = PPG_PATTERNS, fs: float | None = None, column: str | None = None,
                    max_gap_s: float = MAX_GAP_S) -> dict:
    """Any supported PPG recording -> model input through preprocess_signals (the MESA
    preprocessing); gaps longer than `max_gap_s` are zeroed and their epochs listed in gap_epochs.

    Returns:
        preprocess_signals's dict plus ppg_channel (the column or signal used), source_format, ppg_fs_found
        (the rate the file states or its stamps show) and gaps ([start_s, duration_s]).
    Raises:
        BadRecordingError naming the file and the problem.
    """

    path = Path(path)
    rec = read_recording(path, fs, column, patterns, max_gap_s)
    with naming_file(path):
        out = preprocess_signals(rec.signal_T, rec.fs, n_windows, method, name=path.name,
                                                   nan_is_gap=rec.info["source_format"] != "edf")
    out.update(ppg_channel=rec.info["column"], source_format=rec.info["source_format"],
               ppg_fs_found=rec.info["fs_found"], gaps=rec.info["gaps"])
    return out
