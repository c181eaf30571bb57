"""PPG tables as people export them (.csv, .tsv, .txt). Fields as sleepppg.tabletext reads them: the
delimiter (.tsv tab; else semicolon, tab, comma or white space, whichever splits the first lines evenly; quoted
fields), decimal point or comma, thousands separators. A first line with a non-numeric field is the header. The
time column, when there is one, is a header named like time, timestamp, datetime, date, t, seconds, ms, minutes,
hours (a unit in the name or in brackets: time_min, `time (min)`, `t [h]`), a column of ISO date-times
(2024-03-01T22:15:00.015, with or without a time zone) or of clock times (22:15:00.015; past midnight the next
day), or in a table without a header the first of two columns when it rises monotonically. Numeric stamps
without a unit are seconds, or milliseconds when the median step is 0.5 or more (as seconds that would be
under 2 Hz, no PPG). Stamps give the sampling rate (the mean step between consecutive samples, ignoring gaps;
snapped to a whole number of Hz within 0.1%); a rate outside 16 Hz - 1 kHz that another unit would explain,
or any above 1 kHz, is a unit mistake and refused naming the column (sleepppg.grid.check_stamp_rate).
Duplicates are averaged, irregular samples are interpolated onto the uniform grid. The PPG column is --column
(a header name, any case, or a 1-based column number), else the first header containing one of the configured
PPG patterns (preprocessing.ppg_channels: pleth, ppg, bvp), else the only numeric column besides the time.
PPG values that are not numbers are missing (counted and reported); more than 1% of them refuse the table. A
table without a time column needs the rate (--fs); a table with one uses the stamps' rate.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from sleepppg.channels import PPG_PATTERNS, find_ppg_channel
from sleepppg.errors import BadRecordingError
from sleepppg.grid import (
    MAX_GAP_S,
    TIME_UNITS_S,
    Recording,
    check_rate,
    check_stamp_rate,
    check_stamps_rise,
    filled_points,
    integer_rails,
    mark_missing,
    measure_rate,
    regular_signal,
    to_uniform_grid,
)
from sleepppg.tabletext import (
    MISSING_TEXTS,
    is_clock,
    is_datetime,
    is_number,
    normalise_numbers,
    number_marks,
    parse_clock,
    parse_datetimes,
    pick_delimiter,
    split_fields,
    texts_to_floats,
    time_kind,
)

SAMPLE_ROWS = 100  # data rows a table's sniffer looks through for each column's first non-empty field
MS_STEP_THRESHOLD = 0.5  # numeric stamps whose median step is >= 0.5 are milliseconds (as seconds: < 2 Hz)
BLOCK_BYTES = 16 << 20  # rows are parsed 16 MB of text at a time
SNIFF_BYTES = 1 << 16  # the first 64 kB decide delimiter, header and columns
MAX_TEXT_FRACTION = 0.01  # PPG values that are not numbers: up to 1% are missing samples, more refuse the table
TEXT_KINDS = ("datetime", "clock")  # time columns read as text


# ----------------------------------------------------------------------------------------------------------
# Tables: layout, block reading, time stamps


@dataclasses.dataclass
class TableLayout:
    """What the first lines of a table say: delimiter (None = white space), column names (header, or
    "column 1", "column 2" ... without one), whether there is a header, a sample row (each column's first
    non-empty field among the first data rows: a missing first sample must not hide what a column holds), and
    the number marks (decimal point or comma; thousands separator or None)."""

    delimiter: str | None
    names: list[str]
    has_header: bool
    sample_row: list[str]
    decimal: str = "."
    thousands: str | None = None


def sniff_table(path: Path) -> TableLayout:
    """Delimiter, header, a sample row and number marks (see TableLayout) from the first 64 kB of a table.

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
    delimiter = pick_delimiter(lines, path.suffix.lower())
    fields = split_fields(lines[0], delimiter)
    has_header = any(f and f.lower() not in MISSING_TEXTS and not is_number(f) and not is_datetime(f)
                     and not is_clock(f) for f in fields)
    if has_header and len(lines) < 2:
        raise BadRecordingError(f"{path.name}: empty file (a header and no data rows)", kind="empty_file")
    names = fields if has_header else [f"column {i + 1}" for i in range(len(fields))]
    rows = [split_fields(line, delimiter)[:len(names)] for line in lines[1 if has_header else 0:][:SAMPLE_ROWS]]
    decimal, thousands = number_marks([f for row in rows for f in row], delimiter)
    sample = ["" for _ in names]
    for row in rows:
        for i, field in enumerate(row):
            if not sample[i] and field.strip() and field.lower() not in MISSING_TEXTS:
                sample[i] = field
    return TableLayout(delimiter, names, has_header, sample, decimal, thousands)


def iter_blocks(path: Path, layout: TableLayout, columns: dict[str, tuple[int, str]],
                notes: dict[str, list] | None = None) -> Iterator[dict]:
    """Parse the table in blocks of about 16 MB of text; yield {key: array} per block.

    Args:
        columns: key -> (0-based column index, numpy dtype: "f8" for numbers, "U40" for text). Numbers that
            are empty or not numbers are NaN.
        notes: when given, notes[key] = [count, first] of the non-empty fields of a number column that are
            neither a number nor a missing-value marker (summed over blocks).
    """
    comma_decimal = _comma_decimal_by_line(layout)
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
            if comma_decimal:  # 512,5 -> 512.5 once for the block (no comma is a delimiter or groups digits)
                lines = [ln.replace(",", ".") for ln in lines]
            if lines:
                block = {}
                for key, (index, dtype) in columns.items():
                    block[key], n_text, example = _parse_column(lines, layout, index, dtype, path)
                    if notes is not None and n_text:
                        note = notes.setdefault(key, [0, example])
                        note[0] += n_text
                yield block


def _comma_decimal_by_line(layout: TableLayout) -> bool:
    """Whether decimal commas can become points on whole lines (no comma delimits or groups digits)."""
    return layout.decimal == "," and layout.thousands is None and layout.delimiter != ","


def _parse_column(lines: list[str], layout: TableLayout, index: int, dtype: str,
                  path: Path) -> tuple[np.ndarray, int, str | None]:
    """One column of a block of lines: (values, count of non-number texts in a number column, the first)."""
    kwargs = dict(delimiter=layout.delimiter, usecols=(index,), comments="#", quotechar='"', ndmin=1)
    try:
        if dtype == "f8":
            if layout.thousands is None:
                try:  # fast path: the C parser
                    return np.loadtxt(lines, dtype=np.float64, **kwargs), 0, None
                except ValueError:  # empty or non-numeric fields: per value, below
                    pass
            texts = np.loadtxt(lines, dtype=str, **kwargs)
            decimal = "." if _comma_decimal_by_line(layout) else layout.decimal
            return texts_to_floats(normalise_numbers(texts, decimal, layout.thousands))
        return np.loadtxt(lines, dtype=dtype, **kwargs), 0, None
    except (ValueError, IndexError) as err:
        raise BadRecordingError(f"{path.name}: cannot read column {index + 1}: {err}",
                                kind="unreadable_table") from None


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
    kinds = [time_kind(n, layout.has_header, first[i] if i < len(first) else "") for i, n in enumerate(names)]
    time_idx = next((i for i, k in enumerate(kinds) if k), None)
    if time_idx is None and not layout.has_header and len(names) == 2 and all(is_number(f) for f in first):
        time_idx = 0  # a provisional guess: kept only when the column rises (see read_table)
        kinds[0] = "auto"
    numeric = [i for i, f in enumerate(first) if i != time_idx and is_number(f)]
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


def stamps_to_seconds(raw: list[np.ndarray], kind: str, path: Path) -> tuple[np.ndarray, str | None, str | None]:
    """Time-column blocks -> (float64 seconds from the first stamp, the first stamp as text for date-times,
    the unit numbers were read in: a key of TIME_UNITS_S, None for date-times and clock times).

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
        return (stamps - origin).astype(np.int64) / 1e6, str(origin), None
    if kind == "clock":
        try:
            t = parse_clock(np.concatenate(raw))
        except ValueError as err:
            raise BadRecordingError(f"{path.name}: unparseable time of day: {err}", kind="bad_timestamps") from None
        return t - t.min(), None, None
    t = np.concatenate(raw)
    check_times_finite(t, path, "time stamp")
    if kind == "auto":
        steps = np.diff(np.sort(t))
        positive = steps[steps > 0]
        kind = "ms" if positive.size and np.median(positive) >= MS_STEP_THRESHOLD else "s"
    return (t - t.min()) * TIME_UNITS_S[kind], None, kind


def read_table(path: Path, fs: float | None = None, column: str | None = None,
               patterns: Sequence[str] = PPG_PATTERNS, max_gap_s: float = MAX_GAP_S) -> Recording:
    """A PPG table -> Recording (see the module docstring for delimiter, header, time and column rules).

    Args:
        fs: the rate (Hz) of a table without a time column; a table with one uses the stamps' rate
            (sleepppg.formats.read_recording reports a different `fs` as a warning).
        column: header name (any case) or 1-based column number of the PPG.
    Raises:
        BadRecordingError: 'empty_file', 'unreadable_table', 'no_ppg_column', 'bad_timestamps', 'stamps_go_back'
            (grid.check_stamps_rise: the clock restarts or goes back), 'needs_fs', 'time_unit',
            'low_sampling_rate', 'no_signal'.
    """
    layout = sniff_table(path)
    time_idx, kind, ppg_idx = choose_columns(layout, column, patterns, path)
    columns = {"ppg": (ppg_idx, "f8")}
    if time_idx is not None:
        columns["time"] = (time_idx, "U40" if kind in TEXT_KINDS else "f8")
    blocks: dict[str, list] = {key: [] for key in columns}
    notes: dict[str, list] = {}
    for block in iter_blocks(path, layout, columns, notes):
        for key, values in block.items():
            blocks[key].append(values)
    if not blocks["ppg"]:
        raise BadRecordingError(f"{path.name}: empty file (no data rows)", kind="empty_file")
    raw = np.concatenate(blocks["ppg"])
    name = layout.names[ppg_idx]
    info = {"source_format": "table", "column": name, "time_column": None, "duplicated_stamps": 0,
            "start_time": None, "fs_source": None, "warnings": []}
    if "ppg" in notes:
        n_text, example = notes["ppg"]
        if n_text > MAX_TEXT_FRACTION * raw.size:
            raise BadRecordingError(f"{path.name}: {n_text} of {raw.size} values of column {name!r} are not numbers "
                                    f"(e.g. {example!r}; read with decimal mark {layout.decimal!r} and "
                                    f"thousands separator {layout.thousands!r})", kind="unreadable_table")
        info["warnings"].append(f"{n_text} values of column {name!r} are not numbers (e.g. {example!r}); read as "
                                "missing")
    ppg = mark_missing(raw, integer_rails(raw))
    t = unit = None
    if time_idx is not None:
        t, info["start_time"], unit = stamps_to_seconds(blocks["time"], kind, path)
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
        n_filled = int(np.count_nonzero(np.isnan(ppg) & ~np.isnan(signal)))
        return Recording(signal, float(fs), {**info, "fs_found": float(fs), "gaps": gaps, "filled_samples": n_filled})
    fs_found, info["duplicated_stamps"] = measure_rate(np.sort(t))
    check_stamp_rate(fs_found, info["time_column"], unit, path, info["duplicated_stamps"], guessed=kind == "auto")
    signal, gaps = to_uniform_grid(t, ppg, fs_found, max_gap_s)
    info.update(fs_source=f"time column {info['time_column']!r}", filled_samples=filled_points(t, ppg, fs_found,
                                                                                                max_gap_s))
    return Recording(signal, fs_found, {**info, "fs_found": fs_found, "gaps": gaps})
