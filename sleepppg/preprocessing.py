"""The paper's preprocessing (Kotzen et al. 2023, as the reference implements it), used by extraction and
inference alike.

PPG: Chebyshev II low-pass (order 8, 40 dB, 8 Hz, zero phase) -> resampled to 34.133 Hz (1,024 samples per
30-s epoch) -> clipped at mean +/- 3 SD -> z-scored. ECG: Butterworth band-pass 0.5-40 Hz (order 4, zero phase)
-> the same resampling, clipping and z-score. Nights become (windows, 1024) float32 arrays, the first 10 h,
zero-padded. `preprocessing_settings` and `file_signature` say when a stored result is still valid.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import numpy as np

from sleepppg.channels import PPG_PATTERNS
from sleepppg.constants import (
    SAMPLES_PER_WINDOW,
    TARGET_FS,
    WINDOW_SECONDS,
    WINDOWS_PER_SUBJECT,
)
from sleepppg.edf import read_edf
from sleepppg.edfplus import bridge_pauses
from sleepppg.errors import BadRecordingError
from sleepppg.grid import MAX_GAP_S

log = logging.getLogger("sleepppg.preprocessing")

# The one preprocessing version: bump it whenever EDF reading, preprocessing, labelling or the part layout
# changes. Extraction's part files and inference's per-night caches built by another version are rebuilt.
PREPROCESSING_VERSION = 3

# PPG: Chebyshev II low-pass, order 8, 40 dB stop band, 8 Hz (SleepPPG-Net, Kotzen et al. 2023)
PPG_FILTER_ORDER = 8
PPG_STOP_DB = 40.0
PPG_CUTOFF_HZ = 8.0
# ECG: Butterworth band-pass, order 4, 0.5-40 Hz (the reference); the upper edge is capped below Nyquist
ECG_FILTER_ORDER = 4
ECG_BAND_HZ = (0.5, 40.0)
ECG_MAX_NYQUIST_FRACTION = 0.99  # as the reference: upper edge at 0.99 x Nyquist when 40 Hz is above it
CLIP_SD = 3.0  # clip at mean +/- 3 SD before z-scoring
ZSCORE_EPS = 1e-8  # as the reference, avoids 0/0 on a constant signal
MAX_NONFINITE_FRACTION = 0.01  # up to 1% NaN/inf samples (short dropouts) are interpolated; more -> bad
# a last epoch short of at most 1 s (the last time stamp's jitter, the grid's rounding) is still a whole epoch
EPOCH_SLACK_SAMPLES = round(TARGET_FS * 1.0)
MAX_FLAT_FRACTION = 0.5  # a PPG whose 30-s segments are constant in more than half the night is "flat"


# ----------------------------------------------------------------------------------------------------------
# Signal preprocessing (Kotzen et al. 2023, as the reference implements it)


def _fs_fraction(fs: float) -> Fraction:
    return Fraction(fs).limit_denominator(1_000_000)


def resampled_length(n_samples: int, fs: float) -> int:
    """Samples at TARGET_FS covering `n_samples` at `fs` (floor of duration x 34.133 Hz, exact arithmetic:
    a 10-h night at 256 Hz gives exactly 1,228,800)."""
    return math.floor(n_samples * Fraction(SAMPLES_PER_WINDOW, WINDOW_SECONDS) / _fs_fraction(fs))


def resample(x: np.ndarray, fs: float, method: str = "linear") -> np.ndarray:
    """Resample `x` (1-D, at `fs` Hz) to TARGET_FS; returns float64 of length `resampled_length`.

    'linear' is the reference's: linear interpolation of the new samples spread evenly over the old index
    range [0, n-1]. 'polyphase' uses scipy.signal.resample_poly with the exact ratio (256 Hz -> up 2, down 15).
    """
    if x.size < 2:
        raise ValueError(f"need at least 2 samples to resample, got {x.size}")
    n_out = resampled_length(x.size, fs)
    if method == "linear":
        # np.interp(new_idx, arange(n), x) written out for a unit-spaced grid: the same arithmetic
        # (x[i] + slope * offset), bit for bit, without np.interp's binary search (2x faster on a night)
        new_idx = np.linspace(0.0, x.size - 1, n_out)
        left = np.minimum(new_idx.astype(np.int64), x.size - 2)
        out = (x[left + 1] - x[left]) * (new_idx - left) + x[left]
        if n_out and new_idx[-1] == x.size - 1:
            out[-1] = x[-1]  # np.interp returns the last sample exactly
        return out
    if method == "polyphase":
        from scipy.signal import resample_poly

        ratio = Fraction(SAMPLES_PER_WINDOW, WINDOW_SECONDS) / _fs_fraction(fs)
        return resample_poly(x, ratio.numerator, ratio.denominator)[:n_out]
    raise ValueError(f"unknown resample method {method!r} (linear or polyphase)")


def clip_zscore(x: np.ndarray) -> np.ndarray:
    """Clip at mean +/- 3 SD, then z-score; float32."""
    mu, sd = x.mean(), x.std()
    clipped = np.clip(x, mu - CLIP_SD * sd, mu + CLIP_SD * sd)
    return ((clipped - clipped.mean()) / (clipped.std() + ZSCORE_EPS)).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _ppg_sos(fs: float) -> np.ndarray:
    from scipy.signal import cheby2

    return cheby2(PPG_FILTER_ORDER, PPG_STOP_DB, PPG_CUTOFF_HZ, btype="lowpass", output="sos", fs=fs)


@functools.lru_cache(maxsize=16)
def _ecg_sos(fs: float) -> np.ndarray:
    from scipy.signal import butter

    high = min(ECG_BAND_HZ[1], ECG_MAX_NYQUIST_FRACTION * fs / 2)
    return butter(ECG_FILTER_ORDER, [ECG_BAND_HZ[0], high], btype="bandpass", output="sos", fs=fs)


def _check_input(signal: np.ndarray, fs: float, min_fs: float, what: str, inclusive: bool = False) -> np.ndarray:
    signal = np.asarray(signal, dtype=np.float64)
    if signal.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {signal.shape}")
    if not (fs > min_fs or (inclusive and fs == min_fs)):
        raise BadRecordingError(f"{what} sampled at {fs} Hz; need {'at least' if inclusive else 'more than'} "
                                f"{min_fs} Hz", kind="low_sampling_rate")
    if signal.size < fs * WINDOW_SECONDS:
        raise BadRecordingError(f"{what} shorter than one 30-s epoch ({signal.size} samples at {fs} Hz)",
                                kind="too_short")
    return signal


def preprocess_ppg(signal: np.ndarray, fs: float, method: str = "linear") -> np.ndarray:
    """PPG -> SleepPPG-Net input: Chebyshev II low-pass (order 8, 40 dB, 8 Hz, zero-phase), resample to
    34.133 Hz, clip at mean +/- 3 SD, z-score.

    Args:
        signal: 1-D raw PPG, any unit, at `fs` Hz (finite values; see `repair_nonfinite`).
        fs: sampling rate in Hz, at least 16 (at exactly 16 Hz nothing lies above the 8-Hz cut-off, so the
            low-pass is skipped).
        method: 'linear' (the reference) or 'polyphase'.
    Returns:
        float32 1-D array of `resampled_length(len(signal), fs)` samples (the whole night, not truncated).
    """
    from scipy.signal import sosfiltfilt

    x = _check_input(signal, fs, 2 * PPG_CUTOFF_HZ, "PPG", inclusive=True)
    if fs > 2 * PPG_CUTOFF_HZ:
        x = sosfiltfilt(_ppg_sos(float(fs)), x)
    return _finite(clip_zscore(resample(x, fs, method)), "PPG")


def preprocess_ecg(signal: np.ndarray, fs: float, method: str = "linear") -> np.ndarray:
    """ECG -> Butterworth band-pass (order 4, 0.5-40 Hz, zero-phase; upper edge capped at 0.99 x Nyquist),
    then the same resample, clip and z-score as `preprocess_ppg`. Returns float32 1-D at 34.133 Hz."""
    from scipy.signal import sosfiltfilt

    x = _check_input(signal, fs, 2 * ECG_BAND_HZ[0] / ECG_MAX_NYQUIST_FRACTION, "ECG")
    return _finite(clip_zscore(resample(sosfiltfilt(_ecg_sos(float(fs)), x), fs, method)), "ECG")


def _finite(x: np.ndarray, what: str) -> np.ndarray:
    """`x` unchanged, or BadRecordingError when filtering overflowed (values near the float64 limit)."""
    if not np.isfinite(x).all():
        raise BadRecordingError(f"{what}: values too large to filter (the result is not finite)", kind="nan_signal")
    return x


def to_windows(x: np.ndarray, n_windows: int = WINDOWS_PER_SUBJECT) -> np.ndarray:
    """Cut a 1-D signal at 34.133 Hz into (n_windows, 1024) float32: truncated, or zero-padded at the end."""
    out = np.zeros(n_windows * SAMPLES_PER_WINDOW, dtype=np.float32)
    n = min(x.size, out.size)
    out[:n] = x[:n]
    return out.reshape(n_windows, SAMPLES_PER_WINDOW)


def repair_nonfinite(x: np.ndarray, what: str) -> np.ndarray:
    """Linearly interpolate NaN/inf samples when they are at most 1% of the signal (short dropouts);
    raise BadRecordingError (kind 'nan_signal') when there are more."""
    bad = ~np.isfinite(x)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return x
    if n_bad > MAX_NONFINITE_FRACTION * x.size:
        raise BadRecordingError(f"{what}: {n_bad} of {x.size} samples are NaN/inf "
                                f"(more than {MAX_NONFINITE_FRACTION:.0%})", kind="nan_signal")
    idx = np.arange(x.size)
    x = x.copy()
    x[bad] = np.interp(idx[bad], idx[~bad], x[~bad])
    return x


def flat_fraction(x: np.ndarray, fs: float) -> float:
    """Share of whole 30-s segments of `x` whose values are all equal (sensor off or saturated); a signal
    shorter than one segment counts as one segment."""
    seg = max(1, int(round(fs * WINDOW_SECONDS)))
    n_seg = max(1, x.size // seg)
    segments = x[:n_seg * seg].reshape(n_seg, -1)
    if segments.size == 0:
        return 1.0
    return float(np.mean(segments.max(axis=1) == segments.min(axis=1)))


def bridge_gaps(x: np.ndarray, fs: float, n_windows: int) -> tuple[np.ndarray, np.ndarray]:
    """Fill the gaps (NaN samples) of a signal by linear interpolation, for filtering, and flag the 30-s
    epochs they touch (those epochs are not staged).

    Returns:
        (float64 signal without NaN, bool (n_windows,) True for an epoch holding any gap sample).
    Raises:
        BadRecordingError 'no_signal' when every sample is missing.
    """
    gap_T = np.isnan(x)
    gap_W = np.zeros(n_windows, dtype=bool)
    if not gap_T.any():
        return x, gap_W
    if gap_T.all():
        raise BadRecordingError("every sample is missing", kind="no_signal")
    idx = np.flatnonzero(gap_T)
    filled = x.copy()
    filled[idx] = np.interp(idx, np.flatnonzero(~gap_T), x[~gap_T])
    epochs = np.unique((idx / (fs * WINDOW_SECONDS)).astype(np.int64))
    gap_W[epochs[epochs < n_windows]] = True
    return filled, gap_W


def preprocess_signals(ppg: np.ndarray, ppg_fs: float, n_windows: int = WINDOWS_PER_SUBJECT,
                       method: str = "linear", ecg: np.ndarray | None = None, ecg_fs: float | None = None,
                       name: str = "", nan_is_gap: bool = False, ppg_what: str = "PPG",
                       ecg_what: str = "ECG") -> dict:
    """The one preprocessing of a recording, whatever its file format: PPG (and ECG) -> model input.

    Args:
        ppg: 1-D raw PPG at `ppg_fs` Hz. NaN/inf samples: up to 1% are interpolated, more make the recording
            bad, unless `nan_is_gap`, where NaN marks gaps (see `bridge_gaps`): bridged for filtering, their
            epochs zeroed and listed in `gap_epochs`; a flat PPG is then judged on the recorded samples alone.
        ecg, ecg_fs: optional ECG; one that is flat or mostly NaN is dropped (has_ecg False), with a warning.
            With `nan_is_gap` its NaN are gaps too (bridged for filtering; its windows of gap epochs zeroed).
        name: the recording's name, for log lines; ppg_what, ecg_what: how messages name the signals (e.g.
            "PPG 'Pleth'", with the channel).
    Returns:
        dict(ppg_windows (n_windows, 1024) float32, ecg_windows (n_windows, 1024) float32 or None, has_ecg,
        n_recorded_windows = epochs holding recorded PPG (at most n_windows; extraction's labels stop there),
        n_whole_windows = whole 30-s epochs of recorded PPG (at most n_windows; inference stages these: a
        trailing part shorter than 29 s is no epoch), filled_samples = NaN/inf PPG samples interpolated
        (at `ppg_fs`; gap samples under `nan_is_gap` are not counted), gap_epochs = sorted epoch
        indices touched by a gap (empty without gaps), ppg_fs, duration_s = the PPG's length in s,
        warnings = list of str: what looked wrong without stopping the night, e.g. a dropped ECG).
    Raises:
        BadRecordingError: 'nan_signal', 'no_signal', 'flat_ppg', 'too_short', 'low_sampling_rate'.
    """
    ppg = np.asarray(ppg, dtype=np.float64)
    gap_W = np.zeros(n_windows, dtype=bool)
    recorded = None
    if nan_is_gap:
        if np.isnan(ppg).any():  # flatness is judged on recorded samples, not on the bridges through gaps
            recorded = ppg[~np.isnan(ppg)]
        ppg, gap_W = bridge_gaps(ppg, ppg_fs, n_windows)
    n_filled = int(np.count_nonzero(~np.isfinite(ppg)))  # short dropouts repair_nonfinite interpolates
    ppg = repair_nonfinite(ppg, ppg_what)
    flat = flat_fraction(ppg if recorded is None else recorded, ppg_fs)
    if flat > MAX_FLAT_FRACTION:
        raise BadRecordingError(f"flat {ppg_what}: {flat:.0%} of 30-s segments are constant", kind="flat_ppg")
    ppg_z = preprocess_ppg(ppg, ppg_fs, method)
    ppg_windows = to_windows(ppg_z, n_windows)
    ppg_windows[gap_W] = 0.0  # gap epochs hold no recorded signal, like the padding
    ecg_windows, warnings = None, []
    if ecg is not None:
        try:
            ecg, ecg_gap_W = np.asarray(ecg, dtype=np.float64), np.zeros(n_windows, dtype=bool)
            ecg_recorded = None
            if nan_is_gap and np.isnan(ecg).any():  # gaps in both signals (an EDF+D's pauses)
                ecg_recorded = ecg[~np.isnan(ecg)]
                ecg, ecg_gap_W = bridge_gaps(ecg, ecg_fs, n_windows)
            ecg = repair_nonfinite(ecg, ecg_what)
            if flat_fraction(ecg if ecg_recorded is None else ecg_recorded, ecg_fs) > MAX_FLAT_FRACTION:
                raise BadRecordingError(f"flat {ecg_what}", kind="flat_ecg")
            ecg_windows = to_windows(preprocess_ecg(ecg, ecg_fs, method), n_windows)
            ecg_windows[gap_W | ecg_gap_W] = 0.0
        except BadRecordingError as err:
            warnings.append(f"ECG not used: {err}")  # logged where the warnings are reported
    return {
        "ppg_windows": ppg_windows,
        "ecg_windows": ecg_windows,
        "has_ecg": ecg_windows is not None,
        "n_recorded_windows": max(1, min(n_windows, math.ceil(ppg_z.size / SAMPLES_PER_WINDOW))),
        "n_whole_windows": max(1, min(n_windows, (ppg_z.size + EPOCH_SLACK_SAMPLES) // SAMPLES_PER_WINDOW)),
        "filled_samples": n_filled,
        "gap_epochs": np.flatnonzero(gap_W).tolist(),
        "ppg_fs": ppg_fs,
        "duration_s": ppg.size / ppg_fs,
        "warnings": warnings,
    }


def preprocess_recording(edf_path: str | os.PathLike, n_windows: int = WINDOWS_PER_SUBJECT,
                         method: str = "linear", ppg_patterns: tuple[str, ...] | list[str] = PPG_PATTERNS,
                         with_ecg: bool = True) -> dict:
    """Read one EDF and turn it into model input with `preprocess_signals` (`with_ecg=False`: PPG only, the
    ECG is neither read nor filtered; PPG-only inference uses this).

    The pauses of an EDF+D are missing data (sleepppg.edfplus.bridge_pauses): up to MAX_GAP_S bridged, longer
    ones gaps (`gap_epochs`: zeroed, not staged).

    Returns:
        `preprocess_signals`'s dict plus ppg_channel (the EDF label used) and gaps ([start_s, duration_s] longer
        than MAX_GAP_S); its warnings include the reader's (record count, trailing bytes, repeated labels, a
        saturated PPG, an unusable ECG) and the pauses of an EDF+D.
    Raises:
        BadRecordingError: reading errors (see `read_edf`) and those of `preprocess_signals`; no other
            exception for anything in the file.
    """
    rec = read_edf(edf_path, ppg_patterns, with_ecg=with_ecg)
    name = Path(edf_path).name
    ppg, ecg, gaps, pause_warnings = bridge_pauses(rec, MAX_GAP_S)  # warnings: logged by the caller's report
    out = preprocess_signals(ppg, rec["ppg_fs"], n_windows, method, ecg, rec["ecg_fs"], name=name,
                             nan_is_gap=bool(gaps), ppg_what=f"PPG {rec['ppg_channel']!r}",
                             ecg_what=f"ECG {rec['ecg_channel']!r}")
    out["ppg_channel"] = rec["ppg_channel"]
    out["gaps"] = gaps
    out["warnings"] = rec["warnings"] + pause_warnings + out["warnings"]
    return out


# ----------------------------------------------------------------------------------------------------------
# One subject -> one part file (runs in worker processes)


def file_signature(path: str | os.PathLike | None) -> dict | None:
    """What identifies a source file cheaply: absolute path, size (bytes) and mtime (ns); None when absent.
    A moved, rewritten or touched file counts as changed."""
    if path is None:
        return None
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return None
    return {"path": str(path.resolve()), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def preprocessing_settings(resample_method: str, ppg_channels: Iterable[str], n_windows: int) -> dict:
    """Every setting a preprocessed night depends on, PREPROCESSING_VERSION included; extraction's part
    files and inference's caches are reused only while this dict is unchanged."""
    return {"version": PREPROCESSING_VERSION, "resample_method": resample_method,
            "ppg_channels": [p.lower() for p in ppg_channels], "n_windows": int(n_windows),
            "samples_per_window": SAMPLES_PER_WINDOW, "target_fs": TARGET_FS}


def input_signature(settings: dict, *paths: str | os.PathLike | None) -> str:
    """One hash of the preprocessing settings (`preprocessing_settings`) and the source files'
    `file_signature`s: equal hashes mean an earlier result for these inputs can be reused."""
    text = json.dumps({"settings": settings, "files": [file_signature(p) for p in paths]}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()
