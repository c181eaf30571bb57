"""Train SleepPPG-Net (PPG only) or its PPG+ECG variant on the processed MESA HDF5 files, then test it.

The reference training recipe (the public sleep-staging-models scripts) with its defects fixed: the model
returns logits that go straight into CrossEntropyLoss; the loss is summed over scored epochs and divided by
their number (label -1 = unscored or padding, ignored); class weights are inverse frequencies over *all*
training labels (read from the label array, not the signals); checkpoints are loaded with
`weights_only=True`. The validation and test loss is the same mean without class weights (as the reference);
early stopping and the best checkpoint follow it (or the validation kappa, pooled or median per subject:
`training.select_best_by`), the learning rate follows validation kappa (ReduceLROnPlateau, mode max). With
`training.segment_windows` N > 0 training items are random N-window crops of the nights (less memory per
step), W // N crops of each night per epoch so that an epoch still covers the data about once; validation and
test always stage whole nights.

Inputs: the three HDF5 files named in the config (`data.ppg_file`, `data.index_file`, and `data.ecg_file` for
the PPG+ECG model), nights of `data.windows_per_subject` windows x 1,024 samples (30 s at 34.13 Hz).

Outputs, one folder per run: `<output.save_dir>/<model>_<YYYYmmdd_HHMMSS>[_runN]/`
    checkpoints/  config.json, best_model.pth (best by training.select_best_by), checkpoint_epoch_N.pth (every
                  output.save_frequency epochs), last.pth (every epoch, for --resume)
    logs/         TensorBoard: Train/Loss, Val/Loss, Val/Overall_Accuracy, Val/Overall_Kappa, Val/Overall_F1,
                  Val/Median_Kappa, Train/Learning_Rate, Time/Epoch_Seconds, Speed/Train_Nights_per_s, a
                  confusion-matrix image and a validation hypnogram each epoch, hparams with test metrics
    results/      test_results.json, confusion_matrix_epoch_<N|final>.png
    console_logs/ <run folder name>.log (the console log, through a logging file handler)
With several runs (`training.num_runs` or --runs) a `summary_results_<timestamp>.json` in save_dir holds the
mean/median/std of the test metrics over runs (seed = training.seed + run, as the reference).

Every checkpoint holds everything needed to continue (model kind and arguments, weights, config, epoch,
metrics, history, optimizer/scheduler state, early-stopping state, RNG states) in weights_only-safe types, and
is written atomically. On CPU a run resumed from `last.pth` ends with the same history and weights as an
uninterrupted run.

Transfer learning: `--init-from CHECKPOINT` (training.init_from) starts from the weights of a trained model,
ours or the reference's, instead of random ones, e.g. a MESA model fine-tuned on another cohort's HDF5 files;
`--freeze-encoder [N]` (training.freeze_encoder_epochs) keeps the 8 ResConv blocks of the encoder fixed for the
first N epochs (all epochs without N). The parent must be of the same model kind, window count, TCN causality
(and fusion); otherwise the run stops before it makes a folder. The parent's path and sha256 go into
config.json (training.init_from, training.init_from_sha256), every checkpoint (`parent_checkpoint`, with the
parent's validation figures on this run's validation set before any step) and the TensorBoard hparams.

Multi-GPU: `torchrun --nproc_per_node=K train_ppg_only.py ...` trains with DistributedDataParallel; rank 0
logs and saves; validation and test metrics are computed over the whole set, gathered from all ranks.

Bad input, and what happens (exit status 0 done, 1 bad data or a diverged run, 2 bad setup, 130 Ctrl-C):
- before the first step, for every night of the split: files readable as HDF5 (else one line, 2); each
  subject's rows one block of windows_per_subject rows, its labels integers in -1..3 and the data files'
  subject_ids on those rows equal to its ID (else the subject is named, 1); signal values are checked for
  NaN/Inf as each batch is read (the subject is named, 1);
- a NaN/Inf loss or gradient stops training before the optimizer step, naming epoch, step and nights (1):
  last.pth and best_model.pth keep the last good epoch;
- Ctrl-C (130) keeps last.pth of the last finished epoch and prints the --resume command;
- --resume refuses (2) when the data files (path, size, mtime), the split or a config key that shapes training
  changed since the run started, naming what changed, unless --resume-anyway (then the new learning rate,
  weight decay and schedule apply from the resumed epoch; training.select_best_by never changes on resume);
  an unreadable last.pth falls back to the newest intact checkpoint of the run, saying so.

Usage: python train_ppg_only.py --config configs/config_cloud.yaml --model ppg_only [--epochs 2] [--resume]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import logging
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sleepppg.cli import log_to_file, positive_int, setup_logging
from sleepppg.config import adopt_recorded_parent_hash, load_config, validate_config
from sleepppg.constants import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_SETUP, IGNORE_INDEX, N_CLASSES, STAGE_NAMES
from sleepppg.errors import ConfigError, SetupError
from sleepppg.figures import confusion_figure, hypnogram_figure, save_figure
from sleepppg.metrics import compute_metrics, summary_stats
from sleepppg.runio import atomic_output, make_run_dir, write_json
from sleepppg.runtime import keep_freed_memory, resolve_device

log = logging.getLogger("train_ppg_only")

MODEL_KINDS = ("ppg_only", "real_ecg")  # what --model may name besides "both"
LAST_CHECKPOINT = "last.pth"  # rewritten after every epoch; --resume continues from it
BEST_CHECKPOINT = "best_model.pth"  # best validation figure (training.select_best_by; the reference: lowest loss)
# training.select_best_by -> (history key, +1 when higher is better / -1 when lower is better)
SELECT_BEST_BY = {"val_loss": ("val_losses", -1), "val_kappa": ("val_overall_kappas", +1),
                  "val_median_kappa": ("val_median_kappas", +1)}
# Keys of the per-epoch history; deterministic values only, so a resumed run reproduces them exactly.
HISTORY_KEYS = ("train_losses", "val_losses", "val_overall_accuracies", "val_overall_kappas",
                "val_overall_f1_scores", "val_median_kappas", "learning_rates")
TIMING_KEYS = ("epoch_seconds", "train_nights_per_s")  # per epoch; not reproducible, so kept apart
SCALAR_TAGS = {"Train/Loss": "train_losses", "Val/Loss": "val_losses", "Val/Overall_Accuracy": "val_overall_accuracies",
               "Val/Overall_Kappa": "val_overall_kappas", "Val/Overall_F1": "val_overall_f1_scores",
               "Val/Median_Kappa": "val_median_kappas", "Train/Learning_Rate": "learning_rates"}  # TensorBoard
RUN_SUBDIRS = ("checkpoints", "logs", "results", "console_logs")
DEFAULT_CONFIG = "configs/config_cloud.yaml"
# --resume accepts changes of these config keys/sections (they do not change what is trained, or, for the
# epoch count, are meant to: train longer); any other changed key is refused without --resume-anyway
RESUME_FREE_KEYS = ("training.num_epochs", "training.num_runs")
RESUME_FREE_SECTIONS = ("preprocessing", "inference")
EPOCH_SEED_STRIDE = 1_000_003  # per-epoch shuffle seed = run seed * stride + epoch (a prime, so runs differ)


# ----------------------------------------------------------------------------------------------------------
# Errors that stop training (bad setup, SetupError, is exit status 2; these two are 1)


class DataError(Exception):
    """Bad data in the processed files (labels, IDs or signal values of a subject, named in the message)."""


class TrainingDiverged(Exception):
    """The loss or the gradient norm became NaN or infinite; the last good checkpoint is kept."""
FREEZE_ALL_EPOCHS = -1  # training.freeze_encoder_epochs: the encoder stays frozen for the whole run
ENCODER_NAMES = ("encoder", "ppg_encoder", "ecg_encoder")  # the 8-ResConv-block encoders of our two models


# ----------------------------------------------------------------------------------------------------------
# Loss and class weights


def masked_cross_entropy(logits_BCW: torch.Tensor, labels_BW: torch.Tensor,
                         class_weights_C: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy summed over scored epochs, and how many epochs were scored.

    Args:
        logits_BCW: raw class scores (B, C, W); cast to float32 so bf16 autocast does not round the loss.
        labels_BW: int64 labels (B, W); IGNORE_INDEX (-1) marks unscored epochs and padding.
        class_weights_C: optional per-class weights (C,).
    Returns:
        (loss_sum, n_valid): the weighted sum of per-epoch losses over labels != -1 (a scalar tensor) and the
        number of such epochs (an int64 scalar tensor). The mean loss is loss_sum / n_valid: every scored epoch
        counts once, padding not at all (the reference divided by the padded count).
    """
    loss_sum = F.cross_entropy(logits_BCW.float(), labels_BW, weight=class_weights_C,
                               ignore_index=IGNORE_INDEX, reduction="sum")
    return loss_sum, (labels_BW != IGNORE_INDEX).sum()


def class_weights_from_labels(labels: np.ndarray, n_classes: int = N_CLASSES) -> np.ndarray:
    """Inverse-frequency class weights, normalised to sum to `n_classes` (as the reference).

    Args:
        labels: int labels of any shape (all training nights); -1 is ignored.
    Returns:
        float32 (n_classes,); a class that never occurs is counted once, so its weight stays finite.
    """
    labels = np.asarray(labels).ravel()
    counts = np.bincount(labels[labels >= 0], minlength=n_classes)[:n_classes].astype(np.float64)
    inverse = 1.0 / np.maximum(counts, 1.0)
    return (inverse / inverse.sum() * n_classes).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# Small helpers: seeds and RNG state, JSON, folders


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(run_seed: int, epoch: int) -> int:
    """Shuffle seed of one epoch: a function of (run seed, epoch) only, so a resumed run shuffles alike."""
    return (run_seed * EPOCH_SEED_STRIDE + epoch) % 2**63


def capture_rng_state(device: torch.device) -> dict:
    """RNG states of torch (CPU, and `device` if CUDA), numpy and python as weights_only-safe types."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def restore_rng_state(state: dict, device: torch.device) -> None:
    """Inverse of capture_rng_state (the CUDA state only when both the checkpoint and `device` are CUDA)."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def newest_run_checkpoint(save_dir: Path, model_kind: str) -> Path:
    """checkpoints/last.pth of the most recently updated `<model_kind>_*` run under save_dir."""
    candidates = [p for p in save_dir.glob(f"{model_kind}_*/checkpoints/{LAST_CHECKPOINT}") if p.is_file()]
    if not candidates:
        raise SetupError(f"--resume: no {model_kind} run with checkpoints/{LAST_CHECKPOINT} under {save_dir}")
    return max(candidates, key=lambda p: p.stat().st_mtime)


def load_resume_point(path: Path) -> Resume:
    """The checkpoint at `path`; when it cannot be read (a truncated or corrupt file, e.g. a disk that filled
    up), the newest intact checkpoint beside it (checkpoint_epoch_N.pth, best_model.pth), saying so."""
    try:
        return Resume(path, load_checkpoint(path))
    except SetupError as err:
        problem = str(err)
    others = sorted((p for p in path.parent.glob("*.pth") if p.name != path.name),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for other in others:
        try:
            ckpt = load_checkpoint(other)
        except SetupError as err:
            log.warning("%s", err)
            continue
        log.warning("%s; resuming from the newest intact checkpoint instead: %s (epoch %d; later epochs are "
                    "trained again)", problem, other, ckpt["epoch"])
        return Resume(other, ckpt)
    raise SetupError(f"{problem}; no other intact checkpoint in {path.parent} to resume from")


def resolve_resume_path(path: str) -> Path:
    """A checkpoint file, a run folder (-> checkpoints/last.pth) or a checkpoints folder (-> last.pth)."""
    p = Path(path)
    for candidate in (p, p / "checkpoints" / LAST_CHECKPOINT, p / LAST_CHECKPOINT):
        if candidate.is_file():
            return candidate
    raise SetupError(f"--resume: {path} is neither a checkpoint file nor a run folder holding "
                     f"checkpoints/{LAST_CHECKPOINT}")


# ----------------------------------------------------------------------------------------------------------
# Distributed context


class DistContext:
    """Rank/world of this process; a single process when not launched by torchrun (WORLD_SIZE unset or 1)."""

    def __init__(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def init(self, device: torch.device) -> None:
        if not self.enabled:
            return
        import torch.distributed as dist

        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        log.info("distributed: rank %d of %d, backend %s", self.rank, self.world_size, backend)

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """rank 0's `obj` on every rank."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj: Any) -> list:
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def all_sum(self, values: list[float]) -> list[float]:
        if not self.enabled:
            return values
        return [float(sum(v)) for v in zip(*self.all_gather(values))]


# ----------------------------------------------------------------------------------------------------------
# One epoch of training / one pass of evaluation


def batch_on_device(batch: list, n_inputs: int, subjects: list[str], device: torch.device):
    """(inputs list, labels_BW, index_B) of a loader batch [ppg, (ecg,) labels, idx], the inputs checked for
    NaN/Inf (DataError naming the night) and moved with the labels to `device` (asynchronously on CUDA, from
    pinned memory); index_B stays on the CPU."""
    inputs, labels_BW, index_B = tuple(batch[:n_inputs]), batch[n_inputs], batch[n_inputs + 1]
    check_inputs_finite(inputs, index_B, subjects)
    non_blocking = device.type == "cuda"
    inputs = [x.to(device, non_blocking=non_blocking) for x in inputs]
    return inputs, labels_BW.to(device, non_blocking=non_blocking), index_B


def _autocast(device: torch.device, enabled: bool):
    """bf16 autocast on `device` (CUDA, or the CPU when gpu.mixed_precision_on_cpu asks for it)."""
    if enabled:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def check_inputs_finite(inputs: tuple, index_B: torch.Tensor, subjects: list[str]) -> None:
    """Raise DataError naming the subjects whose signal holds NaN or Inf (checked on each batch as read)."""
    for name, x_B1T in zip(("PPG", "ECG"), inputs):
        finite_B = torch.isfinite(x_B1T).flatten(1).all(dim=1)
        if not bool(finite_B.all()):
            bad = [subjects[int(i)] for i in index_B[~finite_B]]
            raise DataError(f"subject {', '.join(bad)}: NaN or infinite {name} values in the processed data "
                            f"(re-extract the night, or leave the subject out)")


def train_one_epoch(model, loader, optimizer, class_weights_C, device, *, n_inputs: int, amp: bool,
                    grad_clip: float, progress: bool, desc: str, subjects: list[str], frozen: tuple = ()) -> dict:
    """One pass over the training loader. Returns {"loss_sum", "n_valid", "windows", "seconds"} (this rank;
    windows: all windows trained on, so that crops and whole nights give comparable speeds).
    The modules in `frozen` (a frozen encoder) stay in eval mode: see `set_encoder_frozen`.

    Raises DataError on a non-finite input (naming the subject) and TrainingDiverged when the loss or the
    gradient norm is NaN/Inf, before the optimizer step, so the weights stay those of the last good step."""
    from tqdm import tqdm

    model.train()
    for module in frozen:
        module.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n_valid = torch.zeros((), dtype=torch.int64, device=device)
    windows = 0
    start = time.perf_counter()
    for step, batch in enumerate(tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True), 1):
        inputs, labels_BW, index_B = batch_on_device(batch, n_inputs, subjects, device)
        with _autocast(device, amp):
            logits_BCW = model(*inputs)
        batch_loss_sum, batch_valid = masked_cross_entropy(logits_BCW, labels_BW, class_weights_C)
        loss = batch_loss_sum / batch_valid.clamp(min=1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=grad_clip)  # grad_clip > 0
        if not bool(torch.isfinite(loss) & torch.isfinite(grad_norm)):  # one device sync per step
            nights_B = ", ".join(subjects[int(i)] for i in index_B)
            raise TrainingDiverged(f"{desc}, step {step}: the loss is {float(loss.detach()):g} and the gradient "
                                   f"norm {float(grad_norm):g} (nights {nights_B})")
        optimizer.step()
        loss_sum += batch_loss_sum.detach().double()
        n_valid += batch_valid
        windows += labels_BW.numel()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {"loss_sum": float(loss_sum.item()), "n_valid": int(n_valid.item()), "windows": windows,
            "seconds": time.perf_counter() - start}


@torch.no_grad()
def predict(model, loader, device, *, n_inputs: int, amp: bool, progress: bool, desc: str,
            subjects: list[str]) -> dict:
    """Predictions of this rank's share of a loader built with return_index=True.

    Returns {"index": (N,), "preds": (N, W) int8, "labels": (N, W) int8, "loss_sum": (N,), "n_valid": (N,)}
    where loss_sum is the unweighted cross-entropy summed over each night's scored epochs.
    """
    from tqdm import tqdm

    model.eval()
    parts: dict[str, list] = {"index": [], "preds": [], "labels": [], "loss_sum": [], "n_valid": []}
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        inputs, labels_BW, index_B = batch_on_device(batch, n_inputs, subjects, device)
        with _autocast(device, amp):
            logits_BCW = model(*inputs)
        loss_BW = F.cross_entropy(logits_BCW.float(), labels_BW, ignore_index=IGNORE_INDEX, reduction="none")
        parts["index"].append(index_B.cpu().numpy())
        parts["preds"].append(logits_BCW.argmax(dim=1).to(torch.int8).cpu().numpy())
        parts["labels"].append(labels_BW.to(torch.int8).cpu().numpy())
        parts["loss_sum"].append(loss_BW.double().sum(dim=1).cpu().numpy())
        parts["n_valid"].append((labels_BW != IGNORE_INDEX).sum(dim=1).cpu().numpy())
    if not parts["index"]:
        return {"index": np.zeros(0, dtype=np.int64), "preds": None, "labels": None,
                "loss_sum": np.zeros(0), "n_valid": np.zeros(0, dtype=np.int64)}
    return {k: np.concatenate(v) for k, v in parts.items()}


def merge_predictions(parts: list[dict]) -> dict:
    """Merge the shares of all ranks, keep each night once (DistributedSampler pads with repeats), sort by index."""
    parts = [p for p in parts if p["index"].size]
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    _, first = np.unique(merged["index"], return_index=True)
    return {k: v[first] for k, v in merged.items()}


def evaluation_metrics(pred: dict, subjects: list[str]) -> dict:
    """Loss over scored epochs plus compute_metrics (pooled and per-subject) for merged predictions."""
    labels_NW = pred["labels"].astype(np.int64)
    preds_NW = pred["preds"].astype(np.int64)
    sids_NW = np.broadcast_to(np.asarray(subjects, dtype=object)[pred["index"]][:, None], labels_NW.shape)
    metrics = compute_metrics(labels_NW, preds_NW, sids_NW)
    metrics["loss"] = float(pred["loss_sum"].sum() / max(int(pred["n_valid"].sum()), 1))
    metrics["median_kappa"] = metrics["per_subject_kappa_stats"]["median"]
    metrics["n_nights"] = int(labels_NW.shape[0])
    return metrics


def evaluate(model, loader, subjects, device, ctx: DistContext, *, n_inputs: int, amp: bool, desc: str):
    """Whole-set metrics (gathered from every rank) and the merged predictions."""
    share = predict(model, loader, device, n_inputs=n_inputs, amp=amp, progress=ctx.is_main, desc=desc,
                    subjects=subjects)
    merged = merge_predictions(ctx.all_gather(share))
    if merged["index"].size != len(subjects):
        raise RuntimeError(f"{desc}: predictions cover {merged['index'].size} of {len(subjects)} nights")
    return evaluation_metrics(merged, subjects), merged


# ----------------------------------------------------------------------------------------------------------
# Data


def check_data_files(cfg: dict, model_kind: str) -> None:
    """Stop with a clear message when an input HDF5 file is missing."""
    needed = {"data.ppg_file": cfg["data"]["ppg_file"], "data.index_file": cfg["data"]["index_file"]}
    if model_kind == "real_ecg":
        needed["data.ecg_file"] = cfg["data"]["ecg_file"]
    missing = [f"{key} = {path}" for key, path in needed.items() if not Path(path).is_file()]
    if missing:
        raise SetupError("processed HDF5 file(s) not found: " + "; ".join(missing)
                         + " (run extract_mesa_data.py first, or fix the paths in the config)")


def data_file_keys(model_kind: str) -> tuple[str, ...]:
    return ("ppg_file", "index_file", "ecg_file") if model_kind == "real_ecg" else ("ppg_file", "index_file")


def preflight_data(cfg: dict, model_kind: str) -> dict:
    """Stop on bad data setup (missing or unreadable files, too few valid subjects for a split; SetupError)
    or bad data (DataError, see `check_nights`) before any run folder is made, so a failed start leaves
    nothing behind that `--resume` could later pick up.

    Returns:
        the data fingerprint: {"files": {config key: file signature (path, size, mtime)}, "split": {"train",
        "val", "test": subject IDs}}; checkpoints keep it so that `--resume` can tell what changed.
    """
    import h5py

    import multimodal_dataset_aligned as mda
    from sleepppg.preprocessing import file_signature

    data = cfg["data"]
    if cfg["training"]["segment_windows"] > data["windows_per_subject"]:
        raise SetupError(f"training.segment_windows = {cfg['training']['segment_windows']} is longer than a night "
                         f"(data.windows_per_subject = {data['windows_per_subject']}); use 0 for whole nights")
    check_data_files(cfg, model_kind)
    for key in data_file_keys(model_kind):
        try:
            h5py.File(data[key], "r").close()
        except OSError as err:
            raise SetupError(f"data.{key} = {data[key]} is not a readable HDF5 file (truncated, or not HDF5): "
                             f"{err}") from None
    test_subjects = mda.test_subjects_from_config(cfg)  # ConfigError (exit 2) when the list is missing or empty
    try:
        split = mda.make_split(data["index_file"], data["windows_per_subject"],
                               cfg["training"]["use_sleepppg_test_set"], cfg["training"]["seed"], test_subjects)
    except (ValueError, OSError, KeyError) as err:
        raise SetupError(f"cannot build the train/val/test split from {data['index_file']}: {err}") from None
    for name, subjects in (("train", split.train), ("validation", split.val), ("test", split.test)):
        if not subjects:
            raise SetupError(f"the {name} set is empty: too few valid subjects with exactly "
                             f"{data['windows_per_subject']} windows in {data['index_file']}")
    check_nights(cfg, model_kind, split.train + split.val + split.test)
    return {"files": {f"data.{key}": file_signature(data[key]) for key in data_file_keys(model_kind)},
            "split": {"train": list(split.train), "val": list(split.val), "test": list(split.test)}}


def check_nights(cfg: dict, model_kind: str, subjects: list[str]) -> None:
    """What can be checked cheaply before the first step (labels and IDs only; signal values are checked as
    each batch is read): each subject's rows per the index are one block of windows_per_subject rows, its
    labels are integers in -1..3, and the data files' `subject_ids` on those rows read that subject (a
    mismatch means the index and the data come from different extraction runs, or IDs were swapped).
    Raises DataError naming the subjects, SetupError when a file lacks an array or is too short."""
    import h5py

    import multimodal_dataset_aligned as mda

    data, n_windows = cfg["data"], cfg["data"]["windows_per_subject"]
    try:
        starts = mda.read_night_starts(data["index_file"], subjects, n_windows)
    except ValueError as err:
        raise DataError(str(err)) from None
    rows_NW = starts[:, None] + np.arange(n_windows)[None, :]
    sids_N1 = np.asarray(subjects)[:, None]
    for key in data_file_keys(model_kind):
        if key == "index_file":
            continue
        path = data[key]
        try:
            with h5py.File(path, "r") as f:
                missing = [name for name in ("subject_ids", "labels")[:2 if key == "ppg_file" else 1] if name not in f]
                if missing:
                    raise SetupError(f"data.{key} = {path} has no {' or '.join(missing)} array")
                n_rows = f["subject_ids"].shape[0]
                if rows_NW.size and rows_NW.max() >= n_rows:
                    raise SetupError(f"data.{key} = {path} has {n_rows} rows but the index refers to row "
                                     f"{rows_NW.max()}")
                ids_NW = f["subject_ids"][()][rows_NW]
                labels = f["labels"][()] if key == "ppg_file" else None
        except OSError as err:
            raise SetupError(f"data.{key} = {path} cannot be read (truncated?): {err}") from None
        ids_NW = np.char.decode(ids_NW) if ids_NW.dtype.kind == "S" else ids_NW.astype(str)
        wrong = np.flatnonzero((ids_NW != sids_N1).any(axis=1))
        if wrong.size:
            i = int(wrong[0])
            found = sorted(set(ids_NW[i].tolist()))
            raise DataError(f"subject {subjects[i]}: the index puts it at rows {starts[i]}..{starts[i] + n_windows - 1}"
                            f" of data.{key} = {path}, but subject_ids there read {', '.join(found[:3])} "
                            f"({wrong.size} subject(s) disagree, e.g. {', '.join(subjects[j] for j in wrong[:5])}): "
                            f"were the index and the data written by different extraction runs?")
        if labels is None:
            continue
        if labels.dtype.kind not in "iuf":
            raise SetupError(f"data.{key} = {path}: labels must be numbers, got dtype {labels.dtype}")
        labels_NW = labels[rows_NW]
        bad_NW = (labels_NW < IGNORE_INDEX) | (labels_NW >= N_CLASSES) | (labels_NW != np.floor(labels_NW))
        if labels.dtype.kind == "f":
            bad_NW |= ~np.isfinite(labels_NW)
        bad = np.flatnonzero(bad_NW.any(axis=1))
        if bad.size:
            i = int(bad[0])
            value = labels_NW[i][bad_NW[i]][0].item()
            raise DataError(f"subject {subjects[i]}: label {value!r} in data.{key} = {path} (labels must be "
                            f"integers -1..{N_CLASSES - 1}; {bad.size} subject(s) affected, e.g. "
                            f"{', '.join(subjects[j] for j in bad[:5])})")


def build_data(cfg: dict, model_kind: str, device: torch.device, ctx: DistContext):
    """Loaders and datasets from multimodal_dataset_aligned (the one owner of the split and the readers).
    `main` has run `preflight_data` first: the files exist and no split set is empty."""
    import multimodal_dataset_aligned as mda

    data = cfg["data"]
    try:
        loaders = mda.get_dataloaders(
            mda.data_paths_from_config(cfg),
            batch_size=data["batch_size"],
            num_workers=data["num_workers"],
            model_type=model_kind,
            use_sleepppg_test_set=cfg["training"]["use_sleepppg_test_set"],
            windows_per_subject=data["windows_per_subject"],
            seed=cfg["training"]["seed"],
            test_subjects=mda.test_subjects_from_config(cfg),
            distributed=ctx.enabled,
            pin_memory=device.type == "cuda",
            return_index=True,
            segment_windows=cfg["training"]["segment_windows"],
        )
    except ValueError as err:  # e.g. a night whose rows are not contiguous in the files
        raise SetupError(f"cannot build the train/val/test split: {err}") from None
    return loaders


def set_loader_epoch(loader, run_seed: int, epoch: int) -> None:
    """Make this epoch's shuffle (and crops) a function of (run seed, epoch) only, so a resumed run shuffles
    alike: DistributedSampler.set_epoch under DDP, else a RandomSampler generator reseeded every epoch; the
    crops of a SegmentSampler are drawn from the same epoch seed."""
    from torch.utils.data import DistributedSampler, RandomSampler

    from multimodal_dataset_aligned import SegmentSampler

    sampler = loader.sampler
    if isinstance(sampler, SegmentSampler):
        sampler.set_epoch(epoch_seed(run_seed, epoch))
        sampler = sampler.sampler
    if isinstance(sampler, DistributedSampler):  # its permutation is seeded with seed + epoch
        sampler.seed = 0  # (seed = run seed would make run r's epoch e + 1 shuffle as run r + 1's epoch e)
        sampler.set_epoch(epoch_seed(run_seed, epoch))
    elif isinstance(sampler, RandomSampler):
        if sampler.generator is None:
            sampler.generator = torch.Generator()
        sampler.generator.manual_seed(epoch_seed(run_seed, epoch))


def training_class_weights(cfg: dict, train_ds) -> np.ndarray:
    """Inverse-frequency weights from the labels of every training night (labels only, no signals)."""
    from multimodal_dataset_aligned import load_labels

    labels = load_labels(cfg["data"]["ppg_file"], cfg["data"]["index_file"], list(train_ds.subjects),
                         cfg["data"]["windows_per_subject"])
    weights = class_weights_from_labels(labels)
    counts = np.bincount(labels[labels >= 0].ravel(), minlength=N_CLASSES)
    log.info("training labels over %d nights: %s; class weights %s", len(train_ds.subjects),
             ", ".join(f"{n} {c}" for n, c in zip(STAGE_NAMES, counts)),
             ", ".join(f"{w:.3f}" for w in weights))
    return weights


# ----------------------------------------------------------------------------------------------------------
# Transfer learning: start from a trained model (training.init_from), optionally with a frozen encoder


@dataclass
class ParentCheckpoint:
    """The trained model a run starts from: what is recorded about it, and its weights."""

    # path, sha256, checkpoint_format (+ reference_version), model_kind, model_args, epoch (+ val_before_training)
    record: dict
    state_dict: dict


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_model_args(cfg: dict, model_kind: str) -> dict:
    """The constructor arguments of a new run's model, from the config (model.tcn_causal where the config
    schema has it)."""
    args = {"n_windows": cfg["data"]["windows_per_subject"]}
    if "tcn_causal" in cfg["model"]:
        args["tcn_causal"] = cfg["model"]["tcn_causal"]
    if model_kind == "real_ecg":
        args["fusion_strategy"] = cfg["model"]["real_ecg"]["fusion_strategy"]
    return args


def check_transfer_settings(cfg: dict) -> None:
    """Stop on transfer settings that cannot work (before anything is loaded or made)."""
    train_cfg = cfg["training"]
    freeze = train_cfg["freeze_encoder_epochs"]
    if freeze < FREEZE_ALL_EPOCHS:
        raise ConfigError(f"training.freeze_encoder_epochs must be 0 (never), N > 0 (the first N "
                         f"epochs) or -1 (every epoch), got {freeze}")
    if freeze != 0 and not train_cfg["init_from"]:
        raise ConfigError("training.freeze_encoder_epochs (--freeze-encoder) needs training.init_from "
                         "(--init-from): freezing a randomly initialised encoder would only cripple the model")


def parent_mismatches(parent: dict, wanted: dict) -> list[str]:
    """What keeps a parent checkpoint (as load_model_from_checkpoint returns it) from being this run's model."""
    args = parent["model_args"]
    out = []
    trained_n_windows = parent.get("trained_n_windows", args.get("n_windows"))
    if trained_n_windows != wanted["n_windows"]:
        out.append(f"it was trained on nights of {trained_n_windows} windows, this run has "
                   f"data.windows_per_subject {wanted['n_windows']}")
    causal, wanted_causal = args.get("tcn_causal", True), wanted.get("tcn_causal", True)  # the reference: causal
    if causal != wanted_causal:
        out.append(f"its TCN is {'causal' if causal else 'centred'} (tcn_causal {str(causal).lower()}), this run "
                   f"has model.tcn_causal {str(wanted_causal).lower()}")
    if "fusion_strategy" in wanted and args.get("fusion_strategy") != wanted["fusion_strategy"]:
        out.append(f"its fusion is {args.get('fusion_strategy')!r}, this run has model.real_ecg.fusion_strategy "
                   f"{wanted['fusion_strategy']!r}")
    if args.get("num_classes", N_CLASSES) != N_CLASSES:
        out.append(f"it stages {args.get('num_classes')} classes, not {N_CLASSES}")
    return out


def load_parent(cfg: dict, model_kind: str) -> ParentCheckpoint | None:
    """The checkpoint named by training.init_from, checked against this run's model; None when the key is empty.

    Ours or the reference's format (multimodal_sleep_model.load_model_from_checkpoint reads both, with
    weights_only=True). Stops the program, naming the problem, when the file is missing or unreadable, its
    sha256 is not training.init_from_sha256 (when that is set), or its model kind, window count, TCN causality,
    fusion or class count differ from this run's: all before any run folder is made.
    """
    train_cfg = cfg["training"]
    if not train_cfg["init_from"]:
        return None
    from multimodal_sleep_model import load_model_from_checkpoint

    path = Path(train_cfg["init_from"])
    if not path.is_file():
        raise SetupError(f"training.init_from (--init-from) = {path}: checkpoint not found")
    sha256 = file_sha256(path)
    expected = train_cfg["init_from_sha256"]
    if expected and expected.lower() != sha256:
        raise SetupError(f"training.init_from = {path} has sha256 {sha256}, but training.init_from_sha256 is "
                         f"{expected}: not the parent this config was written for")
    try:
        model, ckpt = load_model_from_checkpoint(path, "cpu", expected_kind=model_kind)
    except ValueError as err:  # the model module's CheckpointError: one line naming the file and the problem
        raise SetupError(f"training.init_from (--init-from): {err}") from None
    mismatches = parent_mismatches(ckpt, run_model_args(cfg, model_kind))
    if mismatches:
        raise SetupError(f"training.init_from = {path} cannot start this {model_kind} run: " + "; ".join(mismatches))
    epoch = ckpt.get("epoch")
    record = {"path": str(path.resolve()), "sha256": sha256,
              "checkpoint_format": ckpt.get("checkpoint_format", "sleepppg"),
              "model_kind": ckpt["model_kind"], "model_args": dict(ckpt["model_args"]),
              "epoch": int(epoch) if isinstance(epoch, (int, np.integer)) else None}
    fmt = record["checkpoint_format"]
    if "reference_version" in ckpt:
        record["reference_version"] = ckpt["reference_version"]
        fmt += f": {ckpt['reference_version']}"
    log.info("starting from %s (%s format, %s, epoch %s, sha256 %s)", path, fmt, model_kind, record["epoch"], sha256)
    return ParentCheckpoint(record, model.state_dict())


def encoder_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The 8-ResConv-block encoder(s) of a model: SleepPPG-Net's one, the PPG+ECG model's two."""
    from multimodal_sleep_model import unwrap_model

    model = unwrap_model(model)
    return [getattr(model, name) for name in ENCODER_NAMES if hasattr(model, name)]


def encoder_frozen_at(freeze_encoder_epochs: int, epoch: int) -> bool:
    """Is the encoder frozen in `epoch` (counted from 1)? 0 = never, N > 0 = the first N epochs, -1 = always."""
    return freeze_encoder_epochs == FREEZE_ALL_EPOCHS or epoch <= freeze_encoder_epochs


def set_encoder_frozen(model: torch.nn.Module, frozen: bool) -> tuple:
    """Freeze (or unfreeze) the encoder weights; returns the modules to keep in eval mode while training.

    A frozen encoder also keeps its BatchNorm layers in eval mode: in train mode they would normalise with the
    batch's statistics and overwrite their running means and variances with the new cohort's, so the
    "frozen" encoder would compute a different function from the parent's (and the layers after it were
    trained on the parent's), and few nights per batch make those batch statistics noisy. The optimizer
    skips parameters without a gradient, so Adam's weight decay does not touch them either.
    """
    modules = encoder_modules(model)
    for module in modules:
        for param in module.parameters():
            param.requires_grad_(not frozen)
    return tuple(modules) if frozen else ()


# ----------------------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_output(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict:
    """A training checkpoint, loaded with weights_only=True (no arbitrary code runs)."""
    import pickle

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SetupError(f"cannot load checkpoint {path} (truncated or corrupt?): {first_line}") from None
    if not isinstance(ckpt, dict):
        raise SetupError(f"{path} is not a training checkpoint (a {type(ckpt).__name__}, not a dict)")
    missing = [k for k in ("model_kind", "model_args", "model_state_dict", "config", "epoch", "history",
                           "optimizer_state_dict", "scheduler_state_dict", "early_stopping", "rng_state")
               if k not in ckpt]
    if missing:
        raise SetupError(f"{path} cannot be resumed from: missing {', '.join(missing)}")
    return ckpt


# ----------------------------------------------------------------------------------------------------------
# One training run: the state that changes each epoch, what the run trains with, and the steps


@dataclass
class TrainState:
    """What changes from epoch to epoch (weights, optimizer and RNG aside) and must survive a resume.

    `to_checkpoint` and `from_checkpoint` are the one place where it is written to and read from a checkpoint
    (under the keys epoch, early_stopping, history and timing).
    """

    epoch: int = 0  # last finished epoch (0 = none)
    select_best_by: str = "val_loss"  # the validation figure behind best_model.pth and early stopping
    best_value: float = math.nan  # its best value so far (NaN = no epoch yet)
    best_val_loss: float = math.inf  # the validation loss of the best epoch
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the best epoch
    stopped: bool = False  # early stopping fired
    history: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in HISTORY_KEYS})
    timing: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in TIMING_KEYS})

    def record_epoch(self, epoch: int, values: dict[str, float], timing: dict[str, float], patience: int) -> bool:
        """Append epoch `epoch`'s history (`values` keyed by HISTORY_KEYS) and timing, update early stopping;
        returns True when the `select_best_by` figure improved (a new best checkpoint). A NaN figure (a kappa
        undefined on this validation set) never improves."""
        self.epoch = epoch
        for key in HISTORY_KEYS:
            self.history[key].append(float(values[key]))
        for key in TIMING_KEYS:
            self.timing[key].append(float(timing[key]))
        key, sign = SELECT_BEST_BY[self.select_best_by]
        value = float(values[key])
        improved = math.isfinite(value) and (math.isnan(self.best_value) or sign * (value - self.best_value) > 0)
        if improved:
            self.best_value, self.best_val_loss = value, float(values["val_losses"])
            self.best_epoch, self.bad_epochs = epoch, 0
        else:
            self.bad_epochs += 1
            self.stopped = self.bad_epochs >= patience
        return improved

    def to_checkpoint(self) -> dict:
        return {
            "epoch": self.epoch,
            "early_stopping": {"select_best_by": self.select_best_by, "best_value": self.best_value,
                               "best_val_loss": self.best_val_loss, "best_epoch": self.best_epoch,
                               "bad_epochs": self.bad_epochs, "stopped": self.stopped},
            "history": {k: list(v) for k, v in self.history.items()},
            "timing": {k: list(v) for k, v in self.timing.items()},
        }

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> TrainState:
        early = ckpt["early_stopping"]
        timing = ckpt.get("timing", {})
        # checkpoints from before training.select_best_by followed the validation loss
        best_val_loss = float(early["best_val_loss"])
        return cls(epoch=int(ckpt["epoch"]), select_best_by=early.get("select_best_by", "val_loss"),
                   best_value=float(early.get("best_value", best_val_loss if math.isfinite(best_val_loss)
                                              else math.nan)),
                   best_val_loss=best_val_loss,
                   best_epoch=int(early["best_epoch"]), bad_epochs=int(early["bad_epochs"]),
                   stopped=bool(early["stopped"]),
                   history={k: list(ckpt["history"].get(k, [])) for k in HISTORY_KEYS},
                   timing={k: list(timing.get(k, [])) for k in TIMING_KEYS})


@dataclass
class Resume:
    """A checkpoint to continue from, and the run folder it belongs to."""

    path: Path
    ckpt: dict

    @property
    def run_dir(self) -> Path:
        return self.path.resolve().parent.parent


@dataclass
class RunSetup:
    """What one (model kind, run) trains with; built once by `build_run`, not changed by training."""

    cfg: dict
    kind: str
    run_id: int | None
    seed: int  # training seed: training.seed + run (the reference's 42 + run, runs counted from 1)
    device: torch.device
    ctx: DistContext
    run_dir: Path
    raw_model: torch.nn.Module  # the plain model trained (n_windows = segment_windows when training on crops)
    model: torch.nn.Module  # what the training step calls: raw_model, wrapped by DDP and/or torch.compile
    eval_raw_model: torch.nn.Module  # the same weights at whole-night length (raw_model itself without crops)
    eval_model: torch.nn.Module  # what validation and test call (eval_raw_model, compiled if asked)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    class_weights: np.ndarray  # (C,) float32, from every training label
    loaders: dict[str, Any]  # split -> DataLoader (items carry their index)
    datasets: dict[str, Any]  # split -> dataset
    amp: bool  # bf16 autocast
    data_fingerprint: dict  # the data files' signatures and the split (see preflight_data)
    writer: Any  # TensorBoard SummaryWriter on rank 0, None elsewhere
    parent: dict | None = None  # the record of the checkpoint this run started from (training.init_from)

    @property
    def n_inputs(self) -> int:
        return 1 if self.kind == "ppg_only" else 2

    def folder(self, name: str) -> Path:
        """checkpoints/, logs/, results/ or console_logs/ of the run folder."""
        return self.run_dir / name


def use_autocast(cfg: dict, device: torch.device) -> bool:
    """bf16 autocast: gpu.mixed_precision on CUDA; on the CPU only with gpu.mixed_precision_on_cpu as well
    (there it is mostly slower than fp32; it lets a CPU run take the same code path as a GPU run)."""
    gpu = cfg["gpu"]
    return gpu["mixed_precision"] and (device.type == "cuda" or gpu["mixed_precision_on_cpu"])


def inductor_cpp_compiler() -> str | None:
    """Path of the C++ compiler that torch.compile's CPU backend (inductor) would call, or None without one."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler  # where torch itself picks it ($CXX, g++, ...)

        return shutil.which(get_cpp_compiler())
    except (ImportError, RuntimeError):  # torch._inductor.exc.InvalidCxxCompiler is a RuntimeError
        return None


def check_compile_setup(cfg: dict, device: torch.device) -> None:
    """gpu.compile on the CPU builds C++ kernels: stop before any run folder is made when no compiler exists."""
    if cfg["gpu"]["compile"] and device.type == "cpu" and inductor_cpp_compiler() is None:
        raise SetupError("gpu.compile is true, but torch.compile on the CPU needs a C++ compiler and none was "
                         "found (torch looks for $CXX, g++ or clang++): install one, or set gpu.compile: false")


def run_seed(cfg: dict, run_id: int | None) -> int:
    return cfg["training"]["seed"] + (run_id if run_id is not None else 1)


def open_run_dir(cfg: dict, model_kind: str, run_id: int | None, ctx: DistContext,
                 resume: Resume | None) -> Path:
    """The run folder (rank 0 creates a new one unless resuming; every rank gets its path) and its subfolders."""
    if resume is not None:
        run_dir = resume.run_dir
    else:
        run_dir = (make_run_dir(cfg["output"]["save_dir"], f"{model_kind}_", "" if run_id is None else f"_run{run_id}")
                   if ctx.is_main else None)
    run_dir = Path(ctx.broadcast(str(run_dir) if run_dir is not None else None))
    if ctx.is_main:
        for name in RUN_SUBDIRS:
            (run_dir / name).mkdir(parents=True, exist_ok=True)
    return run_dir


@contextlib.contextmanager
def kernel_settings(device: torch.device):
    """Reproducible kernels on the CPU (resume equivalence), autotuned ones on CUDA; the process-wide
    deterministic-algorithms flag is set back as it was afterwards."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def wrap_model(raw_model: torch.nn.Module, cfg: dict, ctx: DistContext, device: torch.device) -> torch.nn.Module:
    """What the steps call: DDP under torchrun (it syncs the gradients of the parameters that require one when
    it is built, so it is rebuilt when the encoder is unfrozen), then torch.compile when gpu.compile is set."""
    model = raw_model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg["gpu"]["compile"]:
        model = torch.compile(model)
    return model


def build_run(cfg: dict, model_kind: str, run_id: int | None, device: torch.device, ctx: DistContext,
              run_dir: Path, resume: Resume | None, data_fingerprint: dict,
              parent: ParentCheckpoint | None = None) -> tuple[RunSetup, TrainState]:
    """Data, model, optimizer, scheduler and writer of one run, and its state (restored when resuming); a new
    run with a `parent` starts from its weights."""
    from multimodal_sleep_model import build_model, count_parameters, set_activation_checkpointing, with_n_windows

    seed = int(resume.ckpt.get("seed", run_seed(cfg, run_id))) if resume else run_seed(cfg, run_id)
    seed_everything(seed + ctx.rank)
    train_loader, val_loader, test_loader, train_ds, val_ds, test_ds = build_data(cfg, model_kind, device, ctx)
    log.info("split: %d train, %d validation, %d test nights", len(train_ds), len(val_ds), len(test_ds))

    model_args = dict(resume.ckpt["model_args"]) if resume is not None else run_model_args(cfg, model_kind)
    # Whole nights are staged by a model of n_windows = windows_per_subject; on crops the same weights train
    # in a model of n_windows = segment_windows (the network is convolutional: only the regroup of encoder
    # steps into windows depends on the window count, no weight does).
    segment_windows = cfg["training"]["segment_windows"]
    eval_raw_model = build_model(model_kind, **model_args).to(device)
    # recompute the encoder's activations in backward (less memory per night); acts only while training
    set_activation_checkpointing(eval_raw_model, cfg["training"]["activation_checkpointing"])
    raw_model = with_n_windows(eval_raw_model, segment_windows) if segment_windows else eval_raw_model
    if parent is not None and resume is None:
        raw_model.load_state_dict(parent.state_dict)
    log.info("model %s %s: %s parameters%s%s", model_kind, model_args, f"{count_parameters(raw_model):,}",
             f"; trained on crops of {segment_windows} windows" if segment_windows else "",
             f"; weights from {parent.record['path']}" if parent is not None and resume is None else "")

    train_cfg = cfg["training"]
    if resume is not None:
        class_weights = np.asarray(resume.ckpt["class_weights"], dtype=np.float32)
    else:
        class_weights = training_class_weights(cfg, train_ds)
    optimizer = torch.optim.Adam(raw_model.parameters(), lr=train_cfg["learning_rate"],
                                 weight_decay=train_cfg["weight_decay"])
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=train_cfg["lr_factor"], patience=train_cfg["lr_patience"])

    first_epoch = int(resume.ckpt["epoch"]) + 1 if resume is not None else 1
    freeze_epochs = train_cfg["freeze_encoder_epochs"]
    set_encoder_frozen(raw_model, encoder_frozen_at(freeze_epochs, first_epoch))
    if freeze_epochs:
        log.info("the encoder (8 ResConv blocks) is frozen %s", "in every epoch" if freeze_epochs == FREEZE_ALL_EPOCHS
                 else f"in epochs 1-{freeze_epochs}")
    model = wrap_model(raw_model, cfg, ctx, device)
    eval_model = model if eval_raw_model is raw_model else (
        torch.compile(eval_raw_model) if cfg["gpu"]["compile"] else eval_raw_model)
    parent_record = resume.ckpt.get("parent_checkpoint") if resume is not None else (
        dict(parent.record) if parent is not None else None)
    run = RunSetup(cfg=cfg, kind=model_kind, run_id=run_id, seed=seed, device=device, ctx=ctx, run_dir=run_dir,
                   raw_model=raw_model, model=model, eval_raw_model=eval_raw_model, eval_model=eval_model,
                   optimizer=optimizer, scheduler=scheduler,
                   class_weights=class_weights,
                   loaders={"train": train_loader, "val": val_loader, "test": test_loader},
                   datasets={"train": train_ds, "val": val_ds, "test": test_ds},
                   amp=use_autocast(cfg, device), data_fingerprint=data_fingerprint, writer=None,
                   parent=parent_record)
    state = (restore_checkpoint(run, resume.ckpt) if resume is not None
             else TrainState(select_best_by=train_cfg["select_best_by"]))
    if ctx.is_main:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events a killed run wrote after its last checkpoint
        run.writer = SummaryWriter(str(run.folder("logs")), purge_step=state.epoch + 1 if state.epoch else None)
    return run, state


def checkpoint_payload(run: RunSetup, state: TrainState, metrics: dict, rng_states: list) -> dict:
    """Everything a checkpoint holds (weights_only-safe types); `restore_checkpoint` is its inverse."""
    from multimodal_sleep_model import checkpoint_model_fields

    return {
        **checkpoint_model_fields(run.eval_raw_model),  # n_windows = a whole night: what inference rebuilds
        "segment_windows": run.cfg["training"]["segment_windows"],  # crop length trained on (0 = whole nights)
        "data_fingerprint": run.data_fingerprint,
        "model_state_dict": run.raw_model.state_dict(),
        "config": run.cfg,
        **state.to_checkpoint(),
        "metrics": metrics,
        "optimizer_state_dict": run.optimizer.state_dict(),
        "scheduler_state_dict": run.scheduler.state_dict(),
        "scaler_state_dict": None,  # bf16 autocast needs no GradScaler (fp16 would)
        "class_weights": [float(w) for w in run.class_weights],
        "rng_state": rng_states,  # one per process
        "seed": run.seed,
        "run_id": run.run_id,
        "world_size": run.ctx.world_size,
        "parent_checkpoint": run.parent,
    }


def restore_checkpoint(run: RunSetup, ckpt: dict) -> TrainState:
    """Load weights, optimizer, scheduler and this process's RNG state from `ckpt`; return its TrainState."""
    run.raw_model.load_state_dict(ckpt["model_state_dict"])
    run.optimizer.load_state_dict(ckpt["optimizer_state_dict"])
    run.scheduler.load_state_dict(ckpt["scheduler_state_dict"])
    # settings the saved states carry: a change accepted with --resume-anyway takes effect from here on
    new, old = run.cfg["training"], ckpt["config"]["training"]
    for key, group_key in (("learning_rate", "lr"), ("weight_decay", "weight_decay")):
        if new[key] != old.get(key):
            for group in run.optimizer.param_groups:
                group[group_key] = new[key]
    run.scheduler.factor, run.scheduler.patience = new["lr_factor"], new["lr_patience"]
    states, ctx = ckpt["rng_state"], run.ctx
    if len(states) != ctx.world_size:
        log.warning("checkpoint holds RNG states of %d process(es), this run has %d: rank 0's state is used "
                    "and the continuation is not bit-identical", len(states), ctx.world_size)
    restore_rng_state(states[ctx.rank] if ctx.rank < len(states) else states[0], run.device)
    state = TrainState.from_checkpoint(ckpt)
    log.info("resumed after epoch %d (best %s %.4f at epoch %d)", state.epoch, state.select_best_by, state.best_value,
             state.best_epoch)
    return state


def train_epochs(run: RunSetup, state: TrainState) -> None:
    """Train until training.num_epochs or early stopping; validate, checkpoint and log after each epoch."""
    ctx, train_cfg = run.ctx, run.cfg["training"]
    num_epochs = train_cfg["num_epochs"]
    if state.stopped or state.epoch >= num_epochs:
        log.info("nothing left to train (epoch %d of %d%s)", state.epoch, num_epochs,
                 ", stopped early" if state.stopped else "")
    class_weights_C = torch.as_tensor(run.class_weights, device=run.device)
    if run.parent is not None and state.epoch == 0 and num_epochs > 0:
        evaluate_parent(run)
    freeze_epochs = train_cfg["freeze_encoder_epochs"]
    while state.epoch < num_epochs and not state.stopped:
        epoch = state.epoch + 1
        epoch_start = time.perf_counter()
        frozen_before = encoder_frozen_at(freeze_epochs, epoch - 1) if epoch > 1 else None
        frozen = set_encoder_frozen(run.raw_model, encoder_frozen_at(freeze_epochs, epoch))
        if frozen_before is not None and frozen_before != bool(frozen):
            log.info("epoch %d: the encoder is %s", epoch, "frozen" if frozen else "trained from now on")
            if ctx.enabled:
                run.model = wrap_model(run.raw_model, run.cfg, ctx, run.device)
                if run.eval_raw_model is run.raw_model:
                    run.eval_model = run.model
        set_loader_epoch(run.loaders["train"], run.seed, epoch)
        lr = run.optimizer.param_groups[0]["lr"]
        stats = train_one_epoch(run.model, run.loaders["train"], run.optimizer, class_weights_C, run.device,
                                n_inputs=run.n_inputs, amp=run.amp, grad_clip=train_cfg["grad_clip"],
                                progress=ctx.is_main, desc=f"epoch {epoch}/{num_epochs}",
                                subjects=run.datasets["train"].subjects, frozen=frozen)
        loss_sum, n_valid, windows, train_seconds = ctx.all_sum(
            [stats["loss_sum"], stats["n_valid"], stats["windows"], stats["seconds"] / ctx.world_size])
        nights = windows / run.cfg["data"]["windows_per_subject"]  # night-equivalents: crops count by length
        train_loss = loss_sum / max(n_valid, 1)
        sync_eval_model(run)
        val, val_pred = evaluate(run.eval_model, run.loaders["val"], run.datasets["val"].subjects, run.device,
                                 ctx, n_inputs=run.n_inputs, amp=run.amp, desc=f"epoch {epoch} validation")
        val_kappa = val["kappa"] if math.isfinite(val["kappa"]) else 0.0
        run.scheduler.step(val_kappa)
        values = dict(zip(HISTORY_KEYS, (train_loss, val["loss"], val["accuracy"], val["kappa"], val["f1_weighted"],
                                         val["median_kappa"], lr)))
        timing = {"epoch_seconds": time.perf_counter() - epoch_start,
                  "train_nights_per_s": nights / max(train_seconds, 1e-9)}
        improved = state.record_epoch(epoch, values, timing, train_cfg["patience"])
        metrics = {"train_loss": train_loss, "val_loss": val["loss"], "val_accuracy": val["accuracy"],
                   "val_kappa": val["kappa"], "val_f1": val["f1_weighted"], "val_median_kappa": val["median_kappa"]}
        rng_states = ctx.all_gather(capture_rng_state(run.device))
        if ctx.is_main:
            save_epoch_checkpoints(run, epoch, checkpoint_payload(run, state, metrics, rng_states), improved, val)
            log_epoch(run, state, val, val_pred, improved)
        ctx.barrier()


def sync_eval_model(run: RunSetup) -> None:
    """Copy the trained weights (and BatchNorm statistics) into the whole-night model, when they differ."""
    if run.eval_raw_model is not run.raw_model:
        run.eval_raw_model.load_state_dict(run.raw_model.state_dict())


def evaluate_parent(run: RunSetup) -> None:
    """The parent's validation figures on this run's validation set, before any step: how well the model
    transfers as it is; recorded with the parent (every checkpoint and test_results.json) and logged to
    TensorBoard as epoch 0."""
    sync_eval_model(run)
    val, _ = evaluate(run.eval_model, run.loaders["val"], run.datasets["val"].subjects, run.device, run.ctx,
                      n_inputs=run.n_inputs, amp=run.amp, desc="parent on validation")
    run.parent["val_before_training"] = {"loss": val["loss"], "accuracy": val["accuracy"], "kappa": val["kappa"],
                                         "median_kappa": val["median_kappa"], "f1": val["f1_weighted"]}
    log.info("parent checkpoint on this validation set, before training: loss %.4f | accuracy %.4f | kappa %.4f "
             "| median per-subject kappa %.4f", val["loss"], val["accuracy"], val["kappa"], val["median_kappa"])
    if run.writer is not None:
        for tag, value in (("Val/Loss", val["loss"]), ("Val/Overall_Accuracy", val["accuracy"]),
                           ("Val/Overall_Kappa", val["kappa"]), ("Val/Median_Kappa", val["median_kappa"])):
            run.writer.add_scalar(tag, value, 0)


def save_epoch_checkpoints(run: RunSetup, epoch: int, payload: dict, improved: bool, val: dict) -> None:
    """best_model.pth (and a confusion-matrix PNG) on a new best, checkpoint_epoch_N.pth every
    output.save_frequency epochs, and last.pth every epoch (written last: it marks the epoch as done)."""
    ckpt_dir, out_cfg = run.folder("checkpoints"), run.cfg["output"]
    if improved:
        save_checkpoint(ckpt_dir / BEST_CHECKPOINT, payload)
        if out_cfg["save_intermediate"]:
            save_figure(confusion_figure(val["confusion_matrix"], f"Validation, epoch {epoch}"),
                        run.folder("results") / f"confusion_matrix_epoch_{epoch}.png")
    if epoch % out_cfg["save_frequency"] == 0:
        save_checkpoint(ckpt_dir / f"checkpoint_epoch_{epoch}.pth", payload)
    save_checkpoint(ckpt_dir / LAST_CHECKPOINT, payload)


def log_epoch(run: RunSetup, state: TrainState, val: dict, val_pred: dict, improved: bool) -> None:
    """TensorBoard scalars and figures of the epoch just recorded in `state`, and its one console line."""
    epoch, num_epochs = state.epoch, run.cfg["training"]["num_epochs"]
    last = {key: values[-1] for key, values in state.history.items()}
    epoch_seconds, nights_per_s = state.timing["epoch_seconds"][-1], state.timing["train_nights_per_s"][-1]
    w = run.writer
    for tag, key in SCALAR_TAGS.items():
        w.add_scalar(tag, last[key], epoch)
    w.add_scalar("Time/Epoch_Seconds", epoch_seconds, epoch)
    w.add_scalar("Speed/Train_Nights_per_s", nights_per_s, epoch)
    w.add_figure("Val/Confusion_Matrix", confusion_figure(val["confusion_matrix"], f"Validation, epoch {epoch}"),
                 epoch)
    subject = run.datasets["val"].subjects[int(val_pred["index"][0])]
    w.add_figure("Val/Hypnogram", hypnogram_figure(val_pred["preds"][0], f"Validation subject {subject}, epoch {epoch}",
                                                   true_W=val_pred["labels"][0]), epoch)
    w.flush()
    # nights/s to 3 significant digits: a CPU epoch can run at 0.048 nights/s, a GPU at 150
    log.info("epoch %3d/%d | train_loss %.4f | val_loss %.4f | val_acc %.4f | val_kappa %.4f | val_f1 %.4f | "
             "val_median_kappa %.4f | lr %.2e | %.1f s | %.3g nights/s%s", epoch, num_epochs, last["train_losses"],
             last["val_losses"], last["val_overall_accuracies"], last["val_overall_kappas"],
             last["val_overall_f1_scores"], last["val_median_kappas"], last["learning_rates"], epoch_seconds,
             nights_per_s, " | best" if improved else "")
    if state.stopped:
        log.info("early stopping: %s has not improved for %d epochs (best %.4f at epoch %d)",
                 state.select_best_by, state.bad_epochs, state.best_value, state.best_epoch)


def test_best_checkpoint(run: RunSetup, state: TrainState) -> dict | None:
    """Evaluate best_model.pth on the test set (last.pth when no epoch had a finite selection figure, so
    there is no best); rank 0 writes results/ and returns the results."""
    ctx = run.ctx
    ctx.barrier()
    test_ds = run.datasets["test"]
    if state.best_epoch > 0:
        best = load_checkpoint(run.folder("checkpoints") / BEST_CHECKPOINT)
        log.info("testing the best checkpoint (epoch %d by %s; validation loss %.4f) on %d test nights",
                 best["epoch"], state.select_best_by, best["early_stopping"]["best_val_loss"], len(test_ds))
    else:
        best = load_checkpoint(run.folder("checkpoints") / LAST_CHECKPOINT)
        log.warning("no epoch had a finite %s on the validation set (kappa is undefined when the validation "
                    "nights hold one stage only), so there is no best checkpoint: testing the last one (epoch %d) "
                    "on %d test nights", state.select_best_by, best["epoch"], len(test_ds))
    run.eval_raw_model.load_state_dict(best["model_state_dict"])
    test, _ = evaluate(run.eval_model, run.loaders["test"], test_ds.subjects, run.device, ctx,
                       n_inputs=run.n_inputs, amp=run.amp, desc="test")
    if not ctx.is_main:
        return None
    cfg, stats = run.cfg, test["per_subject_kappa_stats"]
    results = {
        "model_type": run.kind,
        "run_id": run.run_id,
        "seed": run.seed,
        "test_loss": test["loss"],
        "test_accuracy_overall": test["accuracy"],
        "test_kappa_overall": test["kappa"],
        "test_f1_overall": test["f1_weighted"],
        "test_median_kappa": test["median_kappa"],
        "classification_report": test["classification_report"],
        "confusion_matrix": test["confusion_matrix"],
        "training_history": state.history,
        "timing": state.timing,
        "best_epoch": state.best_epoch,  # 0: none (the last epoch was tested)
        "tested_epoch": int(best["epoch"]),
        "best_val_loss": best["early_stopping"]["best_val_loss"],
        "select_best_by": state.select_best_by,
        "best_value": state.best_value,
        "parent_checkpoint": run.parent,
        "epochs_trained": state.epoch,
        "stopped_early": state.stopped,
        "patient_kappa_stats": {"n": stats["n"], "min": stats["min"], "max": stats["max"],
                                "mean": stats["mean"], "std": stats["std"], "median": stats["median"],
                                "25_percentile": stats["q1"], "75_percentile": stats["q3"]},
        "per_subject_kappa": test["per_subject_kappa"],
        "undefined_kappa_subjects": test["undefined_kappa_subjects"],
        "n_test_subjects": test["n_nights"],
        "n_test_epochs": test["n_epochs"],
        "test_subjects": list(test_ds.subjects),
        "class_weights": [float(w) for w in run.class_weights],
        "device": str(run.device),
        "world_size": ctx.world_size,
        "output_dir": str(run.run_dir),
    }
    results_dir = run.folder("results")
    write_json(results_dir / "test_results.json", results)
    save_figure(confusion_figure(test["confusion_matrix"], "Test, best checkpoint"),
                results_dir / "confusion_matrix_epoch_final.png")
    run.writer.add_hparams(
        {"model": run.kind, "learning_rate": cfg["training"]["learning_rate"],
         "weight_decay": cfg["training"]["weight_decay"], "batch_size": cfg["data"]["batch_size"],
         "seed": run.seed, "epochs_trained": state.epoch, "best_epoch": state.best_epoch,
         "mixed_precision": run.amp, "compile": cfg["gpu"]["compile"],
         "select_best_by": state.select_best_by, "init_from": (run.parent or {}).get("path", ""),
         "init_from_sha256": (run.parent or {}).get("sha256", ""),
         "freeze_encoder_epochs": cfg["training"]["freeze_encoder_epochs"]},
        {f"hparam/{k}": v for k, v in (("test_accuracy", test["accuracy"]), ("test_kappa", test["kappa"]),
                                       ("test_f1", test["f1_weighted"]), ("test_median_kappa", test["median_kappa"]))
         if math.isfinite(v)},
        run_name="hparams")
    log.info("test: loss %.4f | accuracy %.4f | kappa %.4f | weighted F1 %.4f | median per-subject kappa %.4f "
             "(%d subjects)", test["loss"], test["accuracy"], test["kappa"], test["f1_weighted"],
             test["median_kappa"], test["n_nights"])
    log.info("results saved to %s", results_dir / "test_results.json")
    return results


def epoch_in_last_checkpoint(run_dir: Path) -> int:
    """The epoch that the run's last.pth holds; 0 when there is none (or it cannot be read)."""
    try:
        ckpt = torch.load(run_dir / "checkpoints" / LAST_CHECKPOINT, map_location="cpu", weights_only=True, mmap=True)
        return int(ckpt["epoch"])
    except Exception:  # noqa: BLE001 - only for the message after a stop: no checkpoint to name
        return 0


def train_run(cfg: dict, model_kind: str, run_id: int | None, device: torch.device, ctx: DistContext,
              data_fingerprint: dict, resume: Resume | None = None,
              parent: ParentCheckpoint | None = None) -> dict | None:
    """Train, test and write one run (from `parent`'s weights when given); returns the test results on rank 0
    (None on other ranks).

    A Ctrl-C or a stop on bad data / divergence leaves checkpoints/last.pth of the last finished epoch (never
    a checkpoint of the failed epoch) and logs how to resume before the exception goes on."""
    run_dir = open_run_dir(cfg, model_kind, run_id, ctx, resume)
    with contextlib.ExitStack() as stack:
        if ctx.is_main:
            stack.enter_context(log_to_file(run_dir / "console_logs" / f"{run_dir.name}.log"))
            write_json(run_dir / "checkpoints" / "config.json", cfg)
        log.info("%s %s in %s on %s%s", "resuming" if resume else "training", model_kind, run_dir, device,
                 f" x{ctx.world_size} processes" if ctx.enabled else "")
        stack.enter_context(kernel_settings(device))
        try:
            run, state = build_run(cfg, model_kind, run_id, device, ctx, run_dir, resume, data_fingerprint,
                                   parent)
            if run.writer is not None:
                stack.callback(run.writer.close)
            train_epochs(run, state)
            return test_best_checkpoint(run, state)
        except (KeyboardInterrupt, DataError, TrainingDiverged) as err:
            saved = epoch_in_last_checkpoint(run_dir)  # not state.epoch: the stop may come while it is written
            if saved > 0:
                hint = (f"checkpoints/{LAST_CHECKPOINT} keeps epoch {saved}, the last one saved; continue with: "
                        f"python train_ppg_only.py --resume {run_dir}")
            else:
                hint = f"no epoch had finished, so {run_dir} holds nothing to resume"
            if isinstance(err, KeyboardInterrupt):
                if ctx.is_main:
                    log.error("interrupted (Ctrl-C): %s", hint)
                raise
            raise type(err)(f"{err}; {hint}") from None


# ----------------------------------------------------------------------------------------------------------
# Several runs


def summarize_runs(all_results: dict[str, list[dict]]) -> dict:
    """mean/median/std (and values) of the pooled test metrics over runs, per model."""
    keys = ("test_accuracy_overall", "test_kappa_overall", "test_f1_overall", "test_median_kappa")
    summary = {}
    for kind, results in all_results.items():
        summary[kind] = {}
        for key in keys:
            values = [r[key] for r in results if r[key] is not None and math.isfinite(r[key])]
            stats = summary_stats(values)
            summary[kind][key] = {"mean": stats["mean"], "median": stats["median"], "std": stats["std"],
                                  "values": values}
    return summary


def models_to_train(choice: str, cfg: dict) -> list[str]:
    if choice != "both":
        return [choice]
    kinds = [k for k in MODEL_KINDS if cfg["model"][k]["enabled"]]
    if cfg["model"]["generated_ecg"]["enabled"]:
        log.warning("model.generated_ecg.enabled is true, but the generated-ECG model is not implemented "
                    "(as in the reference): skipped")
    if not kinds:
        raise SetupError("--model both: neither model.ppg_only.enabled nor model.real_ecg.enabled is true")
    return kinds


# ----------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train SleepPPG-Net (PPG) or the PPG+ECG model, then test it.")
    p.add_argument("--config", default=None,
                   help=f"YAML config (default: {DEFAULT_CONFIG}); with --resume PATH the run's own config is "
                        f"used unless one is given here (then it must match the run's)")
    p.add_argument("--model", choices=(*MODEL_KINDS, "both"), default="both",
                   help="which model to train; 'both' = those enabled under model: in the config")
    p.add_argument("--runs", type=int, default=None, help="number of runs (overrides training.num_runs)")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs (overrides training.num_epochs)")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="PATH",
                   help="continue a run: PATH = a run folder or a checkpoint; without PATH the newest run of "
                        "--model under output.save_dir")
    p.add_argument("--resume-anyway", action="store_true",
                   help="resume even though the data files, the split or the config changed since the run "
                        "started (listed in the warning); without it such a resume is refused")
    p.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                   help="start from this trained model's weights (ours or the reference's .pth) instead of random "
                        "ones (overrides training.init_from)")
    p.add_argument("--freeze-encoder", nargs="?", type=int, const=0, default=None, metavar="N",
                   help="with --init-from: keep the 8 ResConv encoder blocks fixed for the first N epochs; without "
                        "N (or 0) for every epoch (overrides training.freeze_encoder_epochs)")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N (default: auto; "
                        "auto/cuda use gpu.device_id, or LOCAL_RANK under torchrun)")
    return p.parse_args(argv)


def _overrides(args: argparse.Namespace) -> dict:
    out = {}
    if args.runs is not None:
        out["training.num_runs"] = args.runs
    if args.epochs is not None:
        out["training.num_epochs"] = args.epochs
    if args.init_from is not None:
        out["training.init_from"] = args.init_from
        out["training.init_from_sha256"] = ""  # a new parent: its hash is taken from the file
    if args.freeze_encoder is not None:
        if args.freeze_encoder < 0:
            raise SetupError(f"--freeze-encoder N: N must be >= 0 (0 or none = every epoch), got {args.freeze_encoder}")
        out["training.freeze_encoder_epochs"] = args.freeze_encoder or FREEZE_ALL_EPOCHS
    return out


def _flatten(cfg: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def resume_changes(ckpt: dict, cfg: dict, fingerprint: dict) -> list[str]:
    """What differs between the run in `ckpt` and a resume with `cfg` on data `fingerprint`: config keys that
    shape training (not num_epochs/num_runs, preprocessing or inference), data file signatures, split sets."""
    changes = []
    old, new = _flatten(ckpt["config"]), _flatten(cfg)
    for key in sorted(set(old) | set(new)):
        if key in RESUME_FREE_KEYS or key.split(".")[0] in RESUME_FREE_SECTIONS:
            continue
        if old.get(key) != new.get(key):
            changes.append(f"config {key}: {old.get(key)!r} -> {new.get(key)!r}")
    saved = ckpt.get("data_fingerprint")
    if saved is None:
        log.warning("this checkpoint predates data fingerprints: cannot check that the data and split are unchanged")
        return changes
    for key, signature in saved["files"].items():
        now = fingerprint["files"].get(key)
        if now != signature:
            detail = ", ".join(f"{k} {signature.get(k) if signature else None} -> {now.get(k) if now else None}"
                               for k in ("path", "size", "mtime_ns")
                               if (signature or {}).get(k) != (now or {}).get(k))
            changes.append(f"{key} changed ({detail})")
    for name in ("train", "val", "test"):
        before, after = set(saved["split"][name]), set(fingerprint["split"][name])
        if before != after:
            added, gone = sorted(after - before), sorted(before - after)
            changes.append(f"the {name} subjects changed ({len(added)} added, e.g. {added[:3]}; {len(gone)} gone, "
                           f"e.g. {gone[:3]})")
    return changes


def main(argv: list[str] | None = None) -> int:
    """Train; returns the exit status: 0 done, 1 bad data or training diverged, 2 bad setup, 130 Ctrl-C."""
    args = parse_args(argv)
    setup_logging()
    ctx = DistContext()
    if not ctx.is_main:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 speaks for the group
    try:
        return _main(args, ctx)
    except ConfigError as err:
        log.error("config error: %s", err)
        return EXIT_SETUP
    except SetupError as err:
        log.error("%s", err)
        return EXIT_SETUP
    except (DataError, TrainingDiverged) as err:
        log.error("%s", err)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        ctx.close()


def _main(args: argparse.Namespace, ctx: DistContext) -> int:
    config_path = args.config if args.config is not None else DEFAULT_CONFIG
    given_cfg = load_config(config_path, _overrides(args)) if args.config is not None or args.resume in (None, "") \
        else None
    resume = None
    if args.resume is not None and (args.init_from is not None or args.freeze_encoder is not None):
        raise SetupError("--init-from and --freeze-encoder start a new run; a resumed run keeps the parent and "
                         "freezing it started with")
    if args.resume is None:
        cfg = given_cfg
    else:
        if args.resume == "":
            if args.model == "both":
                raise SetupError("--resume without a PATH needs --model ppg_only or --model real_ecg")
            ckpt_path = newest_run_checkpoint(Path(given_cfg["output"]["save_dir"]), args.model)
        else:
            ckpt_path = resolve_resume_path(args.resume)
        resume = load_resume_point(ckpt_path)
        if args.model != "both" and args.model != resume.ckpt["model_kind"]:
            raise SetupError(f"--resume {ckpt_path} holds a {resume.ckpt['model_kind']} model, not {args.model}")
        if given_cfg is not None and args.config is not None:
            cfg = given_cfg
        else:
            saved = dict(resume.ckpt["config"])
            for dotted, value in _overrides(args).items():  # --epochs / --runs apply to the resumed run too
                section, key = dotted.split(".")
                saved[section] = {**saved[section], key: value}
            try:
                cfg = validate_config(saved)
            except ConfigError as err:
                raise ConfigError(f"the config saved in {resume.path}: {err}") from None
        log.info("resuming from %s (run folder %s)", resume.path, resume.run_dir)

    check_transfer_settings(cfg)
    parents: dict[str, ParentCheckpoint | None] = {}
    if resume is None:  # a resumed run has its own weights and keeps its parent's record
        for kind in models_to_train(args.model, cfg):
            parents[kind] = load_parent(cfg, kind)
            if parents[kind] is not None:
                cfg["training"]["init_from_sha256"] = parents[kind].record["sha256"]  # into config.json
    device = resolve_device(args.device, cfg["gpu"]["device_id"], ctx.local_rank if ctx.enabled else None)
    check_compile_setup(cfg, device)
    kinds = [resume.ckpt["model_kind"]] if resume is not None else models_to_train(args.model, cfg)
    fingerprints = {kind: preflight_data(cfg, kind) for kind in kinds}
    if resume is not None:
        saved = resume.ckpt["config"]["training"]
        adopt_recorded_parent_hash(cfg["training"], saved)
        changes = resume_changes(resume.ckpt, cfg, fingerprints[kinds[0]])
        if cfg["training"]["select_best_by"] != saved.get("select_best_by", "val_loss"):
            raise SetupError(f"cannot resume {resume.run_dir} with training.select_best_by "
                             f"{cfg['training']['select_best_by']!r}: its best_model.pth was chosen by "
                             f"{saved.get('select_best_by', 'val_loss')!r} (not even with --resume-anyway); start a "
                             "new run to select by another figure")
        if changes and not args.resume_anyway:
            raise SetupError(f"refusing to resume {resume.run_dir}: since it started, " + "; ".join(changes)
                             + ". Start a new run, or pass --resume-anyway to continue on the new setup")
        for change in changes:
            log.warning("--resume-anyway: continuing although %s", change)
    ctx.init(device)
    if resume is not None:
        results = train_run(cfg, kinds[0], resume.ckpt.get("run_id"), device, ctx, fingerprints[kinds[0]], resume)
        if ctx.is_main and results is not None:
            print(f"{results['model_type']}: test kappa {results['test_kappa_overall']:.4f}, accuracy "
                  f"{results['test_accuracy_overall']:.4f} -> {results['output_dir']}")
        return EXIT_OK
    num_runs = cfg["training"]["num_runs"]
    all_results: dict[str, list[dict]] = {k: [] for k in kinds}
    for run in range(1, num_runs + 1):
        for kind in kinds:
            log.info("run %d/%d: %s", run, num_runs, kind)
            results = train_run(cfg, kind, run if num_runs > 1 else None, device, ctx, fingerprints[kind],
                                parent=parents[kind])
            if results is not None:
                all_results[kind].append(results)
    if ctx.is_main:
        for kind in kinds:
            for r in all_results[kind]:
                print(f"{kind}{'' if r['run_id'] is None else ' run ' + str(r['run_id'])}: test kappa "
                      f"{r['test_kappa_overall']:.4f}, accuracy {r['test_accuracy_overall']:.4f}, "
                      f"median per-subject kappa {r['test_median_kappa']:.4f} -> {r['output_dir']}")
        if num_runs > 1:
            summary = summarize_runs(all_results)
            stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
            path = Path(cfg["output"]["save_dir"]) / f"summary_results_{stamp}.json"
            write_json(path, {"num_runs": num_runs, "models": kinds, "summary": summary,
                              "results": all_results})
            for kind in kinds:
                for key, s in summary[kind].items():
                    print(f"{kind} {key}: median {s['median']:.4f} | mean {s['mean']:.4f} ± {s['std']:.4f}")
            print(f"summary over {num_runs} runs: {path}")
    return EXIT_OK


if __name__ == "__main__":
    keep_freed_memory()  # CPU steps: reuse freed activation memory instead of faulting in fresh pages
    sys.exit(main())
