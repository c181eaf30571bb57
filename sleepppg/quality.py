"""Signal quality of a night's preprocessed PPG, and the warnings a staged night gets when it looks wrong (the
night is still staged).

- Flat and clipped shares (`ppg_quality`): samples where the signal does not move, and samples at the
  +/-3 SD clip of preprocessing.
- Pulse (`epoch_pulse`): whether each 30-s epoch holds a pulse wave, i.e. whether the signal is a PPG at all.
  A PPG's power lies in the cardiac fundamental (30-200 bpm) and its second harmonic; white noise has no
  periodicity; an ECG (an `EKG` or `II` channel taken for the PPG) repeats with the heart beat too, but its
  narrow QRS spikes spread the power over many harmonics up to the 8-Hz low-pass of preprocessing.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from sleepppg.constants import TARGET_FS

FLAT_STEP_SD = 1e-3  # a z-scored PPG "does not move" when a 34.13-Hz step is below this (a pulse moves ~0.1-0.5)
FLAT_RUN_S = 2.0  # a flat stretch shorter than about two beats is not counted
MAX_FLAT_SHARE = 0.1  # more than 10% (1 h of a 10-h night) flat: warned (extraction refuses a night over 50% flat)
MAX_CLIPPED_SHARE = 0.02  # more than 2% at the +/-3 SD clip (a Gaussian puts 0.27% beyond 3 SD)

# Pulse, per epoch. The shares quoted are epoch medians measured on sleepppg.synthetic nights (preprocessed as
# extraction does): PPG, its EKG channel taken for the PPG, and white noise.
PULSE_BAND_HZ = (0.5, 8.0)  # the cardiac fundamental (>= 30 bpm) and harmonics up to preprocessing's low-pass
PULSE_RATE_BPM = (30.0, 200.0)  # beat lags searched: 0.3-2 s
MIN_PERIODICITY = 0.5  # autocorrelation peak at the beat lag: PPG ~0.9, ECG ~0.6, white noise ~0.1
MAX_HARMONIC_SHARE = 0.3  # band power above 2.5 x the pulse rate (3rd harmonic on): PPG ~0.1, ECG 0.5-0.8
MIN_PULSE_SHARE = 0.5  # fewer recorded epochs with a pulse: "does not look like a PPG", warned
MIN_ECG_LIKE_SHARE = 0.25  # ...and an ECG named as the cause from this share of ECG-like epochs (PPG, noise: < 2%)


@dataclasses.dataclass(frozen=True)
class EpochPulse:
    """Pulse measures of each 30-s epoch (`epoch_pulse`), arrays of shape (n_windows,).

    periodicity_W: highest peak of the autocorrelation (band 0.5-8 Hz) at a lag of 0.3-2 s, 0 without a peak
        (flat, or no repetition); 1 = a perfectly repeating wave.
    harmonic_share_W: share of the 0.5-8 Hz power above 2.5 x rate_bpm_W (a smooth pulse wave has little).
    rate_bpm_W: 60 / the peak's lag (parabolic interpolation), beats per minute; NaN without a peak.
    """

    periodicity_W: np.ndarray
    harmonic_share_W: np.ndarray
    rate_bpm_W: np.ndarray

    @property
    def pulse_W(self) -> np.ndarray:
        """A pulse: the epoch repeats at 30-200 bpm and its power lies in the fundamental and second harmonic."""
        return (self.periodicity_W >= MIN_PERIODICITY) & (self.harmonic_share_W <= MAX_HARMONIC_SHARE)

    @property
    def ecg_like_W(self) -> np.ndarray:
        """ECG-like: the epoch repeats at 30-200 bpm but with narrow peaks (power spread over many harmonics)."""
        return (self.periodicity_W >= MIN_PERIODICITY) & (self.harmonic_share_W > MAX_HARMONIC_SHARE)


def epoch_pulse(ppg_WS: np.ndarray) -> EpochPulse:
    """Pulse measures of each window of a preprocessed PPG (34.13 Hz, any scale: every measure is normalised per
    window), vectorised over windows: a 1,200-window night takes ~0.03 s.

    Each window's mean is removed; its power spectrum (zero-padded to twice its length, so the autocorrelation
    does not wrap around) is kept over PULSE_BAND_HZ; the inverse transform is the window's autocorrelation in
    that band, normalised to 1 at lag 0. Its highest local maximum at a lag inside PULSE_RATE_BPM is the
    periodicity; that lag is the beat.
    """
    from scipy import fft

    x_WS = np.asarray(ppg_WS, dtype=np.float32)  # float32 transforms: 10x faster than float64, ample precision
    n_w, n_s = x_WS.shape
    if n_w == 0:
        return EpochPulse(np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32))
    spectrum = fft.rfft(x_WS - x_WS.mean(axis=1, keepdims=True), 2 * n_s, axis=1)
    freq = np.fft.rfftfreq(2 * n_s, 1 / TARGET_FS).astype(np.float32)
    in_band = (freq >= PULSE_BAND_HZ[0]) & (freq <= PULSE_BAND_HZ[1])
    power_WF = np.where(in_band, spectrum.real ** 2 + spectrum.imag ** 2, np.float32(0.0))
    del spectrum
    band_W = power_WF.sum(axis=1)
    acf_WL = fft.irfft(power_WF, axis=1)[:, :n_s]
    moving_W = acf_WL[:, 0] > 1e-9 * n_s  # a constant window (flat, zero padding) has no band power
    acf_WL = acf_WL / np.where(moving_W, acf_WL[:, 0], 1.0)[:, None]
    lo = int(np.floor(60.0 / PULSE_RATE_BPM[1] * TARGET_FS))  # shortest lag, samples (10 at 200 bpm)
    hi = int(np.ceil(60.0 / PULSE_RATE_BPM[0] * TARGET_FS))  # longest lag (69 at 30 bpm)
    mid = acf_WL[:, lo:hi + 1]
    left, right = acf_WL[:, lo - 1:hi], acf_WL[:, lo + 1:hi + 2]
    peak = np.where((mid >= left) & (mid > right) & moving_W[:, None], mid, -np.inf)
    k_W = peak.argmax(axis=1)
    rows = np.arange(n_w)
    has_peak = np.isfinite(peak[rows, k_W])
    periodicity_W = np.where(has_peak, np.maximum(peak[rows, k_W], 0.0), 0.0)
    # the peak's lag to a fraction of a sample (parabola through it and its neighbours)
    y0, y1, y2 = left[rows, k_W], mid[rows, k_W], right[rows, k_W]
    curvature = y0 - 2 * y1 + y2
    shift = np.where(curvature < 0, 0.5 * (y0 - y2) / np.where(curvature < 0, curvature, -1.0), 0.0)
    lag_W = lo + k_W + np.clip(shift, -0.5, 0.5)
    rate_bpm_W = np.where(has_peak, 60.0 * TARGET_FS / lag_W, np.nan)
    above_W = freq[None, :] > 2.5 * np.where(has_peak, rate_bpm_W, PULSE_RATE_BPM[1])[:, None] / 60.0
    harmonic_W = (power_WF * above_W).sum(axis=1) / np.where(band_W > 0, band_W, 1.0)
    return EpochPulse(periodicity_W, harmonic_W, rate_bpm_W)


def ppg_quality(ppg_WS: np.ndarray, n_recorded: int, gap_epochs: Sequence[int] = (),
                pulse: EpochPulse | None = None) -> dict:
    """Signal-quality figures of a night's preprocessed PPG (z-scored, 34.13 Hz), over its recorded windows
    outside the gaps in the recording (`gap_epochs`: zero-filled, not staged, so neither flat signal nor
    epochs without a pulse).

    - flat_share: share of the samples lying in runs of at least FLAT_RUN_S seconds where the signal does
      not move (|step| < FLAT_STEP_SD). A PPG held at the ADC limit (saturation), a sensor that fell off, or a
      dropout marker value written in place of the signal all leave such runs; a real pulse wave moves by
      ~0.1-0.5 SD per sample.
    - clipped_share: share of the samples at the night's extreme values: extraction clips the PPG at
      mean +/- 3 SD before z-scoring, so a night with long excursions (saturated bursts) piles samples there;
      a clean night has a handful.
    - pulse_share: share of the epochs with a pulse (`EpochPulse.pulse_W`); None without a recorded epoch.
    - ecg_like_share: share of the epochs that repeat with narrow peaks, as an ECG does (`EpochPulse.ecg_like_W`).
    - pulse_rate_bpm: median pulse rate over the epochs with a pulse, beats per minute (None: no such epoch).

    Args:
        ppg_WS: (n_windows, 1024) preprocessed PPG.
        n_recorded: windows holding the recording (the rest is padding).
        gap_epochs: windows inside a gap of the recording.
        pulse: `epoch_pulse` of ppg_WS[:n_recorded] when the caller has it (else it is computed).
    Returns:
        {"flat_share", "clipped_share", "pulse_share", "ecg_like_share": floats in 0..1 (the last two None
        without a recorded epoch), "pulse_rate_bpm"}.
    """
    keep = np.ones(n_recorded, dtype=bool)
    keep[[e for e in gap_epochs if 0 <= e < n_recorded]] = False
    if not keep.any():  # nothing recorded outside gaps: no epoch to judge
        return {"flat_share": 0.0, "clipped_share": 0.0, "pulse_share": None, "ecg_like_share": None,
                "pulse_rate_bpm": None}
    kept_WS = np.asarray(ppg_WS[:n_recorded][keep], dtype=np.float32)
    pulse = epoch_pulse(ppg_WS[:n_recorded]) if pulse is None else pulse
    pulse_W, ecg_like_W = pulse.pulse_W[keep], pulse.ecg_like_W[keep]
    rate = float(np.median(pulse.rate_bpm_W[keep][pulse_W])) if pulse_W.any() else None
    return {**_flat_and_clipped(kept_WS.reshape(-1)), "pulse_share": float(pulse_W.mean()),
            "ecg_like_share": float(ecg_like_W.mean()), "pulse_rate_bpm": None if rate is None else round(rate, 1)}


def _flat_and_clipped(x: np.ndarray) -> dict:
    if x.size < 2:
        return {"flat_share": 0.0, "clipped_share": 0.0}
    still = np.abs(np.diff(x)) < FLAT_STEP_SD
    # lengths of the runs of "still" steps: a run of k still steps covers k + 1 samples
    edges = np.flatnonzero(np.diff(np.concatenate(([0], still.astype(np.int8), [0]))))
    run_steps = edges[1::2] - edges[0::2]
    long_runs = run_steps[run_steps + 1 >= FLAT_RUN_S * TARGET_FS]
    flat = float((long_runs + 1).sum()) / x.size
    lo, hi = x.min(), x.max()
    clipped = float(np.count_nonzero((x <= lo) | (x >= hi))) / x.size if hi > lo else 0.0
    return {"flat_share": flat, "clipped_share": clipped}


def pulse_warning(quality: dict) -> str | None:
    """The warning of a night whose signal does not look like a PPG (pulse_share under MIN_PULSE_SHARE), naming
    the likely cause: an ECG when at least MIN_ECG_LIKE_SHARE of the epochs are ECG-like, else the larger of the
    flat share and the rest (epochs with no periodic wave at all: noise). None when enough epochs show a
    pulse."""
    share = quality["pulse_share"]
    if share is None or share >= MIN_PULSE_SHARE:
        return None
    ecg, flat = quality["ecg_like_share"], quality["flat_share"]
    noise = max(0.0, 1.0 - share - ecg - flat)
    if ecg >= MIN_ECG_LIKE_SHARE:
        cause = (f"{ecg:.0%} of the epochs repeat with narrow peaks, as an ECG does: an ECG channel such as "
                 f"EKG or II taken for the PPG?")
    elif flat >= noise:
        cause = f"{flat:.0%} of it is flat: sensor off, saturated, or dropout markers"
    else:
        cause = ("no periodic wave at 30-200 bpm in the rest: noise from a sensor off the skin or unplugged, or a "
                 "channel that is not a PPG")
    return f"only {share:.0%} of the recorded epochs show a pulse: the signal does not look like a PPG ({cause})"


def quality_warnings(quality: dict) -> list[str]:
    """Human-readable warnings for the figures of `ppg_quality` beyond their limits (empty when fine)."""
    out = []
    if quality["flat_share"] > MAX_FLAT_SHARE:
        out.append(f"{quality['flat_share']:.0%} of the recorded PPG is flat (saturated at the sensor's limit, "
                   f"sensor off, or dropout markers): the stages there rest on no pulse signal")
    if quality["clipped_share"] > MAX_CLIPPED_SHARE:
        out.append(f"{quality['clipped_share']:.1%} of the recorded PPG sits at the +/-3 SD clip (long "
                   f"saturated or artefact excursions)")
    pulse = pulse_warning(quality)
    if pulse is not None:
        out.append(pulse)
    return out
