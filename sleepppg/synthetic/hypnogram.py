"""The synthetic night's hypnogram: the physiological state of each 30-s epoch, and the NSRR stage codes a
scorer writes for it.

States (what the body does) are WAKE, N1, N2, N3, REM; the architecture is a textbook night (sleep-onset
latency 10-30 min, ~90-min NREM/REM cycles, N3 mostly in the first third, REM lengthening toward morning, brief
awakenings; docs/DESIGN.md section 7). The scorer places a third of stage boundaries one epoch early or late and
writes the R&K Stage 4, Movement and Unscored codes now and then, so labels are not a perfect function of the
physiology.
"""

from __future__ import annotations

import numpy as np

from sleepppg.constants import WINDOW_SECONDS

FULL_NIGHT_HOURS = 8.0  # shorter nights get a time-compressed hypnogram (see simulate_states)

# Physiological states (what the body does) and the NSRR stage codes a scorer writes for them.
WAKE, N1, N2, N3, REM = range(5)
STATE_CODE = np.array([0, 1, 2, 3, 5], dtype=np.int64)
STAGE_CONCEPTS = {  # NSRR code -> EventConcept
    0: "Wake|0", 1: "Stage 1 sleep|1", 2: "Stage 2 sleep|2", 3: "Stage 3 sleep|3",
    4: "Stage 4 sleep|4", 5: "REM sleep|5", 6: "Movement|6", 9: "Unscored|9",
}


def simulate_states(rng: np.random.Generator, n_epochs: int) -> np.ndarray:
    """Physiological state per 30-s epoch (WAKE, N1, N2, N3, REM) for one night.

    Nights shorter than FULL_NIGHT_HOURS are a time-compressed full night (latency, cycles and final wake
    shrink in proportion), so a short test night still holds every stage.
    """
    epm = 60 // WINDOW_SECONDS  # epochs per minute
    scale = min(1.0, n_epochs / (FULL_NIGHT_HOURS * 60 * epm))  # minutes of a full night -> this night
    states = np.full(n_epochs, WAKE, dtype=np.int64)
    # Sleep-onset latency 10-30 min after lights off; lights go off up to 30 min after recording starts.
    onset = int((rng.uniform(10, 30) + rng.uniform(0, 30)) * epm * scale)
    final_wake = int(rng.uniform(15, 75) * epm * scale)
    deep_factor = rng.uniform(0.6, 1.35)  # people differ in slow-wave sleep (age)
    rem_factor = rng.uniform(0.8, 1.25)
    pos, end, cycle = onset, n_epochs - final_wake, 0
    while pos < end:
        length = np.clip(rng.normal(90, 10), 70, 115)  # minutes per NREM/REM cycle
        rem = np.clip(6 + 7.5 * cycle + rng.normal(0, 3), 3, 40) * rem_factor  # REM lengthens toward morning
        if cycle == 0 and rng.random() < 0.2:
            rem = 0.0  # a skipped first REM period is common
        deep = max(0.0, (50 - 16 * cycle) * deep_factor + rng.normal(0, 5))  # N3 mostly in the first third
        nrem = length - rem
        n1 = rng.integers(1, 4) / epm
        n2_before = rng.uniform(8, 20)
        deep = min(deep, max(0.0, nrem - n1 - n2_before - 3))
        n2_after = nrem - n1 - n2_before - deep
        for state, minutes in ((N1, n1), (N2, n2_before), (N3, deep), (N2, n2_after), (REM, rem)):
            k = int(round(minutes * epm * scale)) if minutes > 0 else 0
            k = max(k, 1) if minutes > 0 else 0
            states[pos:min(pos + k, end)] = state
            pos += k
            if pos >= end:
                break
        cycle += 1
    sleep = slice(onset, max(onset, end))
    # Brief N2 interruptions of N3, N1 sprinkled into N2.
    seg = states[sleep]
    seg[(seg == N3) & (rng.random(seg.size) < 0.06)] = N2
    seg[(seg == N2) & (rng.random(seg.size) < 0.02)] = N1
    # Brief awakenings (WASO), each followed by a little N1.
    awakenings = np.flatnonzero(rng.random(seg.size) < rng.uniform(0.008, 0.03))
    lengths = 1 + np.minimum(rng.geometric(0.3, awakenings.size), 20)
    if seg.size > 240 and rng.random() < 0.3:  # one long awakening in the second half of the night
        awakenings = np.r_[awakenings, rng.integers(seg.size // 2, seg.size - 60)]
        lengths = np.r_[lengths, rng.integers(20, 80)]
    lengths = np.maximum(1, np.round(lengths * scale)).astype(np.int64)
    for a, k in zip(awakenings, lengths):
        seg[a:a + k] = WAKE
        seg[a + k:a + k + rng.integers(1, 3)] = N1
    states[sleep] = seg
    return states


def score_states(rng: np.random.Generator, states: np.ndarray) -> np.ndarray:
    """NSRR stage codes a scorer would write for the states.

    Scorers disagree at transitions (a third of stage boundaries are placed one epoch early or late, so the
    labels are not a perfect function of the physiology), some use R&K Stage 4 for the deepest N3, wake with
    body movement is sometimes 'Movement', and some nights end (or briefly lose signal) as 'Unscored'.
    """
    n = states.size
    seen = states.copy()
    for b in np.flatnonzero(states[1:] != states[:-1]):  # boundary between epochs b and b + 1
        u = rng.random()
        if u < 0.15:
            seen[b] = states[b + 1]
        elif u < 0.3:
            seen[b + 1] = states[b]
    codes = STATE_CODE[seen]
    scale = min(1.0, n / (FULL_NIGHT_HOURS * 3600 / WINDOW_SECONDS))  # short nights: shorter unscored spans
    if rng.random() < 0.4:  # an R&K-style scorer: the middle of N3 runs as Stage 4
        deep = seen == N3
        core = deep.copy()
        core[1:] &= deep[:-1]  # N3 on both sides
        core[:-1] &= deep[1:]
        codes[core & (rng.random(n) < 0.7)] = 4
    sleep_idx = np.flatnonzero(states != WAKE)
    if sleep_idx.size:
        after_onset = np.arange(n) > sleep_idx[0]
        movement = (seen == WAKE) & after_onset & (rng.random(n) < rng.uniform(0.02, 0.15))
        codes[movement] = 6
    if rng.random() < 0.1:  # a short signal-loss gap
        start = int(rng.integers(0, max(1, n - 8)))
        codes[start:start + max(1, int(rng.integers(2, 9) * scale))] = 9
    if rng.random() < 0.5:  # scoring stops before the recording ends
        codes[n - min(n, max(1, int(rng.integers(2, 41) * scale))):] = 9
    return codes


def simulate_hypnogram(rng: np.random.Generator, n_epochs: int) -> np.ndarray:
    """A plausible night of NSRR stage codes (0 wake, 1-4 NREM, 5 REM, 6 movement, 9 unscored).

    Args:
        rng: the random generator (consumed).
        n_epochs: number of 30-s epochs.
    Returns:
        int64 array (n_epochs,) of NSRR stage codes.
    """
    states = simulate_states(rng, n_epochs)
    return score_states(rng, states)


def stage_runs(codes: np.ndarray) -> list[tuple[int, int, int]]:
    """Merge consecutive equal epochs: [(code, first_epoch, n_epochs), ...] covering the whole night."""
    codes = np.asarray(codes)
    if codes.size == 0:
        return []
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    lengths = np.diff(np.r_[starts, codes.size])
    return [(int(codes[s]), int(s), int(k)) for s, k in zip(starts, lengths)]
