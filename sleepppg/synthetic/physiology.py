"""The synthetic night's physiology: what the body does under a hypnogram, before any channel is drawn.

Stage sets the heart-rate level, its respiratory (HF) and low-frequency (LF) modulation, beat-to-beat
irregularity, breathing rate, regularity and depth, and pulse amplitude, all smoothed over ~1 min so nothing
changes exactly at an epoch boundary. Arousals and phasic REM bring HR surges and pulse-amplitude drops,
hypopneas shallower breathing and SpO2 desaturations, wake body movement. Subjects differ in resting HR
(50-80 bpm), amplitude, noise and how strongly their stages show (docs/DESIGN.md section 7).

`simulate_physiology(rng, states)` returns the beat times and the slow processes on a 4-Hz grid;
sleepppg.synthetic.waveforms draws the channels from them.
"""

from __future__ import annotations

import math

import numpy as np

from sleepppg.constants import WINDOW_SECONDS
from sleepppg.synthetic.hypnogram import N2, N3, REM, WAKE
from sleepppg.synthetic.signals import add_kernels, band_noise, ou_process, poisson_events, smooth, surge_kernel

FS_CTRL = 4  # Hz, grid of the slow physiological processes (HR level, breathing phase, amplitudes)
TRANSITION_SIGMA_S = 20  # s, Gaussian smoothing of stage effects (~1-min transitions)

# Stage effects, indexed by state (Wake, N1, N2, N3, REM); N2 is the reference. Each subject scales the
# difference from N2 by its own "stage strength" (HR lowest and most regular in N3; REM close to
# wake and irregular; HF power dominates in N3, LF in REM/wake; breathing slow/regular in N3).
HR_OFFSET_BPM = np.array([9.0, 3.5, 0.0, -3.5, 5.0])
RSA_DEPTH = np.array([0.020, 0.030, 0.040, 0.060, 0.018])  # respiratory HR modulation, fraction of HR
LF_DEPTH = np.array([0.035, 0.025, 0.018, 0.008, 0.040])  # 0.04-0.15 Hz HR modulation, fraction of HR
BEAT_JITTER = np.array([0.020, 0.012, 0.008, 0.004, 0.022])  # white beat-time jitter, fraction of RR
RESP_RATE_OFFSET = np.array([1.5, 0.7, 0.0, -0.8, 1.8])  # breaths/min
RESP_IRREGULARITY = np.array([0.16, 0.10, 0.06, 0.025, 0.20])  # sd of log breathing-rate fluctuations
RESP_DEPTH = np.array([0.85, 0.90, 1.0, 1.15, 0.75])  # relative tidal volume
PULSE_AMPLITUDE = np.array([0.80, 0.92, 1.0, 1.06, 0.84])  # relative PPG pulse amplitude (vasomotor tone)
DELTA_UV = np.array([12.0, 18.0, 28.0, 55.0, 14.0])  # EEG1 0.5-2 Hz amplitude, microvolts
ALPHA_UV = np.array([9.0, 4.0, 2.5, 2.0, 3.5])  # EEG1 8-12 Hz amplitude, microvolts
AROUSALS_PER_HOUR = np.array([0.0, 30.0, 12.0, 4.0, 10.0])  # times the subject's arousability (0.5-1.5)
HYPOPNEA_WEIGHT = np.array([0.0, 1.2, 1.0, 0.3, 1.5])  # relative hypopnea rate by state

EOG_UV = np.array([45.0, 35.0, 8.0, 6.0, 60.0])  # eye movements (rolling in N1, rapid in REM), microvolts
EMG_UV = np.array([20.0, 12.0, 9.0, 8.0, 3.0])  # chin muscle tone (atonia in REM), microvolts


def stage_curve(table: np.ndarray, states: np.ndarray, strength: float, n_ctrl: int) -> np.ndarray:
    """A stage effect on the FS_CTRL grid: N2 value + strength x (state value - N2 value), smoothed with a
    20-s Gaussian (~1-min transitions, so nothing jumps at an epoch boundary). Smoothed at 1 Hz for speed."""
    per_second = np.repeat(table[N2] + strength * (table[states] - table[N2]), WINDOW_SECONDS)
    smoothed = smooth(per_second, TRANSITION_SIGMA_S)
    return np.interp(np.arange(n_ctrl) / FS_CTRL, np.arange(smoothed.size) + 0.5, smoothed)


def _subject_traits(rng: np.random.Generator) -> dict:
    """Per-subject constants: people differ in resting HR, amplitude, noise and how strongly stages show."""
    return {
        "resting_hr": rng.uniform(50, 80),  # bpm, in N2
        "stage_strength": rng.uniform(0.45, 1.35),
        "rsa_gain": rng.lognormal(0.0, 0.3),
        "resp_rate": rng.uniform(12.5, 16.5),  # breaths/min
        "arousability": rng.uniform(0.5, 1.5),
        "ahi": rng.gamma(1.5, 6.0),  # hypopneas per hour of sleep
        "ppg_amplitude": rng.uniform(12, 40),  # Pleth units
        "ppg_noise": rng.uniform(0.01, 0.06),  # fraction of pulse amplitude
        "ppg_baseline": rng.uniform(0.05, 0.25),  # respiratory baseline modulation, fraction of amplitude
        "ptt_s": rng.uniform(0.18, 0.30),  # R peak to PPG foot
        "dicrotic": rng.uniform(0.25, 0.6),  # relative height of the diastolic wave
        "ecg_amplitude": rng.uniform(0.6, 1.8),  # mV R peak
        "ecg_noise": rng.uniform(0.01, 0.05),  # mV
        "spo2_base": rng.uniform(93.5, 97.5),  # %
        "movement_rate": rng.uniform(0.1, 1.0),  # artefacts per minute of wake (a tenth of it in N1/N2/REM)
        "resp_amplitude": rng.uniform(0.3, 1.0),  # mV
    }


def simulate_physiology(rng: np.random.Generator, states: np.ndarray) -> dict:
    """Beat times and slow physiological processes for one night of epoch states.

    Args:
        rng: subject RNG (consumed).
        states: per-epoch physiological states (WAKE..REM), shape (n_epochs,).
    Returns:
        dict with `traits`, `t_ctrl` (s, FS_CTRL grid), `hr_ctrl` (bpm, the mean HR level without RSA/LF),
        `resp_phase_ctrl` (rad), `resp_depth_ctrl`, `pulse_amp_ctrl` (Pleth units), `states` (the input),
        `beats` (R-peak times, s, sorted), `arousals`/`hypopneas`/`desaturations`/`movements` (lists of
        (start_s, duration_s[, ...])), `spo2_1hz` (%).
    """
    tr = _subject_traits(rng)
    s = tr["stage_strength"]
    duration = states.size * WINDOW_SECONDS
    n_c = duration * FS_CTRL
    t_c = np.arange(n_c) / FS_CTRL
    states_c = np.repeat(states, WINDOW_SECONDS * FS_CTRL)
    curve = lambda table: stage_curve(table, states, s, n_c)  # noqa: E731
    asleep_c = states_c != WAKE

    # Events: arousals (sleep), phasic REM bursts, hypopneas, movement artefacts (wake).
    arousal_rate = AROUSALS_PER_HOUR[states_c] * tr["arousability"] / 3600
    arousal_on = poisson_events(rng, arousal_rate, FS_CTRL)
    arousal_dur = rng.uniform(3, 15, arousal_on.size)
    burst_on = poisson_events(rng, (states_c == REM) * rng.uniform(0.5, 2.0) / 60, FS_CTRL)
    hyp_rate = HYPOPNEA_WEIGHT[states_c] * tr["ahi"] / 3600
    hyp_on = poisson_events(rng, hyp_rate, FS_CTRL)
    hyp_dur = rng.uniform(10, 40, hyp_on.size)
    keep = np.r_[True, np.diff(hyp_on) > 60] if hyp_on.size else np.zeros(0, bool)  # no overlapping events
    hyp_on, hyp_dur = hyp_on[keep], hyp_dur[keep]
    # Most hypopneas end in an arousal.
    hyp_arousal = rng.random(hyp_on.size) < 0.6
    arousal_on = np.r_[arousal_on, hyp_on[hyp_arousal] + hyp_dur[hyp_arousal]]
    arousal_dur = np.r_[arousal_dur, rng.uniform(3, 12, int(hyp_arousal.sum()))]
    order = np.argsort(arousal_on, kind="stable")
    arousal_on, arousal_dur = arousal_on[order], arousal_dur[order]
    ok = arousal_on + arousal_dur < duration
    arousal_on, arousal_dur = arousal_on[ok], arousal_dur[ok]
    awakening_on = np.flatnonzero(np.diff(asleep_c.astype(np.int8)) < 0) / FS_CTRL  # sleep -> wake
    # Body movement mostly in wake, but also now and then in light sleep and REM (position changes).
    move_weight = np.where(asleep_c, np.where(states_c == N3, 0.02, 0.1), 1.0)
    move_on = poisson_events(rng, move_weight * tr["movement_rate"] / 60, FS_CTRL)
    move_dur = rng.uniform(2, 15, move_on.size)

    # Heart-rate level: resting + smoothed stage effect + slow drift + overnight decline + surges.
    hr = tr["resting_hr"] + curve(HR_OFFSET_BPM)
    hr += ou_process(rng, n_c, FS_CTRL, tau_s=600, sd=2.5) - rng.uniform(0, 5) * t_c / max(duration, 1)
    surge = surge_kernel(FS_CTRL, 2.0, 7.0, 40)
    hr += add_kernels(n_c, FS_CTRL, arousal_on, rng.uniform(6, 20, arousal_on.size) * s ** 0.5
                      * (0.6 + arousal_dur / 15), surge)
    hr += add_kernels(n_c, FS_CTRL, awakening_on, rng.uniform(8, 20, awakening_on.size), surge)
    hr += add_kernels(n_c, FS_CTRL, burst_on, rng.uniform(3, 10, burst_on.size),
                      surge_kernel(FS_CTRL, 1.0, 3.0, 15))
    hr = np.clip(hr, 38, 140)

    # Breathing: rate, regularity and depth by state; hypopneas reduce depth.
    irregular = curve(RESP_IRREGULARITY)
    rate = (tr["resp_rate"] + curve(RESP_RATE_OFFSET)) / 60
    rate = rate * np.exp(irregular * band_noise(rng, n_c, FS_CTRL, None, 0.08))
    resp_phase = 2 * np.pi * np.cumsum(rate) / FS_CTRL + rng.uniform(0, 2 * np.pi)
    depth = curve(RESP_DEPTH) * (1 + irregular * band_noise(rng, n_c, FS_CTRL, None, 0.1))
    hyp_box = np.zeros(n_c)
    for on, dur in zip(hyp_on, hyp_dur):
        hyp_box[int(on * FS_CTRL):int((on + dur) * FS_CTRL)] = rng.uniform(0.4, 0.7)
    depth *= 1 - smooth(hyp_box, 2 * FS_CTRL)

    # Instantaneous HR: level x (1 + RSA + LF), RSA deeper with deeper breathing.
    rsa = curve(RSA_DEPTH) * tr["rsa_gain"] * depth
    lf = curve(LF_DEPTH) * band_noise(rng, n_c, FS_CTRL, 0.04, 0.15)
    inst_hr = hr * (1 + rsa * np.sin(resp_phase) + lf)
    beat_phase = np.cumsum(inst_hr / 60) / FS_CTRL + rng.uniform(0, 1)
    k = np.arange(math.ceil(beat_phase[0]), math.floor(beat_phase[-1]) + 1)
    beats = np.interp(k, beat_phase, t_c)
    rr = np.diff(beats, prepend=beats[0] - 60 / hr[0])
    jitter = np.interp(beats, t_c, curve(BEAT_JITTER))
    beats = beats + np.clip(jitter * rng.standard_normal(beats.size), -0.15, 0.15) * rr
    beats = np.sort(beats[(beats > 0) & (beats < duration)])

    # Pulse amplitude: vasomotor tone by state, drops with arousals/awakenings/phasic REM, slow drift.
    amp = tr["ppg_amplitude"] * curve(PULSE_AMPLITUDE)
    amp *= np.exp(ou_process(rng, n_c, FS_CTRL, tau_s=900, sd=0.12))
    drop_kernel = np.r_[np.zeros(2 * FS_CTRL), surge_kernel(FS_CTRL, 3.0, 10.0, 45)]
    drop = add_kernels(n_c, FS_CTRL, arousal_on, rng.uniform(0.15, 0.5, arousal_on.size), drop_kernel)
    drop += add_kernels(n_c, FS_CTRL, awakening_on, rng.uniform(0.2, 0.5, awakening_on.size), drop_kernel)
    drop += add_kernels(n_c, FS_CTRL, burst_on, rng.uniform(0.05, 0.2, burst_on.size), drop_kernel)
    amp *= np.clip(1 - drop, 0.2, 1)

    # SpO2 at 1 Hz: baseline with slow noise, desaturations ~20 s after each hypopnea starts.
    n_1 = duration
    spo2 = tr["spo2_base"] + ou_process(rng, n_1, 1, tau_s=300, sd=0.5)
    desat_depth = rng.uniform(3, 8, hyp_on.size)
    desat_on = hyp_on + hyp_dur * 0.5 + rng.uniform(10, 20, hyp_on.size)
    desat_kernel = surge_kernel(1, 8.0, 12.0, 60)
    spo2 -= add_kernels(n_1, 1, desat_on, desat_depth, desat_kernel)
    spo2 = np.clip(np.round(spo2), 70, 100)
    desaturations = []
    for on, d in zip(desat_on, desat_depth):
        if on + 40 < duration:
            base = float(spo2[int(on)])
            nadir = float(spo2[int(on):int(on) + 40].min())
            if base - nadir >= 3:
                desaturations.append((float(on), 30.0, nadir, base))

    return {
        "traits": tr, "t_ctrl": t_c, "hr_ctrl": hr, "resp_phase_ctrl": resp_phase, "resp_depth_ctrl": depth,
        "pulse_amp_ctrl": amp, "states": states, "beats": beats,
        "arousals": [(float(a), float(d)) for a, d in zip(arousal_on, arousal_dur)],
        "hypopneas": [(float(a), float(d)) for a, d in zip(hyp_on, hyp_dur) if a + d < duration],
        "desaturations": desaturations,
        "movements": [(float(a), float(d)) for a, d in zip(move_on, move_dur) if a + d < duration],
        "spo2_1hz": spo2,
    }
