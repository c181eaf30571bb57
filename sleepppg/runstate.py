"""The state of one training run and its checkpoints.

`RunSetup` is what a run trains with (model, optimizer, scheduler, loaders; built once), `TrainState` what
changes from epoch to epoch (history, early stopping). A checkpoint (`checkpoint_payload`) holds both in
weights_only-safe types with the RNG states of every process, so that `restore_checkpoint` continues a run
exactly: on the CPU a run resumed from last.pth ends with the same history and weights as one that never
stopped. Checkpoints are written atomically (`save_checkpoint`): a full disk or a kill while one is written
leaves the previous file under its name and no temporary behind; `stop_explained` then says which epoch
last.pth keeps and how to continue.

Run folder: checkpoints/ (best_model.pth, checkpoint_epoch_N.pth, last.pth, config.json, run.json), logs/
(TensorBoard), results/, console_logs/. run.json holds the run's identity (`run_uid`, a random id drawn when the
folder is made); every checkpoint carries the same `run_uid`, so that `--resume` can tell the run's own
checkpoints from another run's copied into its folder (sleepppg.resume.check_run_identity).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from sleepppg import checkpoints
from sleepppg.distributed import DistContext
from sleepppg.errors import DataError, SetupError, TrainingDiverged
from sleepppg.paths import disk_full_error

log = logging.getLogger("sleepppg.runstate")

RUN_IDENTITY_FILE = "run.json"  # in checkpoints/: {"run_uid": ..., "model_kind": ...}, written once
LAST_CHECKPOINT = "last.pth"  # rewritten after every epoch; --resume continues from it
BEST_CHECKPOINT = "best_model.pth"  # best validation figure (training.select_best_by; the reference: lowest loss)
RUN_SUBDIRS = ("checkpoints", "logs", "results", "console_logs")
# training.select_best_by -> (history key, +1 when higher is better / -1 when lower is better)
SELECT_BEST_BY = {"val_loss": ("val_losses", -1), "val_kappa": ("val_overall_kappas", +1),
                  "val_median_kappa": ("val_median_kappas", +1)}
# Keys of the per-epoch history; deterministic values only, so a resumed run reproduces them exactly.
HISTORY_KEYS = ("train_losses", "val_losses", "val_overall_accuracies", "val_overall_kappas",
                "val_overall_f1_scores", "val_median_kappas", "learning_rates")
TIMING_KEYS = ("epoch_seconds", "train_nights_per_s")  # per epoch; not reproducible, so kept apart
CHECKPOINT_KEYS = ("model_kind", "model_args", "model_state_dict", "config", "epoch", "history",
                   "optimizer_state_dict", "scheduler_state_dict", "early_stopping", "rng_state")  # to resume


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
        # a checkpoint without select_best_by/best_value selected by the validation loss
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
class RunSetup:
    """What one (model kind, run) trains with; built once by the training script, not changed by training
    (except `model`/`eval_model`, rewrapped when the encoder is unfrozen under DDP)."""

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
    data_fingerprint: dict  # the data files' signatures and the split (see trainingdata.preflight_data)
    writer: Any  # TensorBoard SummaryWriter on rank 0, None elsewhere
    parent: dict | None = None  # the record of the checkpoint this run started from (training.init_from)
    run_uid: str | None = None  # the run's identity (run.json), written into every checkpoint; None: an older run

    @property
    def n_inputs(self) -> int:
        return 1 if self.kind == "ppg_only" else 2

    def folder(self, name: str) -> Path:
        """checkpoints/, logs/, results/ or console_logs/ of the run folder."""
        return self.run_dir / name


# ----------------------------------------------------------------------------------------------------------
# Seeds and RNG state


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


# ----------------------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_payload(run: RunSetup, state: TrainState, metrics: dict, rng_states: list) -> dict:
    """Everything a checkpoint holds (weights_only-safe types); `restore_checkpoint` is its inverse."""
    from sleepppg.checkpoints import checkpoint_model_fields

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
        "run_uid": run.run_uid,
        "world_size": run.ctx.world_size,
        "parent_checkpoint": run.parent,
    }


def new_run_identity() -> str:
    """A random run id (32 hex digits) for a new run folder: no two runs share one, copies of a folder aside."""
    return uuid.uuid4().hex


def read_run_identity(run_dir: Path) -> str | None:
    """The run_uid in `run_dir`/checkpoints/run.json; None when the file is absent (a run folder made by an
    older version). Raises SetupError when it exists but cannot be read or holds no run_uid."""
    path = run_dir / "checkpoints" / RUN_IDENTITY_FILE
    if not path.exists():
        return None
    try:
        uid = json.loads(path.read_text(encoding="utf-8")).get("run_uid")
    except (OSError, ValueError, AttributeError) as err:
        raise SetupError(f"cannot read the run identity {path}: {err}") from None
    if not isinstance(uid, str) or not uid:
        raise SetupError(f"{path} holds no run_uid: not a run identity written by this project")
    return uid


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write `payload` to `path` atomically, with the checksum of its tensors (sleepppg.checkpoints). On a
    full disk: an OSError (ENOSPC) naming `path`, with the file already under `path` as it was and no
    temporary left."""
    try:
        checkpoints.save_checkpoint(path, payload)
    except (OSError, RuntimeError) as err:
        full = disk_full_error(err)
        if full is None:
            raise
        raise OSError(full.errno, full.strerror, str(path)) from None


def load_checkpoint(path: Path) -> dict:
    """A training checkpoint, read with weights_only=True (no arbitrary code runs) and its tensor checksum
    verified (sleepppg.checkpoints.read_checkpoint_file).

    Raises:
        SetupError: the file cannot be read (truncated or corrupt), fails its checksum, or lacks what a resume
            needs.
    """
    try:
        ckpt = checkpoints.read_checkpoint_file(path, "cpu")
    except (checkpoints.CheckpointError, FileNotFoundError) as err:
        raise SetupError(f"cannot load checkpoint {path} (truncated or corrupt?): {err}") from None
    if not isinstance(ckpt, dict):
        raise SetupError(f"{path} is not a training checkpoint (a {type(ckpt).__name__}, not a dict)")
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise SetupError(f"{path} cannot be resumed from: missing {', '.join(missing)}")
    return ckpt


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


def epoch_in_last_checkpoint(run_dir: Path) -> int:
    """The epoch that the run's last.pth holds; 0 when there is none (or it cannot be read)."""
    try:
        ckpt = torch.load(run_dir / "checkpoints" / LAST_CHECKPOINT, map_location="cpu", weights_only=True, mmap=True)
        return int(ckpt["epoch"])
    except Exception:  # noqa: BLE001 - only for the message after a stop: no checkpoint to name
        return 0


# ----------------------------------------------------------------------------------------------------------
# When a run stops


@contextlib.contextmanager
def stop_explained(run_dir: Path, ctx: DistContext) -> Iterator[None]:
    """Say which epoch last.pth keeps and how to continue when the block stops on Ctrl-C, bad data,
    divergence or a full disk (a stop may come while last.pth is written, so the epoch is read from the file).

    Ctrl-C is logged here and goes on (exit 130); DataError and TrainingDiverged go on with the hint added to
    their message (exit 1); a full disk becomes a SetupError (exit 2). Other errors pass unchanged.
    """
    try:
        yield
    except BaseException as err:
        full = disk_full_error(err)
        if full is None and not isinstance(err, (KeyboardInterrupt, DataError, TrainingDiverged)):
            raise
        saved = epoch_in_last_checkpoint(run_dir)
        resume = f"python train_ppg_only.py --resume {run_dir}"
        if full is not None:
            what = f"disk full while writing {full.filename or run_dir}"
            if saved > 0:
                raise SetupError(f"{what}: checkpoints/{LAST_CHECKPOINT} keeps epoch {saved}, the last one saved; "
                                 f"free space on the disk, then continue with: {resume}") from None
            raise SetupError(f"{what}: no epoch had finished, so {run_dir} holds nothing to resume; free space "
                             "on the disk and run the same command again") from None
        if saved > 0:
            hint = (f"checkpoints/{LAST_CHECKPOINT} keeps epoch {saved}, the last one saved; continue with: "
                    f"{resume}")
        else:
            hint = f"no epoch had finished, so {run_dir} holds nothing to resume"
        if isinstance(err, KeyboardInterrupt):
            if ctx.is_main:
                log.error("interrupted (Ctrl-C): %s", hint)
            raise
        raise type(err)(f"{err}; {hint}") from None
