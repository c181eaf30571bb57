"""Benchmark: how many full nights per second one process loads from the processed HDF5 files.

Compares, on the same synthetic nights (a pulse-like PPG with noise, z-scored; W windows x 1024 samples each):

- reference: the reference's storage (float64, gzip, chunks of 100 windows) read the reference's way
  (open the file, slice `ppg` and `labels`, close, convert to float32 tensors) for every item;
- ours on the reference file: `PPGOnlyDataset` (lazy per-process handle, one `read_direct` per night into
  float32) over the same gzip float64 file, to separate the loader from the storage;
- ours: `PPGOnlyDataset` over float32 files with one night per chunk, uncompressed and lzf.

Every variant reads every night once per pass; one untimed pass first warms the page cache for all of them,
so the figures measure decoding and copying, not the disk. The goal: ours >= 10x the reference
(the reference loader measured ~14 nights/s per core on MESA).

Usage: `python bench/bench_loader.py [--nights 16] [--windows 1200] [--repeats 3]`  (about a minute)
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from multimodal_dataset_aligned import SPLITS, PPGOnlyDataset  # noqa: E402
from sleepppg.constants import SAMPLES_PER_WINDOW, TARGET_FS, WINDOWS_PER_SUBJECT  # noqa: E402

# ----------------------------------------------------------------------------------------------------------
# Constants
DEFAULT_NIGHTS = 16  # ~160 MB of float64: a minute in total on one core
REFERENCE_CHUNK_WINDOWS = 100  # the reference's chunks=(100, 1024)
GOAL_SPEEDUP = 10.0  # ours against the reference loader

log = logging.getLogger("sleepppg.bench_loader")


def synthetic_night(rng: np.random.Generator, n_windows: int) -> tuple[np.ndarray, np.ndarray]:
    """A z-scored pulse-like float64 signal (n_windows, 1024) with a slowly drifting rate, and labels."""
    n = n_windows * SAMPLES_PER_WINDOW
    rate_hz = 1.0 + 0.2 * np.sin(np.linspace(0, 20 * np.pi, n)) + 0.05 * rng.standard_normal()
    phase = 2 * np.pi * np.cumsum(rate_hz) / TARGET_FS
    x = np.sin(phase) + 0.3 * np.sin(2 * phase) + 0.3 * rng.standard_normal(n)
    x = (x - x.mean()) / x.std()
    labels = np.repeat(rng.integers(-1, 4, size=n_windows // 10 + 1), 10)[:n_windows].astype(np.int64)
    return x.reshape(n_windows, SAMPLES_PER_WINDOW), labels


def write_files(out_dir: Path, n_nights: int, n_windows: int, seed: int = 0) -> dict[str, Path]:
    """Write the reference-style PPG file, our two PPG files and one index file; return their paths."""
    rng = np.random.default_rng(seed)
    total = n_nights * n_windows
    paths = {"reference": out_dir / "ref_ppg.h5", "ours_none": out_dir / "ours_none_ppg.h5",
             "ours_lzf": out_dir / "ours_lzf_ppg.h5", "index": out_dir / "index.h5"}
    layouts = {  # name -> (dtype, compression, chunk rows)
        "reference": (np.float64, "gzip", REFERENCE_CHUNK_WINDOWS),
        "ours_none": (np.float32, None, n_windows),
        "ours_lzf": (np.float32, "lzf", n_windows),
    }
    files = {name: h5py.File(paths[name], "w") for name in layouts}
    try:
        for name, (dtype, compression, chunk) in layouts.items():
            files[name].create_dataset("ppg", shape=(total, SAMPLES_PER_WINDOW), dtype=dtype,
                                       compression=compression, chunks=(min(chunk, total), SAMPLES_PER_WINDOW))
            files[name].create_dataset("labels", shape=(total,), dtype=np.int64, compression=compression)
        with h5py.File(paths["index"], "w") as index:
            for night in range(n_nights):
                ppg_WS, labels_W = synthetic_night(rng, n_windows)
                rows = np.s_[night * n_windows:(night + 1) * n_windows]
                for f in files.values():
                    f["ppg"][rows] = ppg_WS
                    f["labels"][rows] = labels_W
                g = index.create_group(f"subjects/{9000 + night:04d}")
                g["window_indices"] = np.arange(night * n_windows, (night + 1) * n_windows)
                g.attrs.update(n_windows=n_windows, has_ecg=False)
            index.attrs.update(total_subjects=n_nights, total_windows=total)
    finally:
        for f in files.values():
            f.close()
    return paths


def reference_item(ppg_file: Path, start: int, n_windows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One night the reference's way: open, slice, close, then float32/int64 tensors."""
    with h5py.File(ppg_file, "r") as f:
        ppg_windows = f["ppg"][start:start + n_windows]
        labels = f["labels"][start:start + n_windows]
    return torch.FloatTensor(ppg_windows.reshape(-1)).unsqueeze(0), torch.LongTensor(labels)


def nights_per_second(load_all, n_nights: int, repeats: int) -> float:
    """Median nights/s over `repeats` timed passes of `load_all()` (which loads every night once)."""
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        load_all()
        rates.append(n_nights / (time.perf_counter() - t0))
    return statistics.median(rates)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Nights/s of the reference HDF5 loader vs ours (one process).")
    p.add_argument("--nights", type=int, default=DEFAULT_NIGHTS, help="synthetic nights to write and read")
    p.add_argument("--windows", type=int, default=WINDOWS_PER_SUBJECT, help="30-s windows per night")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per variant (median reported)")
    p.add_argument("--dir", type=Path, default=None, help="where to write the files (default: a temp folder)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.nights < 3 or args.windows < 1 or args.repeats < 1:
        raise SystemExit("error: need --nights >= 3 (the split needs train, val and test), --windows >= 1 "
                         "and --repeats >= 1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        t0 = time.perf_counter()
        paths = write_files(Path(tmp), args.nights, args.windows)
        sizes = {k: paths[k].stat().st_size / 1e6 for k in ("reference", "ours_none", "ours_lzf")}
        log.info("wrote %d nights x %d windows in %.1f s", args.nights, args.windows, time.perf_counter() - t0)
        starts = [i * args.windows for i in range(args.nights)]

        def reference_pass():
            for start in starts:
                reference_item(paths["reference"], start, args.windows)

        def ours_pass(ppg_file: Path):
            # all three splits together hold every night once; handles open lazily on the first item
            datasets = [PPGOnlyDataset({"ppg": ppg_file, "index": paths["index"]}, split=s,
                                       use_sleepppg_test_set=False, windows_per_subject=args.windows)
                        for s in SPLITS]

            def load_all():
                for ds in datasets:
                    for i in range(len(ds)):
                        ds[i]
            return load_all

        variants = {
            "reference (gzip float64, open per item)": (reference_pass, sizes["reference"]),
            "ours on the reference file": (ours_pass(paths["reference"]), sizes["reference"]),
            "ours (float32, no compression)": (ours_pass(paths["ours_none"]), sizes["ours_none"]),
            "ours (float32, lzf)": (ours_pass(paths["ours_lzf"]), sizes["ours_lzf"]),
        }
        for load_all, _ in variants.values():
            load_all()  # warm the page cache and the lazy handles
        rates = {name: nights_per_second(fn, args.nights, args.repeats) for name, (fn, _) in variants.items()}

    base = rates["reference (gzip float64, open per item)"]
    print(f"{args.nights} nights x {args.windows} windows, one process, median of {args.repeats} passes")
    print(f"{'loader':<42s} {'file MB':>8s} {'nights/s':>9s} {'vs reference':>13s}")
    for name, rate in rates.items():
        print(f"{name:<42s} {variants[name][1]:8.0f} {rate:9.1f} {rate / base:12.1f}x")
    best = max(rates["ours (float32, no compression)"], rates["ours (float32, lzf)"])
    print(f"goal ours >= {GOAL_SPEEDUP:g}x reference: {'met' if best / base >= GOAL_SPEEDUP else 'NOT met'} "
          f"({best / base:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
