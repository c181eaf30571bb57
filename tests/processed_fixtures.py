"""Tiny processed-data files in the SPEC §5 format, written straight to HDF5 (no EDF step), for the
model/dataset/training/inference tests.

The PPG of each 30-s window is a pulse-like wave whose rate and regularity depend on the stage, plus
per-subject offsets and noise, so a small model can learn it, but not perfectly.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from sleepppg_common import SAMPLES_PER_WINDOW, TARGET_FS, sleepppg_test_subjects

# Stage -> (pulse rate in Hz, beat-to-beat jitter); Wake fast/irregular, Deep slow/regular, REM irregular.
_STAGE_RATE = {0: (1.25, 0.12), 1: (1.0, 0.05), 2: (0.85, 0.02), 3: (1.15, 0.15)}


def _hypnogram(rng: np.random.Generator, n_windows: int, n_scored: int) -> np.ndarray:
    labels = np.full(n_windows, -1, dtype=np.int64)
    i = 0
    while i < n_scored:
        stage = int(rng.choice(4, p=[0.25, 0.4, 0.15, 0.2]))
        run = int(rng.integers(3, 12))
        labels[i:min(i + run, n_scored)] = stage
        i += run
    return labels


def _ppg_for(rng: np.random.Generator, labels: np.ndarray, hr_offset: float) -> np.ndarray:
    t = np.arange(SAMPLES_PER_WINDOW) / TARGET_FS
    out = np.zeros((labels.size, SAMPLES_PER_WINDOW), dtype=np.float32)
    for w, stage in enumerate(labels):
        if stage < 0:
            continue
        rate, jitter = _STAGE_RATE[int(stage)]
        f = rate + hr_offset + jitter * rng.standard_normal()
        phase = 2 * np.pi * np.cumsum(np.full_like(t, f) * (1 + jitter * rng.standard_normal(t.size))) / TARGET_FS
        out[w] = np.sin(phase) + 0.3 * np.sin(2 * phase) + 0.3 * rng.standard_normal(t.size)
    return out


def write_processed(out_dir: str | Path, n_subjects: int = 12, windows_per_subject: int = 40,
                    n_test: int = 3, seed: int = 0, with_ecg: bool = True,
                    short_subjects: tuple[str, ...] = ()) -> dict:
    """Write mesa_ppg_with_labels.h5, mesa_real_ecg.h5 and mesa_subject_index.h5 under `out_dir`.

    Args:
        n_subjects: subjects in total; the first `n_test` IDs come from the SleepPPG-Net test list, the rest
            are other 4-digit IDs.
        windows_per_subject: windows per night (1,200 in real data; small here for speed).
        short_subjects: IDs (among those written) stored with one window fewer, i.e. invalid for the split.
    Returns:
        {"ppg": path, "ecg": path, "index": path, "subjects": [ids in file order]}
    """
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    test_ids = sleepppg_test_subjects()[:n_test]
    others = [f"{i:04d}" for i in range(9000, 9000 + n_subjects - n_test)]
    subjects = sorted(test_ids + others)
    ppg, ecg, labels, sids, counts = [], [], [], [], {}
    for sid in subjects:
        n = windows_per_subject - (1 if sid in short_subjects else 0)
        lab = _hypnogram(rng, n, n_scored=n - int(rng.integers(0, 4)))
        sig = _ppg_for(rng, lab, hr_offset=0.1 * rng.standard_normal())
        ppg.append(sig)
        ecg.append(np.roll(sig, 3, axis=1) if with_ecg else np.zeros_like(sig))
        labels.append(lab)
        sids += [sid.encode()] * n
        counts[sid] = n
    ppg_all, ecg_all = np.concatenate(ppg), np.concatenate(ecg)
    lab_all, sid_all = np.concatenate(labels), np.array(sids, dtype="S4")
    paths = {"ppg": out_dir / "mesa_ppg_with_labels.h5", "ecg": out_dir / "mesa_real_ecg.h5",
             "index": out_dir / "mesa_subject_index.h5"}
    with h5py.File(paths["ppg"], "w") as f:
        f["ppg"], f["labels"], f["subject_ids"] = ppg_all, lab_all, sid_all
        f.attrs.update(sampling_rate=TARGET_FS, window_duration=30, samples_per_window=SAMPLES_PER_WINDOW,
                       total_windows=len(lab_all), total_subjects=len(subjects))
    with h5py.File(paths["ecg"], "w") as f:
        f["ecg"], f["labels"], f["subject_ids"] = ecg_all, lab_all, sid_all
        f["has_real_ecg"] = np.full(len(lab_all), with_ecg)
        f["real_ecg_indices"] = np.arange(len(lab_all)) if with_ecg else np.zeros(0, dtype=np.int64)
        f.attrs.update(windows_with_real_ecg=len(lab_all) if with_ecg else 0,
                       windows_without_real_ecg=0 if with_ecg else len(lab_all))
    with h5py.File(paths["index"], "w") as f:
        start = 0
        for sid in subjects:
            g = f.create_group(f"subjects/{sid}")
            g["window_indices"] = np.arange(start, start + counts[sid])
            g.attrs.update(n_windows=counts[sid], has_ecg=with_ecg)
            start += counts[sid]
        f.attrs.update(total_subjects=len(subjects), total_windows=len(lab_all))
    return {**{k: str(v) for k, v in paths.items()}, "subjects": subjects}
