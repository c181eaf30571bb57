"""Benchmark EDF inference on CPU: seconds per 10-h night from EDF to hypnogram, ours beside the reference.

Measured in one run, on the same synthetic MESA-shaped nights (sleepppg.synthetic, PPG "Pleth" at 256 Hz)
and the same untrained SleepPPG-Net (1,200 windows, seed 0; weights do not change the cost). Each side runs
in its own fresh process (as each would be run), one after the other, --repeats times:
- reference: its inference script's per-night steps as written there: read the PPG channel in float64,
  Chebyshev II 8 Hz low-pass with sosfiltfilt, linear interpolation to 34.133 Hz, clip, z-score, pad/cut to
  1,228,800 samples (the EDF read by mne: pyedflib, which it uses, is not installed; its two float64 cache
  files are not written, which favours the reference); then the forward pass, one night per call, under
  torch.no_grad with the model as built, and a softmax;
- ours, as `python inference_ppg_only.py` runs: allocator setting (`keep_freed_memory`), model with folded
  BatchNorm, `run_edf_mode` on an empty cache (cold: preprocess in background threads + cache write + batched
  forward + CSV + hypnogram PNG + sleep report), the same call again (warm: every night from the cache), and
  `predict_proba` alone on the cached windows (forward only).
Goals: cold <= reference forward + half the reference preprocessing; warm ~ forward only.
Figures are medians over the repeats, in seconds per night: wall time (the goal) and process CPU time over
all threads (steadier when other jobs share the machine). The bench also checks that both sides give the
same hypnograms.

Outputs: a table on stdout and <workdir>/bench_infer.json.

`--csv` measures instead a wearable-style night given as a CSV table (time in s + PPG, 64 Hz, 8 h by default)
beside the same signal as an EDF, both through `run_edf_mode` (--ppg mode for the CSV): cold (empty cache:
reading, preprocessing, forward, outputs) and warm (from the cache) seconds per night, in one process.

Usage: python bench/bench_infer.py [--nights 2] [--hours 10.5] [--repeats 1] [--workdir /tmp/bench_infer]
       python bench/bench_infer.py --full      # 8 nights, 3 repeats
       python bench/bench_infer.py --csv [--csv-hours 8]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_DIR))

from sleepppg.config import load_config  # noqa: E402
from sleepppg.constants import SAMPLES_PER_WINDOW, WINDOWS_PER_SUBJECT  # noqa: E402
from sleepppg.runio import write_text_atomic  # noqa: E402
from sleepppg.runtime import keep_freed_memory  # noqa: E402

DEFAULT_NIGHTS = 2  # about two minutes on a 2-core CPU
FULL_NIGHTS, FULL_REPEATS = 8, 3
DEFAULT_HOURS = 10.5  # MESA nights are usually longer than the 10 h (1,200 epochs) that are staged
REF_TARGET_FS = 34.133333333  # the reference's rounded constant
REF_CUTOFF_HZ, REF_ORDER, REF_STOP_DB = 8.0, 8, 40  # its Chebyshev II low-pass
REF_TARGET_LEN = WINDOWS_PER_SUBJECT * SAMPLES_PER_WINDOW  # 1,228,800 samples = 10 h
MODEL_SEED = 0
MEASURES = {"reference": ("ref_preprocess", "ref_forward"),
            "ours": ("ours_cold", "ours_warm", "ours_forward_only")}

log = logging.getLogger("bench_infer")


def reference_preprocess(edf_path: Path) -> np.ndarray:
    """The reference's per-night PPG preprocessing (float64 throughout); returns (1,228,800,) float64."""
    import mne
    from scipy.signal import cheby2, sosfiltfilt

    header = mne.io.read_raw_edf(edf_path, preload=False, verbose="error")
    channel = next(c for c in header.ch_names if "pleth" in c.lower() or "ppg" in c.lower())
    raw = mne.io.read_raw_edf(edf_path, include=[channel], preload=True, verbose="error")
    x = raw.get_data()[0]
    fs = float(raw.info["sfreq"])
    sos = cheby2(N=REF_ORDER, rs=REF_STOP_DB, Wn=REF_CUTOFF_HZ / (fs / 2), btype="lowpass", output="sos")
    filtered = sosfiltfilt(sos, x)
    n_out = int(filtered.size / fs * REF_TARGET_FS)
    resampled = np.interp(np.linspace(0, filtered.size - 1, n_out), np.linspace(0, filtered.size - 1, filtered.size),
                          filtered)
    mu, sd = resampled.mean(), resampled.std()
    clipped = np.clip(resampled, mu - 3 * sd, mu + 3 * sd)
    z = (clipped - clipped.mean()) / (clipped.std() + 1e-8)
    out = np.zeros(REF_TARGET_LEN)
    out[:min(z.size, REF_TARGET_LEN)] = z[:REF_TARGET_LEN]
    return out


def reference_forward(model, ppg_T: np.ndarray) -> np.ndarray:
    """The reference's forward: one night, float32 copy, no_grad, softmax; returns predictions (1200,)."""
    import torch

    x = torch.from_numpy(ppg_T.astype(np.float32)).reshape(1, 1, -1)
    with torch.no_grad():
        probs = torch.softmax(model(x), dim=1)[0].T.numpy()
    return probs.argmax(axis=1)


def make_nights(workdir: Path, n: int, hours: float) -> list[Path]:
    """Synthetic nights (written once, reused by later runs of the same length)."""
    from sleepppg.synthetic.mesa import edf_path, write_subject

    root = workdir / f"cohort_{hours:g}h"  # the length in the name: a run asking for other nights never reuses these
    paths = []
    for i in range(n):
        sid = f"{9001 + i:04d}"
        edf = edf_path(root, sid)
        if not edf.exists():
            log.info("writing synthetic night %s (%.1f h)", sid, hours)
            write_subject(root, sid, hours=hours, seed=0)
        paths.append(edf)
    return paths


class Timer:
    """Accumulates wall and process CPU time (all threads) per measure name."""

    def __init__(self, names):
        self.wall = {k: 0.0 for k in names}
        self.cpu = {k: 0.0 for k in names}

    def __call__(self, name, fn, *fn_args):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn(*fn_args)
        self.wall[name] += time.perf_counter() - w0
        self.cpu[name] += time.process_time() - c0
        return out


def build_model():
    import torch

    from multimodal_sleep_model import SleepPPGNet

    torch.manual_seed(MODEL_SEED)
    return SleepPPGNet(n_windows=WINDOWS_PER_SUBJECT).eval()


def run_reference(edfs: list[Path], workdir: Path) -> dict:
    """One repeat of the reference side (in its own process)."""
    model = build_model()
    reference_forward(model, reference_preprocess(edfs[0]))  # one-time costs (imports, kernels) before timing
    timer = Timer(MEASURES["reference"])
    preds = [timer("ref_forward", reference_forward, model, timer("ref_preprocess", reference_preprocess, edf))
             for edf in edfs]
    np.save(workdir / "preds_reference.npy", np.stack(preds))
    return {"wall": timer.wall, "cpu": timer.cpu}


def run_ours(edfs: list[Path], workdir: Path, config: str, workers: int | None) -> dict:
    """One repeat of our side (in its own process), set up as `python inference_ppg_only.py` sets itself up."""
    import torch

    from sleepppg.cache import cache_settings, load_cache, recording_signature
    from sleepppg.runio import make_run_dir
    from sleepppg.staging import fold_batchnorm, predict_proba, run_edf_mode

    keep_freed_memory()
    model = fold_batchnorm(build_model())
    device = torch.device("cpu")
    overrides = {"inference.cache_root": str(workdir / "cache"), "inference.save_dir": str(workdir / "out"),
                 "gpu.mixed_precision": False}
    if workers is not None:
        overrides["preprocessing.workers"] = workers
    cfg = load_config(config, overrides)
    flags = {"save_csv": True, "save_graph": True, "save_json": True}
    # one-time costs (imports, kernels, matplotlib fonts, thread pools) before timing, on a separate cache
    warmup_cfg = load_config(config, {**overrides, "inference.cache_root": str(workdir / "warmup-cache")})
    shutil.rmtree(workdir / "warmup-cache", ignore_errors=True)  # a full preprocess, as the reference's warm-up
    run_edf_mode(model, WINDOWS_PER_SUBJECT, warmup_cfg, edfs[:1], make_run_dir(workdir / "out"), device, flags)
    shutil.rmtree(workdir / "cache", ignore_errors=True)
    timer = Timer(MEASURES["ours"])
    for name in ("ours_cold", "ours_warm"):
        record = timer(name, run_edf_mode, model, WINDOWS_PER_SUBJECT, cfg, edfs, make_run_dir(workdir / "out"),
                       device, flags)
        if record.failed:
            raise SystemExit(f"bench nights failed: {record.failed}")
    items = record.nights
    settings = cache_settings(cfg, WINDOWS_PER_SUBJECT)
    windows = [load_cache(Path(i["cache_dir"]), recording_signature(Path(i["source_file"])), settings)[0]
               for i in items]
    batch = cfg["inference"]["batch_size"]
    preds = []
    for k in range(0, len(windows), batch):
        probs = timer("ours_forward_only", predict_proba, model, np.stack(windows[k:k + batch]), device)
        preds += list(probs.argmax(-1))
    np.save(workdir / "preds_ours.npy", np.stack(preds))
    return {"wall": timer.wall, "cpu": timer.cpu, "n_staged": [i["n_epochs_staged"] for i in items],
            "batch_size": batch, "preprocessing_workers": cfg["preprocessing"]["workers"],
            "resample_method": cfg["preprocessing"]["resample_method"], "torch_threads": torch.get_num_threads()}


CSV_FS = 64.0  # Hz: an Empatica E4-like wearable PPG (DREAMT's BVP)
CSV_HOURS = 8.0


def write_csv_and_edf_night(workdir: Path, hours: float, fs: float = CSV_FS) -> tuple[Path, Path]:
    """One synthetic PPG night as csv/night.csv (columns time,ppg; written once) and as edf/night.edf."""
    from edfio import Edf, EdfSignal

    tag = f"{hours:g}h_{fs:g}Hz"  # a run asking for another night never reuses this one
    csv_path, edf_path = workdir / f"csv_{tag}" / "night.csv", workdir / f"edf_{tag}" / "night.edf"
    if csv_path.exists() and edf_path.exists():
        return csv_path, edf_path
    n = int(hours * 3600 * fs)
    t = np.arange(n) / fs
    rate_hz = 1.1 + 0.15 * np.sin(2 * np.pi * t / 5400)  # heart rate drifting over the night
    phase = 2 * np.pi * np.cumsum(rate_hz) / fs
    ppg = np.round(1000 * (np.sin(phase) + 0.4 * np.sin(2 * phase))
                   + 20 * np.random.default_rng(0).standard_normal(n))
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    edf_path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(f"{ti:.6f},{int(v)}" for ti, v in zip(t.tolist(), ppg.tolist()))
    write_text_atomic(csv_path, "time,ppg\n" + text + "\n")
    Edf([EdfSignal(ppg, fs, label="Pleth", physical_range=(-32768, 32767), digital_range=(-32768, 32767))],
        data_record_duration=1).write(edf_path)
    return csv_path, edf_path


def bench_csv_night(workdir: Path, config: str, hours: float) -> dict:
    """Cold and warm seconds for one CSV night (--ppg) beside the same night as EDF (--edf), one process."""
    import torch

    from sleepppg.runio import make_run_dir
    from sleepppg.staging import fold_batchnorm, run_edf_mode

    keep_freed_memory()
    csv_path, edf_path = write_csv_and_edf_night(workdir, hours)
    model = fold_batchnorm(build_model())
    device = torch.device("cpu")
    flags = {"save_csv": True, "save_graph": True, "save_json": True}
    results = {}
    for name, path, ppg_file in (("warmup", edf_path, ""), ("edf", edf_path, ""), ("csv", csv_path, str(csv_path))):
        cache = workdir / f"cache_{name}"
        shutil.rmtree(cache, ignore_errors=True)
        cfg = load_config(config, {"inference.cache_root": str(cache), "inference.save_dir": str(workdir / "out"),
                                   "gpu.mixed_precision": False, "inference.ppg_file": ppg_file})
        for phase in ("cold", "warm"):
            t0 = time.perf_counter()
            record = run_edf_mode(model, WINDOWS_PER_SUBJECT, cfg, [path], make_run_dir(workdir / "out"), device,
                                  flags)
            if record.failed:
                raise SystemExit(f"bench night failed: {record.failed}")
            items = record.nights
            results[f"{name}_{phase}_s"] = time.perf_counter() - t0
        results[f"{name}_pred"] = (Path(items[0]["outputs"]["csv"]).read_text().splitlines()[1:]
                                   if items[0]["outputs"]["csv"]
                                   else None)
    agree = np.mean([a.split(",")[3] == b.split(",")[3] for a, b in zip(results.pop("edf_pred"),
                                                                         results.pop("csv_pred"))])
    results.pop("warmup_pred")
    return {"hours": hours, "fs": CSV_FS, "csv_mb": csv_path.stat().st_size / 2**20,
            "edf_mb": edf_path.stat().st_size / 2**20, "same_stages": float(agree),
            **{k: v for k, v in results.items() if not k.startswith("warmup")}}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nights", type=int, default=DEFAULT_NIGHTS)
    p.add_argument("--hours", type=float, default=DEFAULT_HOURS)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--full", action="store_true", help=f"{FULL_NIGHTS} nights, {FULL_REPEATS} repeats")
    p.add_argument("--workdir", default="/tmp/bench_infer")
    p.add_argument("--workers", type=int, default=None,
                   help="preprocessing threads for ours (default: the config's preprocessing.workers)")
    p.add_argument("--config", default=str(REPO_DIR / "configs" / "config_demo.yaml"))
    p.add_argument("--csv", action="store_true", help="time a CSV night (64 Hz) beside the same night as EDF")
    p.add_argument("--csv-hours", type=float, default=CSV_HOURS, help="--csv: night length in hours")
    p.add_argument("--part", choices=tuple(MEASURES), help=argparse.SUPPRESS)  # internal: one side, one process
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    if args.full:
        args.nights, args.repeats = max(args.nights, FULL_NIGHTS), max(args.repeats, FULL_REPEATS)
    workdir = Path(args.workdir)
    if args.csv:
        logging.getLogger("sleepppg").setLevel(logging.ERROR)  # the staging modules' per-night warnings
        res = bench_csv_night(workdir / "csv_night", args.config, args.csv_hours)
        write_text_atomic(workdir / "bench_infer_csv.json", json.dumps(res, indent=2))
        print(f"one {res['hours']:.1f}-h night at {res['fs']:.0f} Hz, CPU, seconds: CSV ({res['csv_mb']:.0f} MB) "
              f"cold {res['csv_cold_s']:.2f}, warm {res['csv_warm_s']:.2f}; EDF ({res['edf_mb']:.0f} MB) cold "
              f"{res['edf_cold_s']:.2f}, warm {res['edf_warm_s']:.2f}; same stages {res['same_stages']:.1%}")
        return 0
    edfs = make_nights(workdir, args.nights, args.hours)
    n = len(edfs)

    if args.part:  # a child process: one side, one repeat
        logging.getLogger("sleepppg").setLevel(logging.ERROR)  # no per-night truncation warnings
        out = (run_reference(edfs, workdir) if args.part == "reference"
               else run_ours(edfs, workdir, args.config, args.workers))
        write_text_atomic(workdir / f"part_{args.part}.json", json.dumps(out))
        return 0

    wall = {k: [] for names in MEASURES.values() for k in names}
    cpu = {k: [] for k in wall}
    agree, info = [], {}
    child = [sys.executable, str(Path(__file__).resolve()), "--nights", str(n), "--hours", str(args.hours),
             "--workdir", str(workdir), "--config", args.config]
    if args.workers is not None:
        child += ["--workers", str(args.workers)]
    for rep in range(args.repeats):
        for part in MEASURES:
            log.info("repeat %d/%d: %s", rep + 1, args.repeats, part)
            subprocess.run(child + ["--part", part], check=True)
            out = json.loads((workdir / f"part_{part}.json").read_text())
            for k in MEASURES[part]:
                wall[k].append(out["wall"][k] / n)
                cpu[k].append(out["cpu"][k] / n)
            if part == "ours":
                info = out
        ref_preds, our_preds = np.load(workdir / "preds_reference.npy"), np.load(workdir / "preds_ours.npy")
        agree.append(float(np.mean([np.mean(r[:k] == o[:k]) for r, o, k in zip(ref_preds, our_preds,
                                                                                  info["n_staged"])])))

    res = {"nights": n, "hours_per_night": args.hours, "repeats": args.repeats,
           "torch_threads": info["torch_threads"], "batch_size": info["batch_size"],
           "preprocessing_workers": info["preprocessing_workers"], "resample_method": info["resample_method"],
           "prediction_agreement": statistics.median(agree)}
    for k in wall:
        res[f"{k}_s"] = statistics.median(wall[k])
        res[f"{k}_cpu_s"] = statistics.median(cpu[k])
    res["ref_total_s"] = res["ref_preprocess_s"] + res["ref_forward_s"]
    res["cold_goal_s"] = res["ref_forward_s"] + 0.5 * res["ref_preprocess_s"]
    res["cold_over_goal"] = res["ours_cold_s"] / res["cold_goal_s"]
    res["warm_over_forward_only"] = res["ours_warm_s"] / res["ours_forward_only_s"]
    res["speedup_cold_vs_reference"] = res["ref_total_s"] / res["ours_cold_s"]
    write_text_atomic(workdir / "bench_infer.json", json.dumps(res, indent=2))

    print(f"{n} nights x {args.hours} h, CPU, {res['torch_threads']} torch threads, batch {res['batch_size']}, "
          f"median of {args.repeats} run(s); seconds per night")
    for k in wall:
        print(f"  {k:<18} wall {res[k + '_s']:6.2f}   CPU (all threads) {res[k + '_cpu_s']:6.2f}")
    print(f"  reference total (preprocess + forward): wall {res['ref_total_s']:.2f}")
    print(f"  cold / (ref forward + ref preprocess / 2) = {res['cold_over_goal']:.2f}  (goal <= 1)")
    print(f"  warm / forward only = {res['warm_over_forward_only']:.2f}  (goal ~ 1)")
    print(f"  reference total / ours cold = {res['speedup_cold_vs_reference']:.2f}x; "
          f"hypnogram agreement with the reference {res['prediction_agreement']:.1%}")
    print(f"  written {workdir / 'bench_infer.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
