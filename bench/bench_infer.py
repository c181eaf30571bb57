"""Benchmark EDF inference on CPU: seconds per 10-h night from EDF to hypnogram, ours beside the reference.

Measured in one run, on the same synthetic MESA-shaped nights (make_synthetic_mesa.py, PPG "Pleth" at 256 Hz)
and the same untrained SleepPPG-Net (1,200 windows; weights do not change the cost):
- reference preprocessing: the reference inference script's per-night steps as written there (read the PPG
  channel in float64, Chebyshev II 8 Hz low-pass with sosfiltfilt, linear interpolation to 34.133 Hz, clip,
  z-score, pad/cut to 1,228,800 samples), with the EDF read by mne (pyedflib, which it uses, is not installed);
  its cache writes are not counted, which favours the reference;
- reference forward: one night per call under torch.no_grad, float64 -> float32 copy, softmax;
- ours cold: `inference_ppg_only.run_edf_mode` on an empty cache: preprocess (extract_mesa_data, in a
  background thread) + cache write + batched forward + CSV + hypnogram PNG + sleep report;
- ours warm: the same call again, every night from the cache;
- ours forward only: `inference_ppg_only.predict_proba` on the cached windows.
Ours serves the model as `inference_ppg_only.load_model` does (BatchNorm folded into the convs); the
reference runs it unchanged; the bench checks that both give the same hypnograms.
Goals (issue 4): cold <= reference forward + half the reference preprocessing; warm ~ forward only.
Each figure is the median over --repeats runs, in seconds per night, as wall time (the goal) and as process
CPU time over all threads (steadier when other jobs share the machine).

Outputs: a table on stdout and <workdir>/bench_infer.json.

Usage: python bench/bench_infer.py [--nights 2] [--hours 10.5] [--repeats 1] [--workdir /tmp/bench_infer]
       python bench/bench_infer.py --full      # 8 nights, 3 repeats
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_DIR))

import inference_ppg_only as inf  # noqa: E402
from sleepppg_common import SAMPLES_PER_WINDOW, WINDOWS_PER_SUBJECT, load_config, write_text_atomic  # noqa: E402

DEFAULT_NIGHTS = 2  # a couple of minutes on a 2-core CPU
FULL_NIGHTS, FULL_REPEATS = 8, 3
DEFAULT_HOURS = 10.5  # MESA nights are usually longer than the 10 h staged (SPEC §3, §8)
REF_TARGET_FS = 34.133333333  # the reference's rounded constant
REF_CUTOFF_HZ, REF_ORDER, REF_STOP_DB = 8.0, 8, 40  # its Chebyshev II low-pass
REF_TARGET_LEN = WINDOWS_PER_SUBJECT * SAMPLES_PER_WINDOW  # 1,228,800 samples = 10 h

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


def reference_forward(model: torch.nn.Module, ppg_T: np.ndarray) -> np.ndarray:
    """The reference's forward: one night, float32 copy, no_grad, softmax; returns predictions (1200,)."""
    x = torch.from_numpy(ppg_T.astype(np.float32)).reshape(1, 1, -1)
    with torch.no_grad():
        probs = torch.softmax(model(x), dim=1)[0].T.numpy()
    return probs.argmax(axis=1)


def make_nights(workdir: Path, n: int, hours: float) -> list[Path]:
    """Synthetic nights (written once, reused by later runs)."""
    import make_synthetic_mesa

    root = workdir / "cohort"
    paths = []
    for i in range(n):
        sid = f"{9001 + i:04d}"
        edf = make_synthetic_mesa.edf_path(root, sid)
        if not edf.exists():
            log.info("writing synthetic night %s (%.1f h)", sid, hours)
            make_synthetic_mesa.write_subject(root, sid, hours=hours, seed=0)
        paths.append(edf)
    return paths


def per_night(seconds: list[float], n: int) -> float:
    return statistics.median(seconds) / n


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nights", type=int, default=DEFAULT_NIGHTS)
    p.add_argument("--hours", type=float, default=DEFAULT_HOURS)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--full", action="store_true", help=f"{FULL_NIGHTS} nights, {FULL_REPEATS} repeats")
    p.add_argument("--workdir", default="/tmp/bench_infer")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--config", default=str(REPO_DIR / "configs" / "config_demo.yaml"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    if args.full:
        args.nights, args.repeats = max(args.nights, FULL_NIGHTS), max(args.repeats, FULL_REPEATS)
    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = Path(args.workdir)
    edfs = make_nights(workdir, args.nights, args.hours)
    n = len(edfs)

    from multimodal_sleep_model import SleepPPGNet

    torch.manual_seed(0)
    model = SleepPPGNet(n_windows=WINDOWS_PER_SUBJECT).eval()  # the reference's forward uses it as is
    ours = inf.fold_batchnorm(copy.deepcopy(model))  # what inference_ppg_only.load_model serves
    device = torch.device("cpu")
    cfg = load_config(args.config, {"inference.cache_root": str(workdir / "cache"),
                                    "inference.save_dir": str(workdir / "out"), "gpu.mixed_precision": False})
    flags = {"save_csv": True, "save_graph": True, "save_json": True}
    # one-time costs (imports, oneDNN kernels for these shapes, matplotlib fonts, thread pools) paid by both
    # pipelines on the first night before any timing
    reference_forward(model, reference_preprocess(edfs[0]))
    warmup_cfg = load_config(args.config, {"inference.cache_root": str(workdir / "warmup-cache"),
                                           "inference.save_dir": str(workdir / "out"),
                                           "gpu.mixed_precision": False})
    inf.run_edf_mode(ours, WINDOWS_PER_SUBJECT, warmup_cfg, edfs[:1], inf.make_run_dir(workdir / "out"),
                     device, flags)

    names = ("ref_preprocess", "ref_forward", "ours_cold", "ours_warm", "ours_forward_only")
    wall: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    agree = []

    def timed(name: str, fn, *fn_args):
        """Run fn, add its wall and process CPU time (all threads) to `name`'s current repeat."""
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn(*fn_args)
        wall[name][-1] += time.perf_counter() - w0
        cpu[name][-1] += time.process_time() - c0
        return out

    settings = inf.preprocessing_settings(cfg["preprocessing"]["resample_method"],
                                          cfg["preprocessing"]["ppg_channels"], WINDOWS_PER_SUBJECT)
    batch = cfg["inference"]["batch_size"]
    for rep in range(args.repeats):
        for k in names:
            wall[k].append(0.0)
            cpu[k].append(0.0)
        log.info("repeat %d/%d: reference", rep + 1, args.repeats)
        ref_preds = [timed("ref_forward", reference_forward, model, timed("ref_preprocess", reference_preprocess, edf))
                     for edf in edfs]

        log.info("repeat %d/%d: ours cold, warm, forward only", rep + 1, args.repeats)
        shutil.rmtree(workdir / "cache", ignore_errors=True)
        for name in ("ours_cold", "ours_warm"):
            items, failures = timed(name, inf.run_edf_mode, ours, WINDOWS_PER_SUBJECT, cfg, edfs,
                                    inf.make_run_dir(workdir / "out"), device, flags)
            if failures:
                raise SystemExit(f"bench nights failed: {failures}")
        windows = [inf.load_cache(Path(i["cache_dir"]), inf.edf_signature(Path(i["edf_file"])), settings)[0]
                   for i in items]
        ours_preds = []
        for k in range(0, n, batch):
            probs = timed("ours_forward_only", inf.predict_proba, ours, np.stack(windows[k:k + batch]), device)
            ours_preds += list(probs.argmax(-1))
        # same model, same preprocessing steps: the hypnograms should agree almost everywhere
        agree.append(float(np.mean([np.mean(a[:i["n_epochs_staged"]] == b[:i["n_epochs_staged"]])
                                    for a, b, i in zip(ref_preds, ours_preds, items)])))

    res = {"nights": n, "hours_per_night": args.hours, "repeats": args.repeats,
           "torch_threads": torch.get_num_threads(), "batch_size": batch,
           "resample_method": cfg["preprocessing"]["resample_method"],
           "prediction_agreement": statistics.median(agree)}
    for k in names:
        res[f"{k}_s"] = per_night(wall[k], n)
        res[f"{k}_cpu_s"] = per_night(cpu[k], n)
    res["ref_total_s"] = res["ref_preprocess_s"] + res["ref_forward_s"]
    res["cold_goal_s"] = res["ref_forward_s"] + 0.5 * res["ref_preprocess_s"]
    res["cold_over_goal"] = res["ours_cold_s"] / res["cold_goal_s"]
    res["warm_over_forward_only"] = res["ours_warm_s"] / res["ours_forward_only_s"]
    res["speedup_cold_vs_reference"] = res["ref_total_s"] / res["ours_cold_s"]
    write_text_atomic(workdir / "bench_infer.json", json.dumps(res, indent=2))

    print(f"{n} nights x {args.hours} h, CPU, {res['torch_threads']} torch threads, batch {res['batch_size']}, "
          f"median of {args.repeats} run(s); seconds per night")
    print(f"  reference total (preprocess + forward): wall {res['ref_total_s']:6.2f}")
    for k in names:
        print(f"  {k:<18} wall {res[k + '_s']:6.2f}   CPU (all threads) {res[k + '_cpu_s']:6.2f}")
    print(f"  cold / (ref forward + ref preprocess / 2) = {res['cold_over_goal']:.2f}  (goal <= 1)")
    print(f"  warm / forward only = {res['warm_over_forward_only']:.2f}  (goal ~ 1)")
    print(f"  reference total / ours cold = {res['speedup_cold_vs_reference']:.2f}x; "
          f"hypnogram agreement with the reference {res['prediction_agreement']:.1%}")
    print(f"  written {workdir / 'bench_infer.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
