"""The synthetic night's channels, drawn from its physiology (sleepppg.synthetic.physiology).

PPG pulses and the EKG are synthesised from the same beat times: phase-based and vectorised, 30 minutes at a time,
so a 10-h night takes a few seconds and under 0.5 GB. Each function returns float arrays in the channel's unit
(PPG: Pleth units; EKG: mV; EEG, EOG, EMG: microvolts; respiration: mV) at the channel's rate; the writers clip
them into the EDF's physical range.
"""

from __future__ import annotations

import math

import numpy as np

from sleepppg.synthetic.physiology import ALPHA_UV, DELTA_UV, EMG_UV, EOG_UV, FS_CTRL, stage_curve
from sleepppg.synthetic.signals import band_noise, last_onset, lookup, resample, smooth

FS_ECG = 256  # Hz, MESA EKG
FS_EEG = 256  # Hz, MESA EEG1
FS_RESP = 32  # Hz, MESA Flow/Thor/Abdo/Pos
CHUNK_SECONDS = 1800  # 256-Hz signals are synthesised 30 min at a time to bound temporary memory


def _pulse_table(dicrotic: float, n: int = 1024) -> np.ndarray:
    """One PPG pulse over a beat's phase [0, 1]: a systolic wave that rises faster than it falls (peak at
    0.18 of the beat) + a diastolic (dicrotic) wave; zero at both feet so consecutive beats join smoothly."""
    ph = np.linspace(0, 1, n)
    x = ph / 0.18
    pulse = x ** 3 * np.exp(3 * (1 - x)) + dicrotic * np.exp(-0.5 * ((ph - 0.5) / 0.1) ** 2)
    pulse -= pulse[0] + (pulse[-1] - pulse[0]) * ph  # zero at both feet -> continuous across beats
    return pulse / pulse.max()


def _ecg_table(fs: int) -> tuple[np.ndarray, np.ndarray]:
    """One heartbeat (P, Q, R, S, T waves; mV for a 1-mV R) on a time grid around the R peak."""
    t = np.arange(int(-0.35 * fs), int(0.75 * fs)) / fs
    waves = ((-0.20, 0.025, 0.12), (-0.03, 0.010, -0.12), (0.0, 0.010, 1.0), (0.03, 0.012, -0.25),
             (0.28, 0.050, 0.30))  # (centre s, width s, height)
    beat = sum(h * np.exp(-0.5 * ((t - c) / w) ** 2) for c, w, h in waves)
    return t, beat


def movement_artefact(rng: np.random.Generator, movements: list, duration: int, fs: int) -> np.ndarray:
    """Movement artefact on a fs grid: large band-limited bursts plus baseline jumps that decay slowly."""
    n = duration * fs
    env = np.zeros(n)
    steps = np.zeros(n)
    for on, dur in movements:
        i0, i1 = int(on * fs), int((on + dur) * fs)
        env[i0:i1] = rng.uniform(0.5, 2.5)
        steps[i1 - 1] += rng.normal(0, 1.0)
    env = smooth(env, 0.5 * fs)
    from scipy.signal import lfilter

    a = math.exp(-1 / (20 * fs))  # baseline jumps relax over ~20 s
    baseline = lfilter([1.0], [1.0, -a], steps)
    return env * band_noise(rng, n, fs, 0.3, 4.0) + baseline


def synth_ppg(rng, phys: dict, duration: int, fs: int, artefact_32: np.ndarray) -> np.ndarray:
    """PPG at fs (Pleth units) from the pulse-arrival times; phase-based, in chunks.

    Each sample looks up the beat it falls in, its phase within that beat, and the pulse
    template at that phase, scaled by the beat's amplitude; slow parts (respiratory baseline, wander,
    movement artefacts) are built at FS_RESP and interpolated once.
    """
    tr = phys["traits"]
    t_c = phys["t_ctrl"]
    table = _pulse_table(tr["dicrotic"])
    feet = phys["beats"] + tr["ptt_s"]
    beat_amp = np.interp(feet, t_c, phys["pulse_amp_ctrl"]) * (1 + 0.04 * rng.standard_normal(feet.size))
    # Sentinel beats far outside the night with zero amplitude: no pulse before the first/after the last foot.
    feet = np.r_[feet[0] - 1e6, feet, feet[-1] + 1e6]
    beat_amp = np.r_[0.0, beat_amp[:-1], 0.0, 0.0]
    amp_32 = resample(phys["pulse_amp_ctrl"], FS_CTRL, FS_RESP)
    breathing_c = tr["ppg_baseline"] * np.sin(phys["resp_phase_ctrl"]) * phys["resp_depth_ctrl"]
    wander_c = 0.3 * band_noise(rng, t_c.size, FS_CTRL, None, 0.05)
    slow_32 = amp_32 * (resample(breathing_c + wander_c, FS_CTRL, FS_RESP) + 0.8 * artefact_32)
    noise_sd = tr["ppg_noise"] * tr["ppg_amplitude"]
    onsets = np.ceil(feet * fs).astype(np.int64)  # first sample of each beat: feet[j] <= i / fs
    ppg = np.empty(duration * fs)
    chunk = CHUNK_SECONDS * fs
    for i0 in range(0, ppg.size, chunk):
        n = min(chunk, ppg.size - i0)
        t = np.arange(i0, i0 + n) / fs
        j = last_onset(onsets, i0, n)
        phase = (t - feet[j]) / (feet[j + 1] - feet[j])
        ppg[i0:i0 + n] = (beat_amp[j] * lookup(table, phase * (table.size - 1))
                          + resample(slow_32, FS_RESP, fs, i0, n) + noise_sd * rng.standard_normal(n))
    return ppg


def synth_ecg(rng, phys: dict, duration: int, artefact_32: np.ndarray) -> np.ndarray:
    """EKG at FS_ECG (mV) from the R-peak times: each sample sums the previous and next beat's waveform."""
    tr = phys["traits"]
    t_c = phys["t_ctrl"]
    beats = phys["beats"]
    t_tab, tab = _ecg_table(FS_ECG)
    resp_c = np.sin(phys["resp_phase_ctrl"]) * phys["resp_depth_ctrl"]
    beat_amp = tr["ecg_amplitude"] * (1 + 0.08 * np.interp(beats, t_c, resp_c))  # ECG-derived respiration
    beats = np.r_[-1e6, beats, duration + 1e6]  # zero-amplitude sentinels: every sample has both neighbours
    beat_amp = np.r_[0.0, beat_amp, 0.0]
    slow_32 = 0.08 * resample(resp_c, FS_CTRL, FS_RESP) + 0.3 * artefact_32  # respiratory wander + movement
    onsets = np.floor(beats * FS_ECG).astype(np.int64) + 1  # first sample after each beat: beats[j] < i / FS_ECG
    ecg = np.empty(duration * FS_ECG)
    chunk = CHUNK_SECONDS * FS_ECG
    for i0 in range(0, ecg.size, chunk):
        n = min(chunk, ecg.size - i0)
        t = np.arange(i0, i0 + n) / FS_ECG
        nxt = last_onset(onsets, i0, n) + 1  # the first beat at or after each sample
        out = resample(slow_32, FS_RESP, FS_ECG, i0, n) + tr["ecg_noise"] * rng.standard_normal(n)
        for j in (nxt - 1, nxt):  # the beat before and the beat after each sample
            out += beat_amp[j] * lookup(tab, (t - beats[j] - t_tab[0]) * FS_ECG)
        ecg[i0:i0 + n] = out
    return ecg


def synth_eeg(rng, phys: dict, duration: int) -> np.ndarray:
    """EEG1 at FS_EEG (uV): stage-weighted delta and alpha band noise plus broadband noise."""
    fs_low = 64
    s = phys["traits"]["stage_strength"]
    n_c = phys["t_ctrl"].size
    delta_amp = resample(stage_curve(DELTA_UV, phys["states"], s, n_c), FS_CTRL, fs_low)
    alpha_amp = resample(stage_curve(ALPHA_UV, phys["states"], s, n_c), FS_CTRL, fs_low)
    low = delta_amp * band_noise(rng, delta_amp.size, fs_low, 0.5, 2.0)
    low += alpha_amp * band_noise(rng, delta_amp.size, fs_low, 8.0, 12.0)
    eeg = np.empty(duration * FS_EEG)
    chunk = CHUNK_SECONDS * FS_EEG
    for i0 in range(0, eeg.size, chunk):
        n = min(chunk, eeg.size - i0)
        eeg[i0:i0 + n] = resample(low, fs_low, FS_EEG, i0, n) + 6.0 * rng.standard_normal(n)
    return eeg


def synth_resp(rng, phys: dict, duration: int, artefact_32: np.ndarray) -> dict:
    """Flow, Thor, Abdo (mV) and Pos at FS_RESP from the breathing phase and depth."""
    tr = phys["traits"]
    phase = resample(phys["resp_phase_ctrl"], FS_CTRL, FS_RESP)
    depth = resample(phys["resp_depth_ctrl"], FS_CTRL, FS_RESP) * tr["resp_amplitude"]
    noise = lambda scale: scale * rng.standard_normal(phase.size)  # noqa: E731
    thor = depth * (np.sin(phase) + 0.15 * np.sin(2 * phase)) + 0.2 * artefact_32 + noise(0.02)
    abdo = 0.8 * depth * np.sin(phase - 0.3) + 0.2 * artefact_32 + noise(0.02)
    flow = 1.2 * depth * np.cos(phase) * (1 + 0.2 * np.cos(phase)) + noise(0.03)
    # Body position: changes only with some movements (0 supine ... 3 left, as levels).
    pos = np.zeros(phase.size)
    level = float(rng.integers(0, 4))
    last = 0
    for on, _ in phys["movements"]:
        if rng.random() < 0.15:
            i = int(on * FS_RESP)
            pos[last:i] = level
            level, last = float(rng.integers(0, 4)), i
    pos[last:] = level
    return {"Flow": flow, "Thor": thor, "Abdo": abdo, "Pos": pos}


def synth_extra(rng, phys: dict, duration: int, artefact_32: np.ndarray, resp: dict, hr_1hz: np.ndarray) -> dict:
    """The rest of MESA's montage (full_montage): EOG, chin EMG, two more EEGs, nasal pressure, snore, leg
    EMG, thermistor, oximeter status and a second HR. Cheap stage-weighted noise; only channel layout and
    file size matter for these."""
    s = phys["traits"]["stage_strength"]
    t_c, states = phys["t_ctrl"], phys["states"]
    fs_low = 64
    t_low = np.arange(duration * fs_low) / fs_low
    t_256 = np.arange(duration * 256) / 256
    t_32 = np.arange(duration * FS_RESP) / FS_RESP
    eye = np.interp(t_low, t_c, stage_curve(EOG_UV, states, s, t_c.size)) * band_noise(
        rng, t_low.size, fs_low, 0.2, 3.0)
    eye_256 = np.interp(t_256, t_low, eye)
    out = {
        "EOG-L": eye_256 + 5.0 * rng.standard_normal(t_256.size),
        "EOG-R": -0.9 * eye_256 + 5.0 * rng.standard_normal(t_256.size),
    }
    del eye_256
    tone = np.interp(t_256, t_c, stage_curve(EMG_UV, states, s, t_c.size))
    tone += 40.0 * np.abs(np.interp(t_256, t_32, artefact_32))  # muscle bursts with movement
    out["EMG"] = tone * band_noise(rng, t_256.size, 256, 10.0, 100.0)
    del tone
    out["EEG2"] = synth_eeg(rng, phys, duration)
    out["EEG3"] = synth_eeg(rng, phys, duration)
    out["Pres"] = 1.5 * resp["Flow"] * np.abs(resp["Flow"]) ** 0.5 + 0.02 * rng.standard_normal(t_32.size)
    out["Snore"] = 0.05 * rng.standard_normal(t_32.size)
    out["Leg"] = 5.0 * rng.standard_normal(t_32.size) + 30.0 * np.abs(artefact_32) * rng.standard_normal(
        t_32.size)
    out["Therm"] = np.roll(smooth(resp["Flow"], 0.5 * FS_RESP), FS_RESP)  # slower, lagging airflow
    out["OxStatus"] = np.zeros(duration)
    out["DHR"] = hr_1hz.copy()
    return out
