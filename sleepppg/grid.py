"""A PPG recording on a uniform time grid (`Recording`): rates measured from time stamps, missing data (NaN/inf,
saturated integer samples, time gaps) bridged by interpolation up to `max_gap_s` (30 s) and kept as NaN gaps
beyond, and the rate checks every reader of `sleepppg.formats`, `sleepppg.tables` and `sleepppg.dreamt` shares.

Missing data. NaN/inf samples, saturated integer samples (an integer signal at a rail of its range, e.g.
32767 or -32768 for 16 bits) and time gaps are missing, not signal. A missing stretch up to `max_gap_s`
(default 30 s) is bridged by linear interpolation; a longer one stays a gap: its samples are NaN on the grid,
and preprocess_signals marks the 30-s epochs it touches (inference does not stage them; a
DREAMT night with such a gap is a bad subject). Stamps that go back by more than one sampling step (a clock that
restarts or jumps back) are refused (`check_stamps_rise`): sorting them would average two stretches into one.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from sleepppg.errors import BadRecordingError

MIN_FS = 16.0  # Hz: the PPG low-pass is at 8 Hz (SleepPPG-Net), so 16 Hz is the lowest rate that holds it
MAX_STAMP_FS = 1000.0  # Hz: time stamps giving more than 1 kHz are in another unit (no PPG is sampled faster)
TIME_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}  # unit -> seconds
TIME_UNIT_WORDS = {"us": "microseconds", "ms": "milliseconds", "s": "seconds", "min": "minutes", "h": "hours",
                   "d": "days"}
MAX_GAP_S = 30.0  # s: missing stretches up to this are interpolated; longer ones stay gaps (one epoch)
RATE_SNAP_TOLERANCE = 1e-3  # a measured rate within 0.1% of a whole number of Hz is that number
RATE_MISMATCH_TOLERANCE = 0.05  # a measured rate more than 5% off the declared/nominal one is an error
MAX_SPAN_H = 48.0  # h: time stamps spanning more than this are not one night (a stray or corrupt stamp)
REGULAR_STEP_FACTOR = 1.5  # steps up to 1.5x the median step are ordinary sampling (not gaps) for the rate
INTEGER_WIDTHS = (8, 10, 12, 14, 16, 24, 32)  # ADC widths whose rails count as saturation


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


def check_stamps_rise(t_s: np.ndarray, what: str) -> None:
    """Refuse time stamps (seconds, in file order) that go back by more than one sampling step: a clock that
    restarts at 0 or jumps backwards half-way makes two stretches of one table, and sorting them would
    interleave (average) the two into half a night. A step back within one sampling step (the median positive
    step) is jitter of rows written slightly out of order, sorted by `to_uniform_grid`.

    Raises:
        BadRecordingError 'stamps_go_back' naming the first data row (1-based) where the clock goes back.
    """
    steps = np.diff(t_s)
    positive = steps[steps > 0]
    if positive.size == 0 or not (steps < 0).any():
        return
    back = np.flatnonzero(steps < -np.median(positive))
    if back.size:
        i = int(back[0]) + 1
        raise BadRecordingError(f"{what} goes back at data row {i + 1}, from {t_s[i - 1]:g} s to {t_s[i]:g} s: the "
                                "clock restarts or jumps backwards, so the table is not "
                                "one continuous recording; split it at that row", kind="stamps_go_back")


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


def check_stamp_rate(fs: float, column: str, unit: str | None, path: Path, n_duplicated: int = 0,
                     guessed: bool = False) -> None:
    """The rate a time column gives must lie in 16 Hz - 1 kHz, in one reading of its unit.

    Args:
        unit: how the numbers were read (a key of TIME_UNITS_S); None for date-times and clock times.
        guessed: the header states no unit (seconds or milliseconds were taken from the step).
    Raises:
        BadRecordingError 'time_unit' for a unit mistake, naming the column, the rate and the unit that fits:
        a rate above 1 kHz, one that another unit would bring into the range, or (a guessed unit) one where
        two units both give a PPG rate. 'low_sampling_rate' for any other rate below 16 Hz (with the count of
        repeated stamps when the column's resolution is too coarse).
    """
    factor = TIME_UNITS_S.get(unit or "s", 1.0)
    fits = [] if unit is None else [f"{TIME_UNIT_WORDS[u]} ({fs * factor / f:.4g} Hz)" for u, f in
                                    TIME_UNITS_S.items() if u != unit and MIN_FS <= fs * factor / f <= MAX_STAMP_FS]
    read_as = f" read as {TIME_UNIT_WORDS[unit]}" if unit else ""
    if MIN_FS <= fs <= MAX_STAMP_FS:
        if guessed and fits:
            raise BadRecordingError(f"{path.name}: time column {column!r} states no unit: as {TIME_UNIT_WORDS[unit]} "
                                    f"it gives {fs:.4g} Hz, as {' or '.join(fits)}; name the unit in its header "
                                    "(e.g. time_s, time_min)", kind="time_unit")
        return
    if fits or fs > MAX_STAMP_FS:
        hint = (f"; as {' or '.join(fits)} it would be a PPG rate: name the unit in the header (e.g. time_min, "
                "'time (ms)')" if fits else "")
        raise BadRecordingError(f"{path.name}: time column {column!r}{read_as} gives {fs:.4g} Hz, outside "
                                f"{MIN_FS:g} Hz - {MAX_STAMP_FS:g} Hz: a unit mistake{hint}", kind="time_unit")
    repeats = (f" ({n_duplicated} stamps repeat the one before: the column's resolution is too coarse)"
               if n_duplicated else "")
    raise BadRecordingError(f"{path.name}: sampled at {fs:.4g} Hz by time column {column!r}{repeats}; PPG needs "
                            f"at least {MIN_FS:g} Hz", kind="low_sampling_rate")


def filled_points(t_s: np.ndarray, x: np.ndarray, fs: float, max_gap_s: float = MAX_GAP_S) -> int:
    """Grid points `to_uniform_grid(t_s, x, fs, max_gap_s)` fills by interpolation rather than from a sample:
    those inside a hole between two kept (non-NaN) samples wider than 1.5 steps and at most `max_gap_s`, and
    those before the first or after the last kept sample within `max_gap_s` of it. Longer holes stay gaps
    (NaN) and are not counted."""
    t_s = np.asarray(t_s, dtype=np.float64)
    t_k = np.unique(t_s[~np.isnan(x)])
    if t_k.size == 0:
        return 0
    t_first, t_last, eps = float(t_s.min()), float(t_s.max()), 1e-6
    steps = np.diff(t_k)
    hole = (steps > REGULAR_STEP_FACTOR / fs) & (steps <= max_gap_s)
    lo, hi = (t_k[:-1][hole] - t_first) * fs, (t_k[1:][hole] - t_first) * fs
    n = int(np.sum(np.ceil(hi - eps) - np.floor(lo + eps) - 1))
    if 0 < t_k[0] - t_first <= max_gap_s:
        n += math.ceil((t_k[0] - t_first) * fs - eps)
    if 0 < t_last - t_k[-1] <= max_gap_s:
        n += math.floor((t_last - t_first) * fs + eps) - math.floor((t_k[-1] - t_first) * fs + eps)
    return n
