"""Benchmark the training step of train_ppg_only.py against the reference recipe, same model, same run.

Two recipes on the same synthetic nights (bench_loader.write_files: W windows x 1,024 samples per night):

- reference: fp32 eager; the model's logits go through softmax and then CrossEntropyLoss(reduction='none')
  followed by .mean() (the reference's double softmax and padded mean); the loader opens the gzip float64
  file (chunks of 100 windows) for every night, as the reference dataset does; every 10th batch
  torch.cuda.empty_cache() on CUDA, as the reference;
- ours: the step train_ppg_only.py runs, imported from it (sleepppg.step.train_step: logits into the masked
  cross-entropy of sleepppg.loss, sum over scored epochs / their count; NaN/Inf checks of the batch, loss and
  gradient norm read in one host sync per step; the optimizer step only after them); the loader is multimodal_dataset_aligned.PPGOnlyDataset over a float32 file with one night per chunk; on CUDA
  bf16 autocast, cuDNN autotuning, pinned memory and non-blocking copies, and torch.compile with --compile.

Both: SleepPPG-Net (multimodal_sleep_model.SleepPPGNet), Adam, gradient clipping 1.0, the same batch size.
Printed for each recipe: nights/s of the training step alone (a batch already on the device), of the loader
alone, and end to end (loader + step, what an epoch costs), then ours / reference ratios. Goals: on
the CPU ours is no slower per step; on a GPU ours end to end >= 3.5x the reference.

Memory (--mode memory or both): our training step with and without activation checkpointing of the encoder
(multimodal_sleep_model.set_activation_checkpointing), at batch 1 and 2 (--memory-batches) nights of
--n-windows windows. Each setting runs in a fresh Python process (so one setting's freed memory cannot hide
the next one's peak) that builds the model, optimizer and a random batch, then reports the peak memory rise
of the step above what it held before it: on the CPU the process's peak resident set size (VmHWM of
/proc/self/status, reset just before the first step) minus its resident size then; on CUDA
torch.cuda.max_memory_allocated minus the memory allocated before it, and beside it the peak
torch.cuda.max_memory_reserved (the caching allocator's blocks) and the CUDA context (torch.cuda.mem_get_info
once CUDA is up, before any tensor), with cuDNN autotuning on as in training. Per night = the slope between the
two batch sizes; the batch that fits in 24/40/80 GB is derived from that slope and the fixed part (it is not
measured): on CUDA from reserved + context (the allocated-only figure, optimistic, is printed beside it). CPU figures are fp32; a GPU step with bf16 autocast keeps smaller activations, so run it on the GPU
for GPU figures.

Usage: python bench/bench_train.py                  (CPU: 1,200-window nights, batch 1, 3 timed steps, then
                                                     the memory table; ~6 min on an idle 2-core machine)
       python bench/bench_train.py --device cuda --compile   (GPU: batch 8, 10 timed steps)
       python bench/bench_train.py --mode memory --memory-batches 1 2   (memory and step time only)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "bench"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from bench_loader import reference_item, write_files  # noqa: E402
from memory import peak_resident_bytes  # noqa: E402

from multimodal_dataset_aligned import PPGOnlyDataset  # noqa: E402
from multimodal_sleep_model import SleepPPGNet, set_activation_checkpointing  # noqa: E402
from sleepppg.constants import IGNORE_INDEX, N_CLASSES, SAMPLES_PER_WINDOW, WINDOWS_PER_SUBJECT  # noqa: E402
from sleepppg.runtime import keep_freed_memory  # noqa: E402
from sleepppg.step import train_step  # noqa: E402

log = logging.getLogger("sleepppg.bench_train")

# Defaults per device: a CPU needs ~7 s per 10-h night per step, so only a few steps there.
DEFAULTS = {"cpu": {"batch": 1, "steps": 3, "warmup": 1, "workers": 0},
            "cuda": {"batch": 8, "steps": 10, "warmup": 3, "workers": 4}}  # batch 8 = paper and reference
GRAD_CLIP = 1.0  # reference
LEARNING_RATE = 2.5e-4  # paper
CLASS_WEIGHTS = (1.0, 0.6, 1.6, 1.2)  # a fixed inverse-frequency-like vector; its values do not change speed
EMPTY_CACHE_EVERY = 10  # the reference's per-batch torch.cuda.empty_cache() period
MEMORY_BUDGETS_GB = (24, 40, 80)  # common GPU sizes (e.g. L4/A10 24 GB, A100 40/80 GB, H100 80 GB)
GB = 1e9


# ----------------------------------------------------------------------------------------------------------
# The two recipes


class ReferenceNights(torch.utils.data.Dataset):
    """The reference loader: open the gzip float64 file, slice one night, close, for every item."""

    def __init__(self, ppg_file: Path, starts: np.ndarray, n_windows: int):
        self.ppg_file, self.starts, self.n_windows = ppg_file, starts, n_windows

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, idx: int):
        return reference_item(self.ppg_file, int(self.starts[idx]), self.n_windows)


def reference_loss(logits_BCW: torch.Tensor, labels_BW: torch.Tensor, weights_C: torch.Tensor) -> torch.Tensor:
    """The reference: softmax output into CrossEntropyLoss (softmax twice), mean over padded entries too."""
    probs_BWC = logits_BCW.softmax(dim=1).permute(0, 2, 1)
    loss = F.cross_entropy(probs_BWC.reshape(-1, probs_BWC.shape[-1]), labels_BW.reshape(-1), weight=weights_C,
                           ignore_index=IGNORE_INDEX, reduction="none")
    return loss.mean()


class Recipe:
    """A model, optimizer and step function for one recipe on one device."""

    def __init__(self, name: str, device: torch.device, n_windows: int, amp: bool, compile_model: bool,
                 activation_checkpointing: bool = False):
        self.name, self.device = name, device
        self.amp = amp and device.type == "cuda"
        torch.manual_seed(0)  # both recipes start from the same weights
        self.model = SleepPPGNet(n_windows=n_windows).to(device)
        set_activation_checkpointing(self.model, activation_checkpointing)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LEARNING_RATE, weight_decay=1e-5)
        self.forward = torch.compile(self.model) if compile_model else self.model
        self.weights_C = torch.tensor(CLASS_WEIGHTS, device=device)
        self.non_blocking = name == "ours" and device.type == "cuda"
        self.steps_done = 0

    def to_device(self, batch):
        ppg_B1T, labels_BW = batch[0], batch[1]
        return (ppg_B1T.to(self.device, non_blocking=self.non_blocking),
                labels_BW.to(self.device, non_blocking=self.non_blocking))

    def step(self, ppg_B1T: torch.Tensor, labels_BW: torch.Tensor) -> None:
        if self.name == "ours":  # the step training runs, its NaN/Inf checks and one host sync included
            result = train_step(self.forward, self.optimizer, [ppg_B1T], labels_BW, self.weights_C, amp=self.amp,
                                grad_clip=GRAD_CLIP)
            if not result.ok:
                raise SystemExit(f"ours: a step failed its checks (loss {float(result.loss):g})")
            return
        self.model.train()
        if self.amp:
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                logits_BCW = self.forward(ppg_B1T)
        else:
            logits_BCW = self.forward(ppg_B1T)
        loss = reference_loss(logits_BCW, labels_BW, self.weights_C)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), GRAD_CLIP)
        self.optimizer.step()
        self.steps_done += 1
        if self.device.type == "cuda" and self.steps_done % EMPTY_CACHE_EVERY == 0:
            torch.cuda.empty_cache()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------------------
# Timing


def make_loader(dataset, batch: int, n_batches: int, workers: int, pin_memory: bool, persistent: bool):
    """Shuffled batches drawn with replacement, so any number of steps works with few nights on disk."""
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=batch * n_batches,
                                             generator=torch.Generator().manual_seed(0))
    return torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers,
                                       pin_memory=pin_memory, persistent_workers=persistent and workers > 0)


def time_step(recipe: Recipe, batch, steps: int, warmup: int) -> tuple[float, float]:
    """(nights/s of the step alone, seconds of the warm-up, compile included) with one resident batch."""
    ppg_B1T, labels_BW = recipe.to_device(batch)
    t0 = time.perf_counter()
    for _ in range(warmup):
        recipe.step(ppg_B1T, labels_BW)
    sync(recipe.device)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        recipe.step(ppg_B1T, labels_BW)
    sync(recipe.device)
    return steps * ppg_B1T.shape[0] / (time.perf_counter() - t0), warm_s


def time_loader(loader, n_batches: int) -> float:
    """Nights/s of the loader alone (workers started before the clock)."""
    it = iter(loader)
    first = next(it)
    t0 = time.perf_counter()
    nights = 0
    for _, batch in zip(range(n_batches), it):
        nights += batch[0].shape[0]
    rate = nights / (time.perf_counter() - t0)
    del first
    return rate


def time_end_to_end(recipe: Recipe, loader, steps: int, warmup: int) -> float:
    """Nights/s of loader + transfer + step, after `warmup` steps drawn from the same iterator."""
    it = iter(loader)
    for _ in range(warmup):
        recipe.step(*recipe.to_device(next(it)))
    sync(recipe.device)
    t0 = time.perf_counter()
    nights = 0
    for _ in range(steps):
        batch = next(it)
        recipe.step(*recipe.to_device(batch))
        nights += batch[0].shape[0]
    sync(recipe.device)
    return nights / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------------------
# The comparison

def compare(args: argparse.Namespace, device: torch.device, device_name: str) -> dict:
    """The reference recipe vs ours (step alone, loader alone, end to end); prints the table, returns figures."""
    defaults = DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
    batch = args.batch or defaults["batch"]
    steps = args.steps or defaults["steps"]
    warmup = defaults["warmup"] if args.warmup is None else args.warmup
    workers = defaults["workers"] if args.workers is None else args.workers

    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        files = write_files(work, args.nights, args.n_windows)
        log.info("wrote %d nights of %d windows in %.1f s under %s", args.nights, args.n_windows,
                 time.perf_counter() - t0, work)
        ours_ds = PPGOnlyDataset({"ppg": files["ours_none"], "index": files["index"]}, split="train",
                                 use_sleepppg_test_set=False, windows_per_subject=args.n_windows)
        ref_ds = ReferenceNights(files["reference"], ours_ds.starts, args.n_windows)
        n_batches = warmup + steps
        figures: dict[str, dict] = {}
        # Each recipe runs twice, in the order reference, ours, ours, reference, and keeps its best rates: a
        # machine that speeds up or slows down during the run, or a first run that warms caches and thread pools
        # for the second, then favours neither side (run once each, the order alone moved the CPU step ratio
        # between 1.0x and 1.6x).
        for name in ("reference", "ours", "ours", "reference"):
            recipe = Recipe(name, device, args.n_windows, amp=name == "ours" and not args.no_amp,
                            compile_model=name == "ours" and args.compile)
            ds = ref_ds if name == "reference" else ours_ds
            cuda = device.type == "cuda"
            torch.backends.cudnn.benchmark = name == "ours"  # read at every conv call; the reference ran without
            loader_args = dict(batch=batch, n_batches=n_batches, workers=workers,
                               pin_memory=cuda, persistent=name == "ours")  # reference: pin_memory=True
            first_batch = next(iter(make_loader(ds, batch, 1, 0, False, False)))
            step_rate, warm_s = time_step(recipe, first_batch, steps, warmup)
            loader_rate = time_loader(make_loader(ds, **{**loader_args, "n_batches": n_batches + 1}), n_batches)
            e2e_rate = time_end_to_end(recipe, make_loader(ds, **loader_args), steps, warmup)
            this = {"step_nights_per_s": step_rate, "loader_nights_per_s": loader_rate,
                    "end_to_end_nights_per_s": e2e_rate, "warmup_s": warm_s}
            if name in figures:  # the second run of this recipe: the best of the two for each rate
                this = {key: max(value, figures[name][key]) if key != "warmup_s" else figures[name][key]
                        for key, value in this.items()}
            figures[name] = this
            log.info("%s: step %.2f nights/s, loader %.1f nights/s, end to end %.2f nights/s (warm-up %.1f s)",
                     name, step_rate, loader_rate, e2e_rate, warm_s)
            del recipe
            if cuda:
                torch.cuda.empty_cache()

    ours_desc = (("bf16 autocast" if device.type == "cuda" and not args.no_amp else "fp32")
                 + (" + torch.compile" if args.compile else "")
                 + ", training's step (masked CE, checks, one sync), float32 loader")
    print(f"device: {device_name}; torch {torch.__version__}; nights of {args.n_windows} windows; batch {batch}; "
          f"{steps} timed steps after {warmup} warm-up; {workers} loader workers; best of 2 runs per recipe "
          "(order reference, ours, ours, reference)")
    print("reference: fp32 eager, softmax + CE mean, gzip float64 loader opening the file per night")
    print(f"ours:      {ours_desc}")
    print(f"{'nights/s':<14}{'reference':>12}{'ours':>12}{'ours/ref':>10}")
    for key, label in (("step_nights_per_s", "step alone"), ("loader_nights_per_s", "loader alone"),
                       ("end_to_end_nights_per_s", "end to end")):
        ref, ours = figures["reference"][key], figures["ours"][key]
        print(f"{label:<14}{ref:>12.2f}{ours:>12.2f}{ours / ref:>9.2f}x")
    return {**figures, "batch": batch, "steps": steps}



# ----------------------------------------------------------------------------------------------------------
# Memory: one fresh process per setting


def resident_bytes() -> int:
    """This process's resident set size now (Linux /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def reset_peak_resident() -> None:
    """Reset this process's peak-RSS mark to its current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as err:  # older kernel or no permission: the peak then counts from process start
        log.warning("cannot reset the peak RSS mark (%s); the peak includes the setup before the step", err)


def probe_memory(device: torch.device, n_windows: int, batch: int, checkpointing: bool, amp: bool,
                 steps: int) -> dict:
    """In this (fresh) process: peak memory rise and time of our training step for one setting.

    One untimed step first (it also allocates the gradients and Adam's state, and on CUDA lets cuDNN autotune,
    as in training: cudnn.benchmark on), then `steps` timed steps; the peak covers all of them. On CUDA also
    the peak reserved by the caching allocator (what the card must hold: allocated plus the allocator's cached
    blocks) and the CUDA context (device memory in use once CUDA is up, before any tensor: torch.cuda.mem_get_info;
    on a shared card it counts other processes too). Returns a dict of plain numbers (bytes, seconds).
    """
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # as train_ppg_only.py (kernel_settings): autotuned workspaces count
        torch.cuda.init()
        free, total = torch.cuda.mem_get_info(device)
        context = total - free
    recipe = Recipe("ours", device, n_windows, amp=amp, compile_model=False, activation_checkpointing=checkpointing)
    g = torch.Generator().manual_seed(0)
    ppg_B1T = torch.randn(batch, 1, n_windows * SAMPLES_PER_WINDOW, generator=g).to(device)
    labels_BW = torch.randint(0, N_CLASSES, (batch, n_windows), generator=g).to(device)
    sync(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        reset_peak_resident()
        before = resident_bytes()
    recipe.step(ppg_B1T, labels_BW)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        recipe.step(ppg_B1T, labels_BW)
    sync(device)
    step_s = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated(device) if cuda else peak_resident_bytes()
    row = {"batch": batch, "activation_checkpointing": checkpointing, "before_bytes": before,
           "peak_rise_bytes": peak - before, "step_s": step_s, "nights_per_s": batch / step_s}
    if cuda:
        free_after, _ = torch.cuda.mem_get_info(device)
        row.update(peak_allocated_bytes=peak, peak_reserved_bytes=torch.cuda.max_memory_reserved(device),
                   context_bytes=context, device_used_bytes=total - free_after, device_total_bytes=total)
    return row


def run_probe(args: argparse.Namespace, batch: int, checkpointing: bool) -> dict:
    """probe_memory in a fresh interpreter (this script with --probe-memory); its last stdout line is JSON."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--probe-memory", "--device", args.device,
           "--n-windows", str(args.n_windows), "--batch", str(batch), "--memory-steps", str(args.memory_steps),
           "--threads", str(args.threads)]
    cmd += ["--activation-checkpointing"] if checkpointing else []
    cmd += ["--no-amp"] if args.no_amp else []
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"memory probe (batch {batch}, checkpointing {checkpointing}) failed with status "
                         f"{done.returncode}: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def fit_batches(per_night: float, fixed: float, budgets_gb=MEMORY_BUDGETS_GB) -> dict[int, int | None]:
    """Largest batch with fixed + batch * per_night <= budget, per budget in GB (derived, not measured).

    None where the slope is not positive (nights too short for the batch to show in the peak).
    """
    return {gb: max(0, math.floor((gb * GB - fixed) / per_night)) if per_night > 0 else None for gb in budgets_gb}


def memory_table(args: argparse.Namespace) -> dict:
    """Run every (checkpointing, batch) probe; return the rows, per-night slopes and derived batch sizes."""
    rows, summary = [], {}
    lo, hi = sorted(args.memory_batches)[0], sorted(args.memory_batches)[-1]
    for checkpointing in (False, True):
        by_batch = {}
        for batch in sorted(set(args.memory_batches)):
            row = run_probe(args, batch, checkpointing)
            log.info("memory: checkpointing %s, batch %d: peak rise %.2f GB, step %.1f s",
                     "on" if checkpointing else "off", batch, row["peak_rise_bytes"] / GB, row["step_s"])
            rows.append(row)
            by_batch[batch] = row
        per_night = (by_batch[hi]["peak_rise_bytes"] - by_batch[lo]["peak_rise_bytes"]) / (hi - lo)
        # what does not grow with the batch: on CUDA the model, optimizer and allocator before the step too
        fixed = by_batch[lo]["peak_rise_bytes"] - lo * per_night
        fixed += by_batch[lo]["before_bytes"] if args.device.startswith("cuda") else 0
        entry = {"per_night_bytes": per_night, "fixed_bytes": fixed, "fits": fit_batches(per_night, fixed)}
        if args.device.startswith("cuda"):  # what the card must hold: the allocator's reserved peak + context
            entry["fits_allocated"] = entry["fits"]
            per_night = (by_batch[hi]["peak_reserved_bytes"] - by_batch[lo]["peak_reserved_bytes"]) / (hi - lo)
            fixed = by_batch[lo]["peak_reserved_bytes"] - lo * per_night + by_batch[lo]["context_bytes"]
            entry.update(per_night_bytes=per_night, fixed_bytes=fixed, fits=fit_batches(per_night, fixed),
                         basis="max_memory_reserved + CUDA context")
        summary["on" if checkpointing else "off"] = entry
    return {"rows": rows, "summary": summary}


def print_memory(mem: dict, device_name: str, n_windows: int, cuda: bool) -> None:
    how = ("peak of torch.cuda.max_memory_allocated (rise over the step) and max_memory_reserved; cuDNN "
           "autotuning on" if cuda else "peak RSS rise (VmHWM minus RSS before the step) of a fresh process "
           "per setting")
    print(f"\ntraining-step memory, ours ({device_name}; {'bf16 autocast' if cuda else 'fp32'}; nights of "
          f"{n_windows} windows; {how}):")
    extra = f"{'reserved GB':>13}{'context GB':>12}{'in use GB':>11}" if cuda else ""
    print(f"{'checkpointing':<15}{'batch':>6}{'peak rise GB':>14}{extra}{'step s':>9}{'nights/s':>10}")
    for row in mem["rows"]:
        extra = (f"{row['peak_reserved_bytes'] / GB:>13.2f}{row['context_bytes'] / GB:>12.2f}"
                 f"{row['device_used_bytes'] / GB:>11.2f}" if cuda else "")
        print(f"{'on' if row['activation_checkpointing'] else 'off':<15}{row['batch']:>6}"
              f"{row['peak_rise_bytes'] / GB:>14.2f}{extra}{row['step_s']:>9.2f}{row['nights_per_s']:>10.3f}")
    for key, s in mem["summary"].items():
        fits = ", ".join(f"{gb} GB: {'n/a' if n is None else n}" for gb, n in s["fits"].items())
        basis = f" ({s['basis']})" if "basis" in s else ""
        print(f"checkpointing {key}: {s['per_night_bytes'] / GB:.2f} GB per night (slope between the batch sizes), "
              f"fixed {s['fixed_bytes'] / GB:.2f} GB{basis}; largest batch that fits (derived from the slope, not "
              f"measured): {fits}")
        if "fits_allocated" in s:
            fits = ", ".join(f"{gb} GB: {'n/a' if n is None else n}" for gb, n in s["fits_allocated"].items())
            print(f"  (from max_memory_allocated alone, optimistic: {fits})")


# ----------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Training-step nights/s: reference recipe vs ours, same run.")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--n-windows", type=int, default=WINDOWS_PER_SUBJECT, help="windows per night (1,200 = 10 h)")
    p.add_argument("--nights", type=int, default=4, help="nights written to disk (batches are drawn from them)")
    p.add_argument("--batch", type=int, default=None, help="nights per step (default: 1 on CPU, 8 on CUDA)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 3 on CPU, 10 on CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 1 CPU, 3 CUDA)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: 0 CPU, 4 CUDA)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads on the CPU (default 0 = torch's default, one per core). On an "
                        "idle 2-core VM 2 threads ran the step 1.8x faster than 1; on a busy one (other "
                        "processes on the cores) 1 thread was far faster, as idle threads spin")
    p.add_argument("--compile", action="store_true", help="ours: torch.compile the model (CUDA)")
    p.add_argument("--no-amp", action="store_true", help="ours: no bf16 autocast on CUDA")
    p.add_argument("--work-dir", type=Path, default=None, help="where to write the HDF5 files (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    p.add_argument("--mode", choices=("compare", "memory", "both"), default="both",
                   help="compare = reference vs ours; memory = our step's memory and time with and without "
                        "activation checkpointing; both (default)")
    p.add_argument("--memory-batches", type=int, nargs=2, default=[1, 2], metavar=("B1", "B2"),
                   help="the two batch sizes (nights) of the memory table (default 1 2)")
    p.add_argument("--memory-steps", type=int, default=1, help="timed steps per memory setting, after one untimed")
    p.add_argument("--probe-memory", action="store_true", help=argparse.SUPPRESS)  # internal: one setting
    p.add_argument("--activation-checkpointing", action="store_true", help=argparse.SUPPRESS)  # with --probe-memory
    args = p.parse_args(argv)
    if min(args.memory_batches) < 1 or len(set(args.memory_batches)) != 2:
        p.error("--memory-batches needs two different positive batch sizes")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for but torch.cuda.is_available() is False")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.probe_memory:
        keep_freed_memory()  # the allocator setting train_ppg_only.py runs with (faster steps, a larger peak)
        print(json.dumps(probe_memory(device, args.n_windows, args.batch or 1, args.activation_checkpointing,
                                      not args.no_amp, args.memory_steps)))
        return 0
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    figures: dict[str, dict] = {}
    if args.mode in ("compare", "both"):
        figures = compare(args, device, name)
    memory = memory_table(args) if args.mode in ("memory", "both") else None
    if memory:
        print_memory(memory, name, args.n_windows, device.type == "cuda")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "n_windows": args.n_windows, "compile": args.compile,
                                         "figures": figures, "memory": memory}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
