"""Benchmark extract_mesa_data.py against a re-creation of the reference's approach, same cohort, same run.

The cohort is MESA-sized: 10.5-h nights with MESA's channels and rates (sleepppg.synthetic.cohort.make_cohort;
if that module is missing, a plain EDF writer below). For each cohort size N (--sizes) it runs, each in its own
subprocess so peak memory is measured cleanly:
- "reference": the reference's approach re-created from its extract_mesa_data.py: one process, every
  subject's PPG and ECG windows kept in memory as float64 until the end, then stacked and written with gzip
  (chunks of 100 windows); ECG filtered with filtfilt on (b, a) coefficients; labels expanded from the XML.
  EDFs are read with mne like ours (the reference used pyedflib, not installed here), one channel at a time,
  so the comparison isolates the pipeline design, not the EDF reader;
- "ours": extract_mesa_data.main with --workers W for each W in --workers.
Printed: seconds in total and per subject, peak memory (the PSS of the whole process tree, main + workers,
sampled every 50 ms by bench/memory.py; the main process's ru_maxrss beside it), and ours/reference ratios.
First, EDF reading alone on the first night (`--read-repeats` times, best time kept): our reader
(sleepppg.edf.read_edf: one open, one pass over the records for PPG and ECG) against mne as extraction
used it before (one open for the channel names, a second to read PPG and ECG), with the values compared.

`--dreamt` measures instead a DREAMT-shaped cohort (one 14-column CSV per participant at 64 Hz, 8-h nights by
default; sleepppg.synthetic.dreamt.write_dreamt_subject when that exists, else a plain writer below) through
`extract_mesa_data.py --format dreamt`: seconds per subject and peak memory for each N, which should stay flat
in N (there is no reference approach for DREAMT).

Usage: python bench/bench_extract.py --sizes 4,16 --workers 1,2   (default --sizes 2,4: a few minutes)
       python bench/bench_extract.py --dreamt --sizes 2,8 --workers 1 [--hours 8]
       python bench/bench_extract.py --read-only                   (EDF reading alone, about a minute)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

REFERENCE_TARGET_FS = 34.133333333  # the reference's rounded constant (Hz)
REFERENCE_WINDOWS = 1200
REFERENCE_SAMPLES = REFERENCE_WINDOWS * 1024
REFERENCE_CHUNK_ROWS = 100  # the reference's HDF5 chunks: 100 windows
NIGHT_HOURS = 10.5  # a typical MESA night is longer than the 10 h kept


# ----------------------------------------------------------------------------------------------------------
# Cohort


def _simple_subject(root: Path, sid: str, hours: float, seed: int) -> None:
    """Fallback writer: MESA's channels at MESA's rates with plain sinusoids plus noise, and 30-s stage runs."""
    import edfio

    rng = np.random.default_rng(seed)
    seconds = int(hours * 3600)

    def wave(fs: int, freq: float, amp: float) -> np.ndarray:
        t = np.arange(seconds * fs) / fs
        return amp * np.sin(2 * np.pi * freq * t) + 0.1 * amp * rng.standard_normal(t.size)

    spec = [("EKG", 256, 1.1, 1.0, "mV"), ("EEG1", 256, 10.0, 50.0, "uV"), ("Flow", 32, 0.25, 1.0, ""),
            ("Thor", 32, 0.25, 1.0, ""), ("Abdo", 32, 0.25, 1.0, ""), ("Pos", 32, 0.01, 1.0, ""),
            ("Pleth", 256, 1.0, 100.0, ""), ("SpO2", 1, 0.001, 2.0, "%"), ("HR", 1, 0.001, 5.0, "bpm")]
    signals = [edfio.EdfSignal(wave(fs, f, a), fs, label=label, physical_dimension=unit,
                               physical_range=(-1.5 * a, 1.5 * a)) for label, fs, f, a, unit in spec]
    edf = root / "polysomnography" / "edfs" / f"mesa-sleep-{sid}.edf"
    edf.parent.mkdir(parents=True, exist_ok=True)
    edfio.Edf(signals, data_record_duration=1).write(edf)
    concepts = ["Wake|0", "Stage 1 sleep|1", "Stage 2 sleep|2", "Stage 3 sleep|3", "REM sleep|5"]
    events, start = [], 0
    while start < seconds:
        duration = 30 * int(rng.integers(2, 40))
        events.append(f"<ScoredEvent><EventType>Stages|Stages</EventType><EventConcept>"
                      f"{concepts[int(rng.integers(5))]}</EventConcept><Start>{start}</Start>"
                      f"<Duration>{min(duration, seconds - start)}</Duration></ScoredEvent>")
        start += duration
    xml = root / "polysomnography" / "annotations-events-nsrr" / f"mesa-sleep-{sid}-nsrr.xml"
    xml.parent.mkdir(parents=True, exist_ok=True)
    xml.write_text("<PSGAnnotation><EpochLength>30</EpochLength><ScoredEvents>" + "".join(events)
                   + "</ScoredEvents></PSGAnnotation>")


def make_cohort(root: Path, n: int, hours: float) -> list[str]:
    """A MESA-shaped cohort of n subjects with every night `hours` long and ECG present; returns IDs."""
    try:
        from sleepppg.synthetic.cohort import make_cohort as make_synthetic_cohort
    except ImportError:
        ids = [f"{i:04d}" for i in range(1, n + 1)]
        for k, sid in enumerate(ids):
            if not (root / "polysomnography" / "edfs" / f"mesa-sleep-{sid}.edf").exists():
                _simple_subject(root, sid, hours, seed=k)
        return ids
    return make_synthetic_cohort(root, n, hours=hours, seed=0, no_ecg_fraction=0.0, workers=2)


# ----------------------------------------------------------------------------------------------------------
# The reference's approach, re-created (see the module docstring)


def _ref_resample_clip_zscore(filtered: np.ndarray, fs: float) -> np.ndarray:
    n_out = int(filtered.size / fs * REFERENCE_TARGET_FS)
    old = np.linspace(0, filtered.size - 1, filtered.size)
    new = np.linspace(0, filtered.size - 1, n_out)
    x = np.interp(new, old, filtered)
    mu, sd = np.mean(x), np.std(x)
    x = np.clip(x, mu - 3 * sd, mu + 3 * sd)
    return (x - np.mean(x)) / (np.std(x) + 1e-8)


def _ref_ppg(x: np.ndarray, fs: float) -> np.ndarray:
    from scipy.signal import cheby2, sosfiltfilt

    return _ref_resample_clip_zscore(sosfiltfilt(cheby2(8, 40, 8 / (fs / 2), output="sos"), x), fs)


def _ref_ecg(x: np.ndarray, fs: float) -> np.ndarray:
    from scipy.signal import butter, filtfilt

    high = min(40 / (fs / 2), 0.99)
    b, a = butter(4, [0.5 / (fs / 2), high], btype="band")
    return _ref_resample_clip_zscore(filtfilt(b, a, x), fs)


def _ref_fit(x: np.ndarray, length: int, fill: float) -> np.ndarray:
    if x.size >= length:
        return x[:length]
    return np.concatenate([x, np.full(length - x.size, fill, dtype=x.dtype)])


def _ref_labels(xml_path: Path, duration_s: float) -> np.ndarray:
    stage_of = {"Wake": 0, "Stage 1 sleep": 1, "Stage 2 sleep": 1, "Stage 3 sleep": 2, "Stage 4 sleep": 2,
                "REM sleep": 3}
    labels = np.full(int(np.ceil(duration_s / 30)), -1, dtype=int)
    for event in ET.parse(xml_path).getroot().iter("ScoredEvent"):
        if event.findtext("EventType") != "Stages|Stages":
            continue
        stage = stage_of.get(event.findtext("EventConcept").split("|")[0])
        if stage is None:
            continue
        start, duration = float(event.findtext("Start")), float(event.findtext("Duration"))
        labels[int(np.floor(start / 30)):int(np.ceil((start + duration) / 30))] = stage
    return _ref_fit(labels, REFERENCE_WINDOWS, -1)


def reference_extract(edf_dir: Path, xml_dir: Path, out_dir: Path, ids: list[str]) -> None:
    """The reference's design: everything in memory as float64, one process, gzip at the end."""
    import h5py
    import mne

    from sleepppg.channels import find_ecg_channel, find_ppg_channel

    all_ppg, all_ecg, all_labels, subject_ids, has_ecg = [], [], [], [], []
    for sid in ids:
        edf = edf_dir / f"mesa-sleep-{sid}.edf"
        names = mne.io.read_raw_edf(edf, preload=False, verbose="error").ch_names
        signals = {}
        first_match = find_ppg_channel(names, [0.0] * len(names))  # equal rates: the reference's first match
        for kind, channel in (("ppg", first_match), ("ecg", find_ecg_channel(names))):
            if channel:
                raw = mne.io.read_raw_edf(edf, include=[channel], preload=False, verbose="error")
                signals[kind] = (raw.get_data()[0], raw.info["sfreq"])
        ppg = _ref_ppg(*signals["ppg"])
        ecg = _ref_ecg(*signals["ecg"]) if "ecg" in signals else np.zeros_like(ppg)
        all_ppg.append(_ref_fit(ppg, REFERENCE_SAMPLES, 0.0).reshape(REFERENCE_WINDOWS, 1024))
        all_ecg.append(_ref_fit(ecg, REFERENCE_SAMPLES, 0.0).reshape(REFERENCE_WINDOWS, 1024))
        all_labels.append(_ref_labels(xml_dir / f"mesa-sleep-{sid}-nsrr.xml", ppg.size / REFERENCE_TARGET_FS))
        subject_ids += [sid] * REFERENCE_WINDOWS
        has_ecg += ["ecg" in signals] * REFERENCE_WINDOWS
    ppg_all, ecg_all = np.vstack(all_ppg), np.vstack(all_ecg)
    labels, sids, has = np.concatenate(all_labels), np.array(subject_ids), np.array(has_ecg)
    out_dir.mkdir(parents=True, exist_ok=True)
    with h5py.File(out_dir / "mesa_ppg_with_labels.h5", "w") as f:
        f.create_dataset("ppg", data=ppg_all, compression="gzip", chunks=(REFERENCE_CHUNK_ROWS, 1024))
        f.create_dataset("labels", data=labels, compression="gzip")
        f.create_dataset("subject_ids", data=sids.astype("S10"), compression="gzip")
    with h5py.File(out_dir / "mesa_real_ecg.h5", "w") as f:
        f.create_dataset("ecg", data=ecg_all, compression="gzip", chunks=(REFERENCE_CHUNK_ROWS, 1024))
        f.create_dataset("has_real_ecg", data=has, compression="gzip")
        f.create_dataset("subject_ids", data=sids.astype("S10"), compression="gzip")
        f.create_dataset("labels", data=labels, compression="gzip")
        f.create_dataset("real_ecg_indices", data=np.where(has)[0], compression="gzip")
    with h5py.File(out_dir / "mesa_subject_index.h5", "w") as f:
        for sid in np.unique(sids):
            g = f.create_group(f"subjects/{sid}")
            g.create_dataset("window_indices", data=np.where(sids == sid)[0])


# ----------------------------------------------------------------------------------------------------------
# EDF reading alone


def read_with_mne(edf: Path) -> tuple[np.ndarray, np.ndarray]:
    """PPG and ECG as extraction read them with mne before: channel names from one open, then both
    channels (same rate) from a second."""
    import mne

    from sleepppg.channels import find_ecg_channel, find_ppg_channel

    names = mne.io.read_raw_edf(edf, preload=False, verbose="error").ch_names
    ppg, ecg = find_ppg_channel(names, [0.0] * len(names)), find_ecg_channel(names)  # first match, as before
    raw = mne.io.read_raw_edf(edf, include=[ppg, ecg], preload=False, verbose="error")
    data = raw.get_data(picks=[ppg, ecg])
    return data[0], data[1]


def bench_read(edf: Path, repeats: int) -> dict:
    """Best-of-`repeats` seconds of each reader on one EDF, and the largest difference between their values."""
    from sleepppg.edf import read_edf

    times = {"mne": [], "ours": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        ppg_mne, ecg_mne = read_with_mne(edf)
        times["mne"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        rec = read_edf(edf)
        times["ours"].append(time.perf_counter() - t0)
    diff = max(float(np.max(np.abs(rec["ppg"] - ppg_mne)) / np.max(np.abs(ppg_mne))),
               float(np.max(np.abs(rec["ecg"] - ecg_mne)) / np.max(np.abs(ecg_mne))))
    return {"mne_s": min(times["mne"]), "ours_s": min(times["ours"]), "max_relative_difference": diff,
            "mb": edf.stat().st_size / 1e6}


# ----------------------------------------------------------------------------------------------------------
# One measured run (in its own subprocess)


DREAMT_HOURS = 8.0  # a DREAMT night (lights-off to end) is about 7-8 h
DREAMT_FS = 64  # Hz: Empatica E4 BVP rows in data_64Hz
DREAMT_COLUMNS = ("TIMESTAMP", "BVP", "ACC_X", "ACC_Y", "ACC_Z", "TEMP", "EDA", "HR", "IBI", "Sleep_Stage",
                  "Obstructive_Apnea", "Central_Apnea", "Hypopnea", "Multiple_Events")


def _simple_dreamt_subject(root: Path, sid: str, hours: float, seed: int) -> Path:
    """Fallback writer: <root>/data_64Hz/<sid>_whole_df.csv with DREAMT's 14 columns at 64 Hz: 15 min of P
    (preparation), then 30-s stages cycling W, N1, N2, N3, N2, R; BVP a noisy sinusoid; the rest plausible."""
    rng = np.random.default_rng(seed)
    path = root / "data_64Hz" / f"{sid}_whole_df.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(hours * 3600 * DREAMT_FS)
    t = np.arange(n) / DREAMT_FS
    bvp = 60 * np.sin(2 * np.pi * 1.1 * t) + 5 * rng.standard_normal(n)
    cycle = np.array(["W", "N1", "N2", "N3", "N2", "R"])
    epoch = ((t - 900) // 30).astype(int)
    stage = np.where(t < 900, "P", cycle[(epoch // 20) % cycle.size])  # 10-min blocks per stage
    with open(path, "w") as fh:
        fh.write(",".join(DREAMT_COLUMNS) + "\n")
        for i0 in range(0, n, 100_000):
            rows = (f"{ti:.6f},{b:.2f},{-30 + i % 7},{12 + i % 5},{55 - i % 3},33.{i % 97:02d},0.{i % 9973:06d},"
                    f"{62 + (i // 640) % 10:.2f},,{st},,,,"
                    for i, (ti, b, st) in enumerate(zip(t[i0:i0 + 100_000].tolist(), bvp[i0:i0 + 100_000].tolist(),
                                                        stage[i0:i0 + 100_000].tolist()), start=i0))
            fh.write("\n".join(rows) + "\n")
    return path


def make_dreamt_cohort(root: Path, n: int, hours: float) -> list[str]:
    """n DREAMT-shaped participants under <root>/data_64Hz (written once, reused)."""
    try:
        from sleepppg.synthetic.dreamt import write_dreamt_subject
    except ImportError:
        write_dreamt_subject = _simple_dreamt_subject
    ids = [f"S{100 + i:03d}" for i in range(n)]
    for i, sid in enumerate(ids):
        if not (root / "data_64Hz" / f"{sid}_whole_df.csv").exists():
            write_dreamt_subject(root, sid, hours, i)
    return ids


def measure_one(kind: str, edf_dir: Path, xml_dir: Path, out_dir: Path, ids: list[str], workers: int) -> dict:
    """Run one extraction here (kind 'dreamt': `edf_dir` is the DREAMT CSV folder); return seconds, the peak
    PSS of the whole process tree (main + workers, MB, sampled every 50 ms) and the peak RSS of the main
    process (ru_maxrss, MB)."""
    import h5py  # noqa: F401  imported before the clock starts: both approaches pay the same start-up
    import mne  # noqa: F401
    import scipy.signal  # noqa: F401
    from memory import PeakMemory, peak_resident_bytes  # PSS of the tree: shared pages are not counted twice

    import extract_mesa_data
    from sleepppg.runtime import keep_freed_memory

    t0 = time.perf_counter()
    with PeakMemory(os.getpid(), interval=0.05) as sampler:
        if kind == "reference":
            reference_extract(edf_dir, xml_dir, out_dir, ids)
        elif kind == "dreamt":
            keep_freed_memory()
            rc = extract_mesa_data.main(["--format", "dreamt", "--csv-dir", str(edf_dir), "--out-dir", str(out_dir),
                                         "--subjects", ",".join(ids), "--workers", str(workers), "--overwrite"])
            if rc != 0:
                raise SystemExit(f"extract_mesa_data --format dreamt exited {rc}")
        else:
            keep_freed_memory()  # as `python extract_mesa_data.py` runs (this subprocess measures ours only)
            rc = extract_mesa_data.main(["--edf-dir", str(edf_dir), "--xml-dir", str(xml_dir), "--out-dir",
                                         str(out_dir), "--subjects", ",".join(ids), "--workers", str(workers),
                                         "--overwrite"])
            if rc != 0:
                raise SystemExit(f"extract_mesa_data exited {rc}")
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_tree_mb": sampler.peak_bytes / 2**20,
            "rss_main_mb": peak_resident_bytes() / 2**20}


def run_measured(kind: str, root: Path, out_dir: Path, ids: list[str], workers: int) -> dict:
    edf_dir = root / "data_64Hz" if kind == "dreamt" else root / "polysomnography" / "edfs"
    xml_dir = root / "polysomnography" / "annotations-events-nsrr"
    args = {"kind": kind, "edf_dir": str(edf_dir), "xml_dir": str(xml_dir), "out_dir": str(out_dir),
            "ids": ids, "workers": workers}
    proc = subprocess.run([sys.executable, __file__, "--measure-one", json.dumps(args)], capture_output=True,
                          text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} run failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    shutil.rmtree(out_dir, ignore_errors=True)
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2,4", help="cohort sizes N, comma-separated (full: 4,16)")
    parser.add_argument("--workers", default="1,2", help="worker counts for ours, comma-separated")
    parser.add_argument("--hours", type=float, help=f"night length in hours (default {NIGHT_HOURS:g})")
    parser.add_argument("--root", help="cohort folder, kept for reuse (default: a temporary folder)")
    parser.add_argument("--dreamt", action="store_true", help="time a DREAMT-shaped cohort (ours only; --hours "
                                                                  f"defaults to {DREAMT_HOURS:g})")
    parser.add_argument("--read-repeats", type=int, default=3, help="repeats of the EDF-reading comparison")
    parser.add_argument("--read-only", action="store_true", help="only the EDF-reading comparison")
    parser.add_argument("--measure-one", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.measure_one:
        a = json.loads(args.measure_one)
        result = measure_one(a["kind"], Path(a["edf_dir"]), Path(a["xml_dir"]), Path(a["out_dir"]), a["ids"],
                             a["workers"])
        print(json.dumps(result))
        return 0
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    worker_counts = [int(w) for w in args.workers.split(",")]
    if args.dreamt:
        return bench_dreamt(sizes, worker_counts, args.hours or DREAMT_HOURS, args.root)
    args.hours = args.hours or NIGHT_HOURS
    with tempfile.TemporaryDirectory(prefix="bench_extract_") as tmp:
        # nights are reused from --root only when they have the length asked for (it is in the folder name)
        root = (Path(args.root) if args.root else Path(tmp)) / f"cohort_{args.hours:g}h"
        t0 = time.perf_counter()
        ids = make_cohort(root, 1 if args.read_only else max(sizes), args.hours)
        print(f"cohort: {len(ids)} subjects x {args.hours} h in {root} ({time.perf_counter() - t0:.0f} s to make)")
        read = bench_read(root / "polysomnography" / "edfs" / f"mesa-sleep-{ids[0]}.edf", args.read_repeats)
        print(f"EDF reading, PPG + ECG of one {read['mb']:.0f}-MB night (best of {args.read_repeats}): mne as before "
              f"{read['mne_s']:.2f} s, ours {read['ours_s']:.2f} s ({read['mne_s'] / read['ours_s']:.2f}x); "
              f"largest difference {read['max_relative_difference']:.1e} of the signal's range")
        if args.read_only:
            return 0
        rows = []
        for n in sizes:
            subset = ids[:n]
            ref = run_measured("reference", root, Path(tmp) / "out_ref", subset, 1)
            rows.append(("reference", n, 1, ref, ref))
            for w in worker_counts:
                ours = run_measured("ours", root, Path(tmp) / f"out_ours{w}", subset, w)
                rows.append(("ours", n, w, ours, ref))
    print(f"\n{'approach':<10} {'N':>3} {'workers':>7} {'total s':>8} {'s/subject':>9} {'peak MB':>8} "
          f"{'main RSS':>8} {'speed-up':>8} {'memory':>7}")
    for kind, n, w, r, ref in rows:
        print(f"{kind:<10} {n:>3} {w:>7} {r['seconds']:>8.1f} {r['seconds'] / n:>9.2f} {r['peak_tree_mb']:>8.0f} "
              f"{r['rss_main_mb']:>8.0f} {ref['seconds'] / r['seconds']:>7.2f}x "
              f"{r['peak_tree_mb'] / ref['peak_tree_mb']:>6.2f}x")
    print("\nspeed-up = reference seconds / these seconds (same N); peak MB = highest PSS of the whole process "
          "tree (main + workers), sampled every 50 ms; memory = peak / reference peak (same N).")
    return 0


def bench_dreamt(sizes: list[int], worker_counts: list[int], hours: float, root: str | None) -> int:
    """Seconds per subject and peak memory of `--format dreamt` extraction for each cohort size."""
    with tempfile.TemporaryDirectory(prefix="bench_extract_dreamt_") as tmp:
        cohort = (Path(root) if root else Path(tmp)) / f"dreamt_{hours:g}h"
        t0 = time.perf_counter()
        ids = make_dreamt_cohort(cohort, max(sizes), hours)
        csv_mb = sum(p.stat().st_size for p in (cohort / "data_64Hz").glob("*.csv")) / 2**20 / len(ids)
        print(f"DREAMT cohort: {len(ids)} participants x {hours:g} h at {DREAMT_FS} Hz ({csv_mb:.0f} MB of CSV "
              f"each) in {cohort} ({time.perf_counter() - t0:.0f} s to make)")
        rows = [(n, w, run_measured("dreamt", cohort, Path(tmp) / f"out{w}", ids[:n], w))
                for n in sizes for w in worker_counts]
    print(f"\n{'approach':<10} {'N':>3} {'workers':>7} {'total s':>8} {'s/subject':>9} {'peak MB':>8} {'main RSS':>8}")
    for n, w, r in rows:
        print(f"{'dreamt':<10} {n:>3} {w:>7} {r['seconds']:>8.1f} {r['seconds'] / n:>9.2f} {r['peak_tree_mb']:>8.0f} "
              f"{r['rss_main_mb']:>8.0f}")
    print("\npeak MB = highest PSS of the whole process tree (main + workers), sampled every 50 ms.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
