"""The signal values of the processed files, checked per subject against what extraction can write.

Extraction (sleepppg.preprocessing) clips each night at mean +/- 3 SD and z-scores the whole recording, then
keeps its first W windows, zero-padded, and zeroes the windows of a gap. Over the windows of a night that hold
signal (any non-zero sample) the values therefore have a mean near 0 and an SD near 1. For a night cut at 10 h
from a recording of length L, the SD over the kept part is at most sqrt(L / 10 h) (the kept samples carry at
most the whole night's sum of squares), so SD 4 needs a 160-h recording; an SD below 0.25 needs a first 10 h
four times quieter than the rest of the night. A night outside these bounds was not written by extraction: a
rescaled copy (values x 250), a constant night (SD 0), an offset one (mean beyond +/-1).

Two ways to read the values, one result:
- `scan_values`: every row, in blocks of one night (a few MB of memory for any file size): what
  verify_mesa_outputs.py runs;
- `sample_values`: `SAMPLE_ROWS` scored rows per subject, spread over the night, and the whole night only when
  none of them holds signal (an all-zero night): training's pre-flight check, about 1/75 of the reads of a
  full scan of 1,200-window nights.
`high_frequency_share` is the PPG's power above the 8-Hz low-pass, a check of the filter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sleepppg.constants import IGNORE_INDEX

MAX_ABS_SIGNAL = 1000.0  # no sample of a z-scored night after a 3-SD clip comes near this; beyond is corruption
SD_RANGE = (0.25, 4.0)  # SD of a night's values over its windows with signal (bounds: the module docstring)
MAX_ABS_MEAN = 1.0  # |mean| of a night's values over its windows with signal (z-scored: near 0)
SAMPLE_ROWS = 16  # scored rows read per subject by `sample_values` (16 x 1,024 values: SD within a few %)
BLOCK_ROWS = 1200  # rows per read of `scan_values`: one night, 4.9 MB of float32
HIGH_FREQ_HZ = 8.0  # PPG low-pass cut-off (Chebyshev II, 8 Hz, in extraction)
HIGH_FREQ_WARN = 0.01  # report a warning when more than 1% of PPG power lies above 8 Hz
ENERGY_WINDOWS = 200  # windows sampled (evenly over the file) for the spectrum


@dataclass
class Values:
    """Per-subject counts and sums over the rows read."""

    n_subjects: int
    nonfinite_S: np.ndarray = field(init=False)  # (S,) NaN/inf samples in the rows read
    absurd_S: np.ndarray = field(init=False)  # (S,) finite samples beyond +/-MAX_ABS_SIGNAL
    rows_with_signal: np.ndarray = field(init=False)  # (S,) rows holding a non-zero finite sample
    sum_S: np.ndarray = field(init=False)  # (S,) float64 sum of those rows' values
    sumsq_S: np.ndarray = field(init=False)  # (S,) float64 sum of their squares

    def __post_init__(self) -> None:
        self.nonfinite_S = np.zeros(self.n_subjects, dtype=np.int64)
        self.absurd_S = np.zeros(self.n_subjects, dtype=np.int64)
        self.rows_with_signal = np.zeros(self.n_subjects, dtype=np.int64)
        self.sum_S = np.zeros(self.n_subjects)
        self.sumsq_S = np.zeros(self.n_subjects)

    def add(self, block_RS: np.ndarray, subject_R: np.ndarray) -> None:
        """Count a block of rows (R, samples) that belong to the subjects `subject_R` (indices 0..S-1)."""
        block_RS = np.asarray(block_RS, dtype=np.float64)
        finite_RS = np.isfinite(block_RS)
        clean_RS = np.where(finite_RS, block_RS, 0.0)
        self.nonfinite_S += np.bincount(subject_R, weights=(~finite_RS).sum(axis=1),
                                        minlength=self.n_subjects).astype(np.int64)
        self.absurd_S += np.bincount(subject_R, weights=(np.abs(clean_RS) > MAX_ABS_SIGNAL).sum(axis=1),
                                     minlength=self.n_subjects).astype(np.int64)
        signal_R = np.any(clean_RS != 0, axis=1)
        keep = subject_R[signal_R]
        self.rows_with_signal += np.bincount(keep, minlength=self.n_subjects)
        self.sum_S += np.bincount(keep, weights=clean_RS[signal_R].sum(axis=1), minlength=self.n_subjects)
        self.sumsq_S += np.bincount(keep, weights=(clean_RS[signal_R] ** 2).sum(axis=1), minlength=self.n_subjects)

    def silent(self) -> np.ndarray:
        """Indices of the subjects without a row holding signal (an all-zero night)."""
        return np.flatnonzero(self.rows_with_signal == 0)

    def not_z_scored(self, samples_per_row: int) -> list[tuple[int, str]]:
        """(subject index, what is wrong) for each night with signal whose values are not z-scored."""
        n_S = np.maximum(self.rows_with_signal * samples_per_row, 1)
        mean_S = self.sum_S / n_S
        sd_S = np.sqrt(np.maximum(self.sumsq_S / n_S - mean_S ** 2, 0.0))
        problems = []
        for i in np.flatnonzero(self.rows_with_signal > 0):
            mean, sd = float(mean_S[i]), float(sd_S[i])
            if sd < 1e-6:
                problems.append((int(i), f"constant (SD 0, every value {mean:.4g})"))
            elif not SD_RANGE[0] <= sd <= SD_RANGE[1] or abs(mean) > MAX_ABS_MEAN:
                problems.append((int(i), f"mean {mean:.3g}, SD {sd:.3g}"))
        return problems


def high_frequency_share(windows_WS: np.ndarray, fs: float, cutoff_hz: float = HIGH_FREQ_HZ) -> float:
    """Share of total power above `cutoff_hz`, from the mean periodogram of non-constant windows (NaN if none)."""
    from scipy.signal import welch

    windows_WS = windows_WS[windows_WS.std(axis=1) > 0]
    if windows_WS.size == 0:
        return float("nan")
    freqs, psd = welch(windows_WS, fs=fs, nperseg=min(512, windows_WS.shape[1]), axis=1)
    psd = psd.mean(axis=0)
    return float(psd[freqs > cutoff_hz].sum() / psd.sum())


def _subject_rows(inverse_N: np.ndarray, n_subjects: int) -> list[np.ndarray]:
    """Each subject's rows (ascending), from the subject index of every row."""
    order = np.argsort(inverse_N, kind="stable")
    return np.split(order, np.cumsum(np.bincount(inverse_N, minlength=n_subjects))[:-1])


def scan_values(ds, inverse_N: np.ndarray, n_subjects: int, rows_mask_N: np.ndarray | None = None,
                block: int = BLOCK_ROWS) -> Values:
    """Every row of the signal dataset `ds` (N, samples) read in blocks; `inverse_N` gives each row's
    subject, `rows_mask_N` (optional) the rows that count (e.g. those with real ECG)."""
    values = Values(n_subjects)
    for start in range(0, ds.shape[0], block):
        rows = slice(start, min(start + block, ds.shape[0]))
        block_RS, subject_R = ds[rows], inverse_N[rows]
        if rows_mask_N is not None:
            block_RS, subject_R = block_RS[rows_mask_N[rows]], subject_R[rows_mask_N[rows]]
        values.add(block_RS, subject_R)
    return values


def sample_values(ds, inverse_N: np.ndarray, n_subjects: int, labels_N: np.ndarray,
                  rows_mask_N: np.ndarray | None = None, per_subject: int = SAMPLE_ROWS) -> Values:
    """`per_subject` scored rows of each subject (labels not -1), evenly spread over its night, read from
    `ds`; a subject none of whose sampled rows holds signal has all its rows read, so an all-zero night is
    told from a night that is silent where it was sampled."""
    values = Values(n_subjects)
    counting_N = labels_N != IGNORE_INDEX
    if rows_mask_N is not None:
        counting_N = counting_N & rows_mask_N
    for i, rows in enumerate(_subject_rows(inverse_N, n_subjects)):
        every = rows if rows_mask_N is None else rows[rows_mask_N[rows]]
        scored = every[counting_N[every]]
        if scored.size == 0:  # no scored row (reported by the label checks): its signal is read in full
            scored = every
        if scored.size == 0:
            continue
        pick = np.unique(scored[np.linspace(0, scored.size - 1, min(per_subject, scored.size)).astype(int)])
        before = values.rows_with_signal[i]
        values.add(ds[pick], np.full(pick.size, i))
        rest = np.setdiff1d(every, pick)
        if values.rows_with_signal[i] == before and rest.size:  # nothing in the sample: read the night to know
            block_RS = ds[int(rest[0]):int(rest[-1]) + 1]  # one slice (the night's rows are one block)
            values.add(block_RS[rest - rest[0]], np.full(rest.size, i))
    return values
