"""Benchmark the training step of train_ppg_only.py against the reference recipe, same model, same run.

Two recipes on the same synthetic nights (bench_loader.write_files: W windows x 1,024 samples per night):

- reference: fp32 eager; the model's logits go through softmax and then CrossEntropyLoss(reduction='none')
  followed by .mean() (the reference's double softmax and padded mean); the loader opens the gzip float64
  file (chunks of 100 windows) for every night, as the reference dataset does; every 10th batch
  torch.cuda.empty_cache() on CUDA, as the reference;
- ours: logits into the masked cross-entropy of train_ppg_only (sum over scored epochs / their count); the
  loader is multimodal_dataset_aligned.PPGOnlyDataset over a float32 file with one night per chunk; on CUDA
  bf16 autocast, cuDNN autotuning, pinned memory and non-blocking copies, and torch.compile with --compile.

Both: SleepPPG-Net (multimodal_sleep_model.SleepPPGNet), Adam, gradient clipping 1.0, the same batch size.
Printed for each recipe: nights/s of the training step alone (a batch already on the device), of the loader
alone, and end to end (loader + step, what an epoch costs), then ours / reference ratios. Issue 3 goals: on
the CPU ours is no slower per step; on a GPU ours end to end >= 3.5x the reference.

Usage: python bench/bench_train.py                  (CPU: 1,200-window nights, batch 1, 3 timed steps; ~2 min)
       python bench/bench_train.py --device cuda --compile   (GPU: batch 8, 10 timed steps)
"""

from __future__ import annotations

import argparse
import json
import logging
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
from multimodal_dataset_aligned import PPGOnlyDataset  # noqa: E402
from multimodal_sleep_model import SleepPPGNet  # noqa: E402
from sleepppg_common import IGNORE_INDEX, WINDOWS_PER_SUBJECT  # noqa: E402
from train_ppg_only import masked_cross_entropy  # noqa: E402

log = logging.getLogger("sleepppg.bench_train")

# Defaults per device: a CPU needs ~7 s per 10-h night per step, so only a few steps there.
DEFAULTS = {"cpu": {"batch": 1, "steps": 3, "warmup": 1, "workers": 0},
            "cuda": {"batch": 8, "steps": 10, "warmup": 3, "workers": 4}}  # batch 8 = paper and reference
GRAD_CLIP = 1.0  # reference
LEARNING_RATE = 2.5e-4  # paper
CLASS_WEIGHTS = (1.0, 0.6, 1.6, 1.2)  # a fixed inverse-frequency-like vector; its values do not change speed
EMPTY_CACHE_EVERY = 10  # the reference's per-batch torch.cuda.empty_cache() period


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


def our_loss(logits_BCW: torch.Tensor, labels_BW: torch.Tensor, weights_C: torch.Tensor) -> torch.Tensor:
    loss_sum, n_valid = masked_cross_entropy(logits_BCW, labels_BW, weights_C)
    return loss_sum / n_valid.clamp(min=1)


class Recipe:
    """A model, optimizer and step function for one recipe on one device."""

    def __init__(self, name: str, device: torch.device, n_windows: int, amp: bool, compile_model: bool):
        self.name, self.device = name, device
        self.amp = amp and device.type == "cuda"
        torch.manual_seed(0)  # both recipes start from the same weights
        self.model = SleepPPGNet(n_windows=n_windows).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LEARNING_RATE, weight_decay=1e-5)
        self.forward = torch.compile(self.model) if compile_model else self.model
        self.loss_fn = reference_loss if name == "reference" else our_loss
        self.weights_C = torch.tensor(CLASS_WEIGHTS, device=device)
        self.non_blocking = name == "ours" and device.type == "cuda"
        self.steps_done = 0

    def to_device(self, batch):
        ppg_B1T, labels_BW = batch[0], batch[1]
        return (ppg_B1T.to(self.device, non_blocking=self.non_blocking),
                labels_BW.to(self.device, non_blocking=self.non_blocking))

    def step(self, ppg_B1T: torch.Tensor, labels_BW: torch.Tensor) -> None:
        self.model.train()
        if self.amp:
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                logits_BCW = self.forward(ppg_B1T)
        else:
            logits_BCW = self.forward(ppg_B1T)
        loss = self.loss_fn(logits_BCW, labels_BW, self.weights_C)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), GRAD_CLIP)
        self.optimizer.step()
        self.steps_done += 1
        if self.name == "reference" and self.device.type == "cuda" and self.steps_done % EMPTY_CACHE_EVERY == 0:
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
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for but torch.cuda.is_available() is False")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
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
        for name in ("reference", "ours"):
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
            figures[name] = {"step_nights_per_s": step_rate, "loader_nights_per_s": loader_rate,
                             "end_to_end_nights_per_s": e2e_rate, "warmup_s": warm_s}
            log.info("%s: step %.2f nights/s, loader %.1f nights/s, end to end %.2f nights/s (warm-up %.1f s)",
                     name, step_rate, loader_rate, e2e_rate, warm_s)
            del recipe
            if cuda:
                torch.cuda.empty_cache()

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    ours_desc = ("bf16 autocast" if device.type == "cuda" and not args.no_amp else "fp32") + \
                (" + torch.compile" if args.compile else "") + ", logits + masked CE, float32 loader"
    print(f"device: {name}; torch {torch.__version__}; nights of {args.n_windows} windows; batch {batch}; "
          f"{steps} timed steps after {warmup} warm-up; {workers} loader workers")
    print("reference: fp32 eager, softmax + CE mean, gzip float64 loader opening the file per night")
    print(f"ours:      {ours_desc}")
    print(f"{'nights/s':<14}{'reference':>12}{'ours':>12}{'ours/ref':>10}")
    for key, label in (("step_nights_per_s", "step alone"), ("loader_nights_per_s", "loader alone"),
                       ("end_to_end_nights_per_s", "end to end")):
        ref, ours = figures["reference"][key], figures["ours"][key]
        print(f"{label:<14}{ref:>12.2f}{ours:>12.2f}{ours / ref:>9.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "batch": batch, "steps": steps, "n_windows": args.n_windows,
                                         "compile": args.compile, "figures": figures}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
