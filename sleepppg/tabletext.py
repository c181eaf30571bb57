"""How the fields of a PPG table are written, as spreadsheets and devices export them: the delimiter (comma,
semicolon, tab, white space; quoted fields), the decimal mark (point or comma) and thousands separators
(`"1,000.38"` in a comma table, `1.234,5` in a semicolon table), missing-value markers, ISO date-times, clock
times of day (22:15:00.015) and the unit of a numeric time column (its header: time_min, `t [h]`, ...).
sleepppg.tables reads tables with these rules.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
import warnings
from typing import Sequence

import numpy as np

SNIFF_LINES = 50  # lines whose field counts decide the delimiter
MISSING_TEXTS = {"", "na", "n/a", "#n/a", "nan", "null", "none", "-", "--", "?"}  # any case: a missing value
ISO_DATETIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
CLOCK_RE = re.compile(r"^\d{1,2}:\d{2}:\d{2}([.,]\d+)?$")  # a time of day, seconds included
NUMBER_RE = re.compile(r"^[+-]?(\d[\d.,]*|[.,]\d+)([eE][+-]?\d+)?$")  # digits with point/comma marks
COMMA_THOUSANDS_RE = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d*)?$")  # 1,000 or 1,000.38
DOT_THOUSANDS_RE = re.compile(r"^[+-]?\d{1,3}(\.\d{3})+(,\d*)?$")  # 1.000 or 1.000,38
CLOCK_DAY_S = 86400.0
# header words that name a time unit (key of sleepppg.grid.TIME_UNITS_S); bare "min", "h", "d" are too
# ambiguous (minimum, height) to make a column the time on their own
UNIT_WORDS = {"us": "us", "usec": "us", "microseconds": "us", "ms": "ms", "msec": "ms", "millis": "ms",
              "milliseconds": "ms", "s": "s", "sec": "s", "secs": "s", "seconds": "s", "min": "min", "mins": "min",
              "minutes": "min", "h": "h", "hr": "h", "hrs": "h", "hours": "h", "d": "d", "days": "d"}
AMBIGUOUS_ALONE = {"min", "h", "hr", "d"}
TIME_WORDS = {"time", "timestamp", "timestamps", "datetime", "date", "t", "elapsed", "clock", "stamp"}


def split_fields(line: str, delimiter: str | None) -> list[str]:
    """The stripped fields of one line: split at `delimiter` outside double quotes (None: white space)."""
    if delimiter is None:
        return [f.strip('"') for f in line.split()]
    try:
        fields = next(csv.reader([line], delimiter=delimiter, quotechar='"', skipinitialspace=True), [])
    except csv.Error:
        fields = line.split(delimiter)
    return [f.strip().strip('"').strip() for f in fields]


def pick_delimiter(lines: Sequence[str], suffix: str) -> str | None:
    """The delimiter of a table from its first lines: tab for .tsv; else the first of semicolon, tab, comma
    (whose data fields hold no blank inside) and white space that splits every line into the same number (> 1)
    of fields; a semicolon or tab never occurs inside a number, a comma may be its decimal mark. Otherwise the
    delimiter the first line holds, else none (one column; None splits at white space)."""
    if suffix == ".tsv":
        return "\t"
    lines = list(lines[:SNIFF_LINES])
    data = lines[1:] or lines
    for delimiter in (";", "\t", ","):
        counts = {len(split_fields(line, delimiter)) for line in lines}
        if len(counts) == 1 and counts.pop() > 1:
            if delimiter == "," and any(_numbers_apart(f) for line in data for f in split_fields(line, ",")):
                continue  # "0,5 12,25": white space between numbers with decimal commas
            return delimiter
    counts = {len(line.split()) for line in data}
    if len(counts) == 1 and counts.pop() > 1:
        return None
    if all(len(split_fields(line, ",")) <= 2 for line in data) and any(NUMBER_RE.match(f) and "," in f
                                                                        for f in split_fields(data[0], None)):
        return None  # one column of numbers, some with a decimal comma (512,5 and 513)
    return next((d for d in (",", ";", "\t") if d in lines[0]), None)  # uneven rows: the header's delimiter


def _numbers_apart(field: str) -> bool:
    words = [w.strip('"') for w in field.split()]
    return len(words) > 1 and all(NUMBER_RE.match(w) for w in words)


def number_marks(fields: Sequence[str], delimiter: str | None) -> tuple[str, str | None]:
    """(decimal mark, thousands separator or None) of a table from its data fields: a comma that cannot group
    thousands (512,5 or 0,03125) is the decimal mark (then a point groups thousands: 1.234,5); commas that can
    (1,000.38, or 1,234 in a comma table, where the field is quoted) group thousands; 1,234 in a semicolon, tab
    or white-space table is a decimal comma, as European spreadsheets write it."""
    with_comma = [f for f in fields if "," in f and NUMBER_RE.match(f)]
    if not with_comma:
        return ".", None
    if any(not COMMA_THOUSANDS_RE.match(f) for f in with_comma):
        return ",", ("." if any("." in f and DOT_THOUSANDS_RE.match(f) for f in fields) else None)
    if delimiter == "," or any("." in f for f in with_comma):
        return ".", ","
    return ",", None


def normalise_numbers(texts: np.ndarray, decimal: str, thousands: str | None) -> np.ndarray:
    """Number texts written with `decimal` and `thousands` marks -> texts float() reads."""
    if thousands:
        texts = np.char.replace(texts, thousands, "")
    if decimal != ".":
        texts = np.char.replace(texts, decimal, ".")
    return texts


def texts_to_floats(texts: np.ndarray) -> tuple[np.ndarray, int, str | None]:
    """float64 values of number texts: (values, NaN where a text is missing or not a number; how many
    non-empty texts are not numbers and not a missing-value marker; the first of them)."""
    texts = np.char.strip(np.asarray(texts, dtype=str))
    try:
        return texts.astype(np.float64), 0, None
    except ValueError:
        pass
    out = np.full(texts.size, np.nan)
    n_text, example = 0, None
    for i, text in enumerate(texts.tolist()):
        try:
            out[i] = float(text)
        except ValueError:
            if text.lower() not in MISSING_TEXTS:
                n_text += 1
                example = example or text
    return out, n_text, example


def is_number(text: str, decimal: str = ".", thousands: str | None = None) -> bool:
    """Whether a field is a number (written with the table's marks) or a missing-value marker is not."""
    if thousands:
        text = text.replace(thousands, "")
    try:
        float(text.replace(decimal, ".") if decimal != "." else text)
    except ValueError:
        return bool(NUMBER_RE.match(text))  # marks not known yet (sniffing): digits with , or . count
    return True


def is_datetime(text: str) -> bool:
    if not ISO_DATETIME_RE.match(text):
        return False
    try:
        dt.datetime.fromisoformat(text.replace(",", "."))
    except ValueError:
        return False
    return True


def is_clock(text: str) -> bool:
    return bool(CLOCK_RE.match(text)) and int(text.split(":")[0]) < 24


def parse_datetimes(texts: np.ndarray) -> np.ndarray:
    """ISO date-times -> datetime64[us] (UTC when a time zone is given; as written when none is).

    Raises:
        ValueError naming the first value that is not an ISO date-time.
    """
    texts = np.char.replace(np.char.strip(np.asarray(texts, dtype=str)), ",", ".")
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


def parse_clock(texts: np.ndarray) -> np.ndarray:
    """Times of day (HH:MM:SS[.fff], a decimal comma allowed) -> float64 seconds since the first one's
    midnight; a step back of more than 12 h is the night passing midnight (24 h are added from there on).

    Raises:
        ValueError naming the first value that is not a time of day.
    """
    texts = np.char.replace(np.char.strip(np.asarray(texts, dtype=str)), ",", ".")
    texts = np.where(np.char.find(texts, ":") == 1, np.char.add("0", texts), texts)
    try:
        stamps = np.char.add("2000-01-01T", texts).astype("datetime64[us]")
    except ValueError:
        bad = next(t for t in texts.tolist() if not is_clock(t))
        raise ValueError(f"{bad!r} is not a time of day (HH:MM:SS)") from None
    seconds = (stamps - np.datetime64("2000-01-01T00:00:00", "us")).astype(np.int64) / 1e6
    wraps = np.concatenate([[0.0], np.cumsum(np.diff(seconds) < -CLOCK_DAY_S / 2)])
    return seconds + wraps * CLOCK_DAY_S


def time_kind(name: str, has_header: bool, first_value: str) -> str | None:
    """What a column holds as time: 'datetime', 'clock' (time of day), a unit (a key of
    sleepppg.grid.TIME_UNITS_S, from the header: time_min, 'time (min)', t [h], seconds ...), 'auto' (numbers
    named like a time with no unit: seconds or milliseconds from the step), or None (not a time column)."""
    if is_datetime(first_value):
        return "datetime"
    if is_clock(first_value):
        return "clock"
    if not has_header or not is_number(first_value):
        return None
    words = [w for w in re.split(r"[\s_\-()\[\]{}/.,:]+", name.strip().lower()) if w]
    if not words:
        return None
    units = [UNIT_WORDS[w] for w in words if w in UNIT_WORDS]
    named_time = any(w in TIME_WORDS or "time" in w for w in words)
    unit_first = words[0] in UNIT_WORDS and not (len(words) == 1 and words[0] in AMBIGUOUS_ALONE)
    if not (named_time or unit_first):
        return None
    return units[-1] if units else "auto"
