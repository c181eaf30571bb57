"""Tests for sleepppg.quality: the flat and clipped shares against a slow obvious count, and the pulse figures
(share of epochs with a pulse, ECG-like share, pulse rate) on the synthetic cohort's PPG and EKG, white noise and
damaged traces, each preprocessed as extraction does."""
from __future__ import annotations

import time

import numpy as np
import pytest
from helpers import synthetic_night

from sleepppg.constants import SAMPLES_PER_WINDOW, TARGET_FS
from sleepppg.preprocessing import preprocess_ppg, to_windows
from sleepppg.quality import (
    FLAT_RUN_S,
    FLAT_STEP_SD,
    MAX_HARMONIC_SHARE,
    MIN_PERIODICITY,
    PULSE_BAND_HZ,
    PULSE_RATE_BPM,
    epoch_pulse,
    ppg_quality,
    pulse_warning,
    quality_warnings,
)

FS = 256  # Hz, synthetic_night's Pleth and EKG


def _quality_slow(x: np.ndarray, step_sd: float, run_samples: float) -> float:
    """ppg_quality's flat share, the obvious way: walk the samples, count runs of still steps."""
    flat, run = 0, 1  # run = samples in the current still run
    for i in range(1, x.size + 1):
        if i < x.size and abs(float(x[i]) - float(x[i - 1])) < step_sd:
            run += 1
            continue
        if run >= run_samples and run > 1:
            flat += run
        run = 1
    return flat / x.size


def _pulse_slow(x: np.ndarray) -> tuple[float, float, float]:
    """epoch_pulse of one window, the obvious way, in float64: band-pass by FFT mask, the circular
    autocorrelation of the zero-padded result by explicit sums, then a walk over the lags for local maxima."""
    n = x.size
    freq = np.fft.rfftfreq(2 * n, 1 / TARGET_FS)
    mask = (freq >= PULSE_BAND_HZ[0]) & (freq <= PULSE_BAND_HZ[1])
    y = np.fft.irfft(np.fft.rfft(x - x.mean(), 2 * n) * mask, 2 * n)
    energy = float(y @ y)
    if energy <= 1e-9 * n * n:
        return 0.0, 0.0, float("nan")
    acf = [float(y @ np.roll(y, -lag)) / energy for lag in range(n)]
    lo = int(np.floor(60 / PULSE_RATE_BPM[1] * TARGET_FS))
    hi = int(np.ceil(60 / PULSE_RATE_BPM[0] * TARGET_FS))
    best, best_lag = -np.inf, None
    for lag in range(lo, hi + 1):
        if acf[lag] >= acf[lag - 1] and acf[lag] > acf[lag + 1] and acf[lag] > best:
            best, best_lag = acf[lag], lag
    if best_lag is None:
        return 0.0, 0.0, float("nan")
    y0, y1, y2 = acf[best_lag - 1], acf[best_lag], acf[best_lag + 1]
    shift = 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2) if y0 - 2 * y1 + y2 < 0 else 0.0
    rate = 60 * TARGET_FS / (best_lag + min(max(shift, -0.5), 0.5))
    power = np.abs(np.fft.rfft(x - x.mean(), 2 * n)) ** 2 * mask
    return max(best, 0.0), float(power[freq > 2.5 * rate / 60].sum() / power.sum()), rate


def preprocessed(raw: np.ndarray) -> np.ndarray:
    """Raw 256-Hz signal -> extraction's windows (every window recorded)."""
    z = preprocess_ppg(raw, FS)
    return to_windows(z, z.size // SAMPLES_PER_WINDOW)


def test_ppg_quality_matches_a_slow_count():
    rng = np.random.default_rng(5)
    x = rng.standard_normal(6 * SAMPLES_PER_WINDOW).astype(np.float32)
    x[100:400] = 1.5  # 300 samples (8.8 s) flat
    x[1000:1040] = -0.2  # 40 samples (1.2 s): shorter than FLAT_RUN_S, not counted
    x[5000:5200] = 0.0
    windows = x.reshape(6, SAMPLES_PER_WINDOW)
    q = ppg_quality(windows, 6)
    expected = _quality_slow(x, FLAT_STEP_SD, FLAT_RUN_S * TARGET_FS)
    assert q["flat_share"] == pytest.approx(expected) and q["flat_share"] == pytest.approx(500 / x.size)
    assert q["clipped_share"] == pytest.approx(2 / x.size)  # one max and one min sample
    assert quality_warnings(q) == [pulse_warning(q)]  # white noise: no pulse, nothing flat or clipped
    nothing = ppg_quality(windows, 0)  # no recorded epoch: nothing to judge, nothing to warn about
    assert nothing == {"flat_share": 0.0, "clipped_share": 0.0, "pulse_share": None, "ecg_like_share": None,
                       "pulse_rate_bpm": None} and quality_warnings(nothing) == []
    clipped = np.clip(x, -1.0, 1.0)  # ~32% of the samples at the clip
    assert quality_warnings(ppg_quality(clipped.reshape(6, -1), 6))[0].endswith("excursions)")
    # a gap in the recording (zero-filled epochs, not staged) is no flat signal
    gapped = windows.copy()
    gapped[2:4] = 0.0
    assert ppg_quality(gapped, 6)["flat_share"] > 1 / 3
    assert ppg_quality(gapped, 6, gap_epochs=[2, 3])["flat_share"] == pytest.approx(500 / (4 * 1024))


def test_epoch_pulse_matches_a_slow_version_and_known_rates():
    rng = np.random.default_rng(3)
    t = np.arange(SAMPLES_PER_WINDOW) / TARGET_FS
    rates = [36.0, 72.0, 150.0, 190.0]
    pulses = [np.sin(2 * np.pi * r / 60 * t) + 0.3 * np.sin(4 * np.pi * r / 60 * t) for r in rates]
    spikes = (np.sin(2 * np.pi * 1.2 * t) > 0.995).astype(float)  # one sample in ~30 high, at 72 bpm
    windows = np.stack([*pulses, rng.standard_normal(t.size), np.full(t.size, 0.7), spikes])
    got = epoch_pulse(windows.astype(np.float32))
    for w, x in enumerate(windows):
        periodicity, harmonic, rate = _pulse_slow(x.astype(np.float64))
        assert got.periodicity_W[w] == pytest.approx(periodicity, abs=2e-3)
        assert got.harmonic_share_W[w] == pytest.approx(harmonic, abs=2e-3)
        assert got.rate_bpm_W[w] == pytest.approx(rate, rel=1e-3, nan_ok=True)
    assert got.rate_bpm_W[:4] == pytest.approx(rates, rel=0.02)  # the beat lag, to a fraction of a sample
    assert got.pulse_W.tolist() == [True, True, True, True, False, False, False]
    assert got.periodicity_W[5] == 0 and np.isnan(got.rate_bpm_W[5])  # a constant window has no beat
    # narrow spikes at 72 bpm (an ECG's R waves): periodic, but the power is spread over many harmonics
    assert got.periodicity_W[6] >= MIN_PERIODICITY and got.harmonic_share_W[6] > MAX_HARMONIC_SHARE
    assert got.ecg_like_W.tolist() == [False] * 6 + [True]
    assert epoch_pulse(np.zeros((0, SAMPLES_PER_WINDOW), np.float32)).pulse_W.shape == (0,)


def test_a_full_night_is_measured_in_well_under_a_second():
    night = np.random.default_rng(0).standard_normal((1200, SAMPLES_PER_WINDOW)).astype(np.float32)
    ppg_quality(night[:2], 2)  # imports and FFT plans
    seconds = []
    for _ in range(3):  # the best of three: a busy test machine slows one call, not the measure
        t0 = time.perf_counter()
        ppg_quality(night, 1200)
        seconds.append(time.perf_counter() - t0)
    assert min(seconds) < 0.5  # ~0.03 s on one core


def test_synthetic_ppg_has_a_pulse_in_nearly_every_epoch():
    ppg, _, heart_rate = synthetic_night()
    q = ppg_quality(preprocessed(ppg), 80)
    assert q["pulse_share"] >= 0.85 and q["ecg_like_share"] <= 0.05
    assert q["pulse_rate_bpm"] == pytest.approx(heart_rate, abs=2.0)
    assert quality_warnings(q) == []


def test_an_ecg_white_noise_and_damaged_traces_get_their_figure_and_warning():
    ppg, ecg, _ = synthetic_night()
    n = ppg.size
    ecg_q = ppg_quality(preprocessed(ecg), 80)  # an EKG channel taken for the PPG
    assert ecg_q["pulse_share"] <= 0.1 and ecg_q["ecg_like_share"] >= 0.5
    assert quality_warnings(ecg_q) == [pulse_warning(ecg_q)]
    assert "does not look like a PPG" in pulse_warning(ecg_q) and "ECG" in pulse_warning(ecg_q)

    noise_q = ppg_quality(preprocessed(np.random.default_rng(1).standard_normal(n)), 80)
    assert noise_q["pulse_share"] <= 0.02 and noise_q["ecg_like_share"] <= 0.02 and noise_q["pulse_rate_bpm"] is None
    assert quality_warnings(noise_q) == [pulse_warning(noise_q)] and "noise" in pulse_warning(noise_q)

    flat = ppg.copy()
    flat[int(0.3 * n):int(0.7 * n)] = np.median(ppg)  # 40% held at mid-range (a sensor off, a held value)
    flat_q = ppg_quality(preprocessed(flat), 80)
    assert flat_q["flat_share"] == pytest.approx(0.4, abs=0.01)
    assert flat_q["pulse_share"] == pytest.approx(0.6 * 0.95, abs=0.07)  # the pulse where it is not flat
    assert len(quality_warnings(flat_q)) == 1 and "40% of the recorded PPG is flat" in quality_warnings(flat_q)[0]

    railed = ppg.copy()
    railed[int(0.5 * n):int(0.7 * n)] = 8 * ppg.max()  # 20% at an ADC rail far above the pulse
    rail_q = ppg_quality(preprocessed(railed), 80)
    assert rail_q["flat_share"] == pytest.approx(0.2, abs=0.01)
    assert rail_q["pulse_share"] == pytest.approx(0.8 * 0.95, abs=0.08)
    assert len(quality_warnings(rail_q)) == 1 and "20% of the recorded PPG is flat" in quality_warnings(rail_q)[0]

    # a night mostly flat: the warning names the flat trace as the cause
    mostly_flat = ppg.copy()
    mostly_flat[int(0.25 * n):] = np.median(ppg)
    assert "flat" in pulse_warning(ppg_quality(preprocessed(mostly_flat), 80))
