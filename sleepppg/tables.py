"""PPG tables as people export them (.csv, .tsv, .txt). Delimiter from the extension (.csv comma, or
semicolon/tab when the first line has no comma; .tsv tab; .txt tab, comma, semicolon or white space, whichever the first line has). A first line with a
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
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from sleepppg.channels import PPG_PATTERNS, find_ppg_channel
from sleepppg.errors import BadRecordingError
from sleepppg.grid import (
    MAX_GAP_S,
    RATE_MISMATCH_TOLERANCE,
    Recording,
    check_rate,
    check_stamps_rise,
    integer_rails,
    mark_missing,
    measure_rate,
    regular_signal,
    to_uniform_grid,
)

SAMPLE_ROWS = 100  # data rows a table's sniffer looks through for each column's first non-empty field
MS_STEP_THRESHOLD = 0.5  # numeric stamps whose median step is >= 0.5 are milliseconds (as seconds: < 2 Hz)
BLOCK_BYTES = 16 << 20  # rows are parsed 16 MB of text at a time
SNIFF_BYTES = 1 << 16  # the first 64 kB decide delimiter, header and columns
TIME_NAMES = {"time", "timestamp", "timestamps", "datetime", "date", "t", "sec", "secs", "seconds", "s", "ms",
              "msec", "millis", "milliseconds", "time_s", "time_ms", "elapsed", "clock"}
MS_NAME_RE = re.compile(r"(^|[^a-z])(ms|msec|millis|milliseconds)([^a-z]|$)")
ISO_DATETIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


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
        BadRecordingError: 'empty_file', 'unreadable_table', 'no_ppg_column', 'bad_timestamps', 'stamps_go_back'
            (grid.check_stamps_rise: the clock restarts or goes back), 'needs_fs',
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
            check_stamps_rise(t, f"{path.name}: the time column {layout.names[time_idx]!r}")
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
