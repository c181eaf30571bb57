"""The DREAMT-shaped writer: one synthetic night as the DREAMT wearable dataset lays it out.

DREAMT (a wrist-worn Empatica E4 with PSG labels) has one CSV per night, `<root>/data_64Hz/<id>_whole_df.csv`,
64 rows per second with DREAMT's columns (TIMESTAMP, BVP, ACC_X/Y/Z, TEMP, EDA, HR, IBI, Sleep_Stage
P/W/N1/N2/N3/R/Missing, and the apnea/hypopnea flags). The night comes from the same hypnogram and physiology as
the MESA-shaped nights; the CSV is written atomically with fixed number formats, so a seed gives identical bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sleepppg.constants import WINDOW_SECONDS
from sleepppg.runio import atomic_output
from sleepppg.synthetic.hypnogram import N2, N3, WAKE, score_states, simulate_states
from sleepppg.synthetic.physiology import simulate_physiology
from sleepppg.synthetic.signals import add_kernels, ou_process, poisson_events, smooth, subject_rng, surge_kernel
from sleepppg.synthetic.waveforms import CHUNK_SECONDS, FS_RESP, movement_artefact, synth_ppg

DREAMT_SUBDIR = "data_64Hz"
DREAMT_FS = 64  # Hz, rows per second of the 64-Hz files
DREAMT_COLUMNS = ("TIMESTAMP", "BVP", "ACC_X", "ACC_Y", "ACC_Z", "TEMP", "EDA", "HR", "IBI", "Sleep_Stage",
                  "Obstructive_Apnea", "Central_Apnea", "Hypopnea", "Multiple_Events")
DREAMT_EVENT_COLUMNS = ("Obstructive_Apnea", "Central_Apnea", "Hypopnea", "Multiple_Events")
DREAMT_FORMATS = {"TIMESTAMP": "%.6f", "BVP": "%.2f", "ACC_X": "%d", "ACC_Y": "%d", "ACC_Z": "%d", "TEMP": "%.2f",
                  "EDA": "%.6f", "HR": "%.2f", "IBI": "%.6f", "Sleep_Stage": "%s", "Obstructive_Apnea": "%s",
                  "Central_Apnea": "%s", "Hypopnea": "%s", "Multiple_Events": "%s"}
DREAMT_STAGES = {0: "W", 1: "N1", 2: "N2", 3: "N3", 4: "N3", 5: "R", 6: "W", 9: "Missing"}  # NSRR code -> AASM
MAX_DREAMT_DRAWN = 998  # drawn DREAMT IDs run S002 ... S999


def dreamt_ids(n_subjects: int) -> list[str]:
    """DREAMT-style IDs S002, S003, ... (DREAMT's participants are numbered from S002)."""
    if not 0 < n_subjects <= MAX_DREAMT_DRAWN:
        raise ValueError(f"n_subjects must be 1..{MAX_DREAMT_DRAWN} for drawn DREAMT IDs, got {n_subjects}")
    return [f"S{i:03d}" for i in range(2, 2 + n_subjects)]


def dreamt_path(out_root: str | Path, subject_id: str) -> Path:
    """`<root>/data_64Hz/<id>_whole_df.csv`."""
    return Path(out_root) / DREAMT_SUBDIR / f"{subject_id}_whole_df.csv"


def simulate_dreamt_night(subject_id: str, hours: float, seed: int) -> dict[str, np.ndarray]:
    """One DREAMT-shaped night at 64 Hz from the same stage-driven physiology as the MESA nights.

    Returns:
        {column: array (T,)} for DREAMT_COLUMNS: TIMESTAMP (s from 0), BVP (PPG, arbitrary units), ACC_X/Y/Z
        (1/64 g, whole numbers in -128..127, gravity plus movement), TEMP (skin, deg C, 4-Hz steps), EDA
        (microsiemens, 4-Hz steps), HR (bpm, 1-Hz steps), IBI (s, the last beat's interval), Sleep_Stage (P for
        the minutes before lights-off, then W, N1, N2, N3, R, and a few Missing stretches), and the
        respiratory-event flags Obstructive_Apnea, Central_Apnea, Hypopnea, Multiple_Events (1.0 inside an
        event, NaN elsewhere).
    """
    if not hours > 0:
        raise ValueError(f"hours must be > 0, got {hours}")
    rng = subject_rng(seed, subject_id)
    n_epochs = max(4, int(round(hours * 3600 / WINDOW_SECONDS)))
    duration = n_epochs * WINDOW_SECONDS
    states = simulate_states(rng, n_epochs)
    n_prep = int(min(rng.integers(4, 11), max(1, n_epochs // 4)))  # 2-5 min of preparation before lights-off
    states[:n_prep] = WAKE
    codes = score_states(rng, states)
    stage = np.array([DREAMT_STAGES[int(c)] for c in codes], dtype=object)
    stage[:n_prep] = "P"
    for _ in range(int(rng.integers(2, 4))):  # a few stretches where the PSG scoring is missing
        first = int(rng.integers(n_prep, n_epochs))
        stage[first:first + int(rng.integers(1, 5))] = "Missing"
    phys = simulate_physiology(rng, states)
    n = duration * DREAMT_FS
    t = np.arange(n) / DREAMT_FS
    artefact_32 = movement_artefact(rng, phys["movements"], duration, FS_RESP)
    bvp = synth_ppg(rng, phys, duration, DREAMT_FS, artefact_32)

    # Wrist accelerometer: gravity in one orientation, turned at some movements, plus movement bursts.
    turn_at = [on for on, _ in phys["movements"] if rng.random() < 0.3]
    edges = np.searchsorted(t, turn_at)
    gravity = rng.normal(size=(len(edges) + 1, 3))
    gravity /= np.linalg.norm(gravity, axis=1, keepdims=True)
    segment = np.searchsorted(edges, np.arange(n), side="right")
    motion = np.repeat(artefact_32, DREAMT_FS // FS_RESP)
    acc = {axis: np.clip(np.round(64 * gravity[segment, k] + 25 * motion * rng.standard_normal(n)
                                  + rng.normal(0, 0.6, n)), -128, 127)
           for k, axis in enumerate(("ACC_X", "ACC_Y", "ACC_Z"))}

    # Skin temperature and electrodermal activity at 4 Hz (E4 rates), held for 16 rows each.
    t_4 = np.arange(duration * 4) / 4
    asleep_4 = np.repeat(states != WAKE, WINDOW_SECONDS * 4).astype(float)
    temp = rng.uniform(32.0, 34.0) + 1.2 * smooth(asleep_4, 15 * 60 * 4) + ou_process(rng, t_4.size, 4, 300, 0.08)
    deep_4 = np.repeat(np.isin(states, (N2, N3)), WINDOW_SECONDS * 4)
    storm_on = poisson_events(rng, deep_4 * 0.02, 4)  # "EDA storms": bursts in N2/N3, ~1 per 50 s
    storms = add_kernels(t_4.size, 4, storm_on, rng.uniform(0.2, 1.5, storm_on.size), surge_kernel(4, 1.0, 4.0, 20))
    eda = np.maximum(0.0, rng.lognormal(-1.5, 0.5) + 0.05 * ou_process(rng, t_4.size, 4, 600, 1.0) + storms)
    hold_4 = np.arange(n) // (DREAMT_FS // 4)

    beats = phys["beats"]
    rr = np.diff(beats)
    hr_1hz = 60.0 / np.interp(np.arange(duration) + 0.5, beats[1:], rr)
    last_beat = np.clip(np.searchsorted(beats[1:], t, side="right") - 1, 0, rr.size - 1)

    flags = {name: np.zeros(n, dtype=bool) for name in DREAMT_EVENT_COLUMNS}
    for on, dur in phys["hypopneas"]:
        u = rng.random()
        kind = "Obstructive_Apnea" if u < 0.3 else "Central_Apnea" if u < 0.4 else "Hypopnea"
        rows = slice(int(on * DREAMT_FS), int((on + dur) * DREAMT_FS))
        flags[kind][rows] = True
        if rng.random() < 0.1:  # scored as two events at once
            flags["Hypopnea" if kind != "Hypopnea" else "Obstructive_Apnea"][rows] = True
            flags["Multiple_Events"][rows] = True
    columns = {"TIMESTAMP": t, "BVP": bvp, **acc, "TEMP": temp[hold_4], "EDA": eda[hold_4],
               "HR": np.repeat(hr_1hz, DREAMT_FS), "IBI": rr[last_beat],
               "Sleep_Stage": np.repeat(stage, WINDOW_SECONDS * DREAMT_FS)}
    columns.update({name: np.where(flag, 1.0, np.nan) for name, flag in flags.items()})
    return columns


def write_dreamt_subject(out_root: str | Path, subject_id: str, hours: float, seed: int) -> Path:
    """Simulate one night (`simulate_dreamt_night`) and write `<out_root>/data_64Hz/<id>_whole_df.csv`
    atomically, in DREAMT_COLUMNS order with fixed number formats (so a seed gives identical bytes)."""
    columns = simulate_dreamt_night(subject_id, hours, seed)
    out = dreamt_path(out_root, subject_id)
    row_format = ",".join(DREAMT_FORMATS[name] for name in DREAMT_COLUMNS)
    n = columns["TIMESTAMP"].size
    rows_per_chunk = CHUNK_SECONDS * DREAMT_FS
    with atomic_output(out) as tmp, open(tmp, "w", newline="") as fh:
        fh.write(",".join(DREAMT_COLUMNS) + "\n")
        for i0 in range(0, n, rows_per_chunk):
            rows = slice(i0, min(i0 + rows_per_chunk, n))
            cells = []
            for name in DREAMT_COLUMNS:
                values = columns[name][rows]
                if name in DREAMT_EVENT_COLUMNS:  # 1.0 inside an event, empty (NaN) elsewhere, as pandas writes
                    values = np.where(np.isnan(values), "", "1.0")
                elif name.startswith("ACC_"):
                    values = values.astype(np.int64)
                cells.append(values.tolist())
            fh.write("".join(row_format % row + "\n" for row in zip(*cells)))
    return out
