"""Building blocks of the synthetic cohort's signals: per-subject random streams, band-limited and
Ornstein-Uhlenbeck noise, Poisson event times, kernels placed at events, and fast linear resampling and table
look-up for the 256-Hz waveforms.

Every function takes its random generator as an argument (or makes it from the seed and ID), so a subject's
signals depend only on (seed, ID), never on the order in which subjects are written.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np


def subject_rng(seed: int, subject_id: str, stream: int = 0) -> np.random.Generator:
    """An RNG that depends only on (seed, subject ID, stream), so subjects are independent of order/workers.
    Digit IDs seed with their number (MESA's files stay as they were); other IDs with a hash of their text."""
    sid = str(subject_id)
    if sid.isascii() and sid.isdigit():
        key = int(sid)
    else:
        key = int.from_bytes(hashlib.sha256(sid.encode()).digest()[:8], "little")
    return np.random.default_rng([int(seed), key, int(stream)])


def smooth(x: np.ndarray, sigma_samples: float) -> np.ndarray:
    """`x` smoothed with a Gaussian of `sigma_samples` samples (edges: the nearest value repeated)."""
    from scipy.ndimage import gaussian_filter1d

    return gaussian_filter1d(np.asarray(x, dtype=float), sigma_samples, mode="nearest")


def band_noise(rng: np.random.Generator, n: int, fs: float, lo: float | None, hi: float) -> np.ndarray:
    """Unit-variance Gaussian noise band-limited to [lo, hi] Hz (lo None: low-pass)."""
    from scipy.signal import butter, sosfilt

    if lo is None:
        sos = butter(2, hi, btype="lowpass", fs=fs, output="sos")
    else:
        sos = butter(2, (lo, hi), btype="bandpass", fs=fs, output="sos")
    x = sosfilt(sos, rng.standard_normal(n + int(20 * fs)))[int(20 * fs):]  # drop the filter's settling
    return x / (x.std() + 1e-12)


def ou_process(rng: np.random.Generator, n: int, fs: float, tau_s: float, sd: float) -> np.ndarray:
    """Ornstein-Uhlenbeck (AR(1)) process with time constant tau_s and stationary sd, started stationary."""
    from scipy.signal import lfilter

    a = math.exp(-1.0 / (fs * tau_s))
    w = rng.standard_normal(n) * sd * math.sqrt(1 - a * a)
    w[0] = rng.standard_normal() * sd
    return lfilter([1.0], [1.0, -a], w)


def poisson_events(rng: np.random.Generator, rate_per_s: np.ndarray, fs: float) -> np.ndarray:
    """Onset times (s) of a Poisson process whose rate (events/s) is given on a grid at fs."""
    hits = rng.random(rate_per_s.size) < rate_per_s / fs
    return np.flatnonzero(hits) / fs


def add_kernels(n: int, fs: float, onsets_s: np.ndarray, amps: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Sum of `kernel` (sampled at fs) placed at each onset with its amplitude, on a grid of n samples."""
    from scipy.signal import oaconvolve

    impulses = np.zeros(n)
    np.add.at(impulses, np.minimum((onsets_s * fs).astype(np.int64), n - 1), amps)
    return oaconvolve(impulses, kernel)[:n]


def surge_kernel(fs: float, rise_s: float, decay_s: float, length_s: float) -> np.ndarray:
    """A rise-then-decay bump with peak 1 (difference-of-exponentials shape)."""
    t = np.arange(int(length_s * fs)) / fs
    k = (1 - np.exp(-t / rise_s)) * np.exp(-t / decay_s)
    return k / k.max()


def resample(x: np.ndarray, fs_in: int, fs_out: int, first: int = 0, count: int | None = None) -> np.ndarray:
    """`x` (sampled at fs_in from t = 0) linearly interpolated at samples first .. first + count - 1 of an fs_out
    grid (all of it by default: x.size * fs_out // fs_in samples); past the last input sample the value is held.
    The values of np.interp(i / fs_out, k / fs_in, x); when fs_out is a multiple of fs_in, several times faster
    (each input interval is filled in one broadcast step instead of searching for every output sample)."""
    count = x.size * fs_out // fs_in - first if count is None else count
    if fs_out % fs_in:
        return np.interp(np.arange(first, first + count) / fs_out, np.arange(x.size) / fs_in, x)
    factor = fs_out // fs_in
    k0, k1 = first // factor, -(-(first + count) // factor)
    a = x[k0:k1]
    b = x[np.minimum(np.arange(k0 + 1, k1 + 1), x.size - 1)]
    fine = (a[:, None] + (b - a)[:, None] * (np.arange(factor) / factor)).ravel()
    return fine[first - k0 * factor:][:count]


def lookup(table: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """`table` linearly interpolated at fractional indices `pos`; 0 outside [0, table.size - 1]. (np.interp on
    a uniform grid, without its search.)"""
    inside = (pos >= 0) & (pos <= table.size - 1)
    p = np.where(inside, pos, 0.0)
    k = np.minimum(p.astype(np.int64), table.size - 2)
    a = table[k]
    return np.where(inside, a + (table[k + 1] - a) * (p - k), 0.0)


def last_onset(onsets: np.ndarray, first: int, count: int) -> np.ndarray:
    """For samples first .. first + count - 1: the index of the last of the sorted integer `onsets` at or
    before each sample (np.searchsorted(onsets, i, side="right") - 1), found by counting onsets per sample."""
    lo, hi = np.searchsorted(onsets, (first, first + count))
    return lo - 1 + np.cumsum(np.bincount(onsets[lo:hi] - first, minlength=count))
