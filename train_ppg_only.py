"""Train SleepPPG-Net (PPG only) or its PPG+ECG variant on the processed MESA HDF5 files, then test it.

The reference training recipe (the public sleep-staging-models scripts) with its defects fixed: the model
returns logits that go straight into CrossEntropyLoss; the loss is summed over scored epochs and divided by
their number (label -1 = unscored or padding, ignored); class weights are inverse frequencies over *all*
training labels; checkpoints are loaded with `weights_only=True`. The validation and test loss is the same mean
without class weights (as the reference); early stopping and the best checkpoint follow it (or the validation
kappa, pooled or median per subject: `training.select_best_by`), the learning rate follows validation kappa
(ReduceLROnPlateau, mode max). With `training.segment_windows` N > 0 training items are random N-window crops of
the nights (less memory per step), W // N crops of each night per epoch; validation and test stage whole nights.

Inputs: the three HDF5 files named in the config (`data.ppg_file`, `data.index_file`, and `data.ecg_file` for
the PPG+ECG model), nights of `data.windows_per_subject` windows x 1,024 samples (30 s at 34.13 Hz).

Outputs, one folder per run: `<output.save_dir>/<model>_<YYYYmmdd_HHMMSS>[_runN]/`
    checkpoints/  config.json, best_model.pth (best by training.select_best_by), checkpoint_epoch_N.pth (every
                  output.save_frequency epochs), last.pth (every epoch, for --resume), run.json (the run's
                  run_uid, which every checkpoint carries: --resume takes only the run's own checkpoints)
    logs/         TensorBoard: Train/Loss, Val/Loss, Val/Overall_Accuracy, Val/Overall_Kappa, Val/Overall_F1,
                  Val/Median_Kappa, Train/Learning_Rate, Time/Epoch_Seconds, Speed/Train_Nights_per_s, a
                  confusion-matrix image and a validation hypnogram each epoch, hparams with test metrics
    results/      test_results.json, confusion_matrix_epoch_<N|final>.png; csv/<id>/<id>.csv (each test night
                  as inference writes it, up to its last scored epoch) and validation/ (the validation report of
                  the test nights, sleepppg.validation_study, with evaluation.metadata_file when set: report.md
                  and its tables and figures; a report that cannot be made is a warning, not a failed run)
    console_logs/ <run folder name>.log (the console log, through a logging file handler)
With several runs (`training.num_runs` or --runs) a `summary_results_<timestamp>.json` in save_dir holds the
mean/median/std of the test metrics over runs (seed = training.seed + run, as the reference).

Every checkpoint holds everything needed to continue (sleepppg.runstate), written atomically; on CPU a run
resumed from `last.pth` ends with the same history and weights as an uninterrupted run. Transfer learning:
`--init-from CHECKPOINT` starts from a trained model's weights, `--freeze-encoder [N]` keeps its encoder fixed
(sleepppg.transfer). Multi-GPU: `torchrun --nproc_per_node=K train_ppg_only.py ...` (DDP; rank 0 logs and saves).

Exit status: 0 done; 1 bad data (a subject named: labels, IDs, NaN/Inf signal) or a NaN/Inf loss or gradient
(last.pth and best_model.pth keep the last good epoch); 2 bad setup (missing or unreadable files, a bad config,
a refused --resume, a full disk: one line; after a full disk, free space and continue with --resume);
130 Ctrl-C (last.pth keeps the last finished epoch; the --resume command is printed).

Usage: python train_ppg_only.py --config configs/config_cloud.yaml --model ppg_only [--epochs 2] [--resume]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sleepppg.cli import file_argument, log_to_file, non_negative_int, positive_int, run_entry_point, setup_logging
from sleepppg.config import load_config
from sleepppg.constants import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_SETUP
from sleepppg.distributed import DistContext, check_compile_setup, kernel_settings, use_autocast, wrap_model
from sleepppg.errors import ConfigError, DataError, SetupError, TrainingDiverged
from sleepppg.evaluation import build_test_results, evaluate, summarize_runs, write_test_results, write_test_validation
from sleepppg.figures import confusion_figure, hypnogram_figure, save_figure
from sleepppg.resume import Resume, check_resume, find_resume_point, resumed_config
from sleepppg.runio import make_run_dir, write_json
from sleepppg.runstate import (
    BEST_CHECKPOINT,
    HISTORY_KEYS,
    LAST_CHECKPOINT,
    RUN_IDENTITY_FILE,
    RUN_SUBDIRS,
    RunSetup,
    TrainState,
    capture_rng_state,
    checkpoint_payload,
    disk_full_error,
    load_checkpoint,
    new_run_identity,
    read_run_identity,
    restore_checkpoint,
    save_checkpoint,
    seed_everything,
    stop_explained,
)
from sleepppg.runtime import keep_freed_memory, resolve_device
from sleepppg.step import BAD_DATA, Step, train_step
from sleepppg.trainingdata import (
    batch_on_device,
    build_data,
    nonfinite_error,
    nonfinite_nights,
    preflight_data,
    set_loader_epoch,
    training_class_weights,
)
from sleepppg.transfer import (
    FREEZE_ALL_EPOCHS,
    ParentCheckpoint,
    check_transfer_settings,
    encoder_frozen_at,
    load_parent,
    run_model_args,
    set_encoder_frozen,
)

log = logging.getLogger("train_ppg_only")

MODEL_KINDS = ("ppg_only", "real_ecg")  # what --model may name besides "both"
DEFAULT_CONFIG = "configs/config_cloud.yaml"
SCALAR_TAGS = {"Train/Loss": "train_losses", "Val/Loss": "val_losses", "Val/Overall_Accuracy": "val_overall_accuracies",
               "Val/Overall_Kappa": "val_overall_kappas", "Val/Overall_F1": "val_overall_f1_scores",
               "Val/Median_Kappa": "val_median_kappas", "Train/Learning_Rate": "learning_rates"}  # TensorBoard


# ----------------------------------------------------------------------------------------------------------
# Command line and config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train SleepPPG-Net (PPG) or the PPG+ECG model, then test it.")
    p.add_argument("--config", default=None, type=file_argument,
                   help=f"YAML config (default: {DEFAULT_CONFIG}); with --resume PATH the run's own config is "
                        f"used unless one is given here (then it must match the run's)")
    p.add_argument("--model", choices=(*MODEL_KINDS, "both"), default="both",
                   help="which model to train; 'both' = those enabled under model: in the config")
    p.add_argument("--runs", type=positive_int, default=None, help="number of runs (overrides training.num_runs)")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs (overrides training.num_epochs)")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="PATH",
                   help="continue a run: PATH = a run folder or a checkpoint; without PATH the newest run of "
                        "--model under output.save_dir")
    p.add_argument("--resume-anyway", action="store_true",
                   help="resume even though the data files, the split or the config changed since the run "
                        "started (listed in the warning); without it such a resume is refused")
    p.add_argument("--init-from", default=None, type=file_argument, metavar="CHECKPOINT",
                   help="start from this trained model's weights (ours or the reference's .pth) instead of random "
                        "ones (overrides training.init_from)")
    p.add_argument("--freeze-encoder", nargs="?", type=non_negative_int, const=0, default=None, metavar="N",
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
        out["training.freeze_encoder_epochs"] = args.freeze_encoder or FREEZE_ALL_EPOCHS
    return out


def load_run_config(args: argparse.Namespace) -> tuple[dict, Resume | None]:
    """The config to train with, and with --resume the checkpoint to continue from (None for new runs)."""
    given = None
    if args.config is not None or args.resume in (None, ""):
        given = load_config(args.config if args.config is not None else DEFAULT_CONFIG, _overrides(args))
    if args.resume is None:
        return given, None
    if args.init_from is not None or args.freeze_encoder is not None:
        raise SetupError("--init-from and --freeze-encoder start a new run; a resumed run keeps the parent and "
                         "freezing it started with")
    resume = find_resume_point(args.resume, args.model, given["output"]["save_dir"] if given else None)
    cfg = resumed_config(resume, given if args.config is not None else None, _overrides(args))
    log.info("resuming from %s (run folder %s)", resume.path, resume.run_dir)
    return cfg, resume


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
# One run: model, optimizer and scheduler; the steps of an epoch; the epochs; the test at the end


def open_run_dir(cfg: dict, model_kind: str, run_id: int | None, ctx: DistContext, resume: Resume | None) -> Path:
    """The run folder (rank 0 creates a new one, with its identity in checkpoints/run.json, unless resuming;
    every rank gets its path) and its subfolders."""
    if resume is not None:
        run_dir = resume.run_dir
    else:
        run_dir = (make_run_dir(cfg["output"]["save_dir"], f"{model_kind}_", "" if run_id is None else f"_run{run_id}")
                   if ctx.is_main else None)
    run_dir = Path(ctx.broadcast(str(run_dir) if run_dir is not None else None))
    if ctx.is_main:
        for name in RUN_SUBDIRS:
            (run_dir / name).mkdir(parents=True, exist_ok=True)
        if resume is None:
            write_json(run_dir / "checkpoints" / RUN_IDENTITY_FILE, {"run_uid": new_run_identity(),
                                                                     "model_kind": model_kind})
    return run_dir


def run_seed(cfg: dict, run_id: int | None) -> int:
    """Training seed of a run: training.seed + run (runs counted from 1), as the reference."""
    return cfg["training"]["seed"] + (run_id if run_id is not None else 1)


def build_run(cfg: dict, model_kind: str, run_id: int | None, device: torch.device, ctx: DistContext,
              run_dir: Path, resume: Resume | None, data_fingerprint: dict,
              parent: ParentCheckpoint | None = None) -> tuple[RunSetup, TrainState]:
    """Data, model, optimizer, scheduler and writer of one run, and its state (restored when resuming); a new
    run with a `parent` starts from its weights."""
    from multimodal_sleep_model import build_model, count_parameters, set_activation_checkpointing, with_n_windows

    train_cfg = cfg["training"]
    seed = int(resume.ckpt.get("seed", run_seed(cfg, run_id))) if resume else run_seed(cfg, run_id)
    seed_everything(seed + ctx.rank)
    train_loader, val_loader, test_loader, train_ds, val_ds, test_ds = build_data(cfg, model_kind, device, ctx.enabled)
    log.info("split: %d train, %d validation, %d test nights", len(train_ds), len(val_ds), len(test_ds))

    model_args = dict(resume.ckpt["model_args"]) if resume is not None else run_model_args(cfg, model_kind)
    # Whole nights are staged by a model of n_windows = windows_per_subject; on crops the same weights train
    # in a model of n_windows = segment_windows (the network is convolutional: only the regroup of encoder
    # steps into windows depends on the window count, no weight does).
    segment_windows = train_cfg["segment_windows"]
    eval_raw_model = build_model(model_kind, **model_args).to(device)
    # recompute the encoder's activations in backward (less memory per night); acts only while training
    set_activation_checkpointing(eval_raw_model, train_cfg["activation_checkpointing"])
    raw_model = with_n_windows(eval_raw_model, segment_windows) if segment_windows else eval_raw_model
    if parent is not None and resume is None:
        raw_model.load_state_dict(parent.state_dict)
    log.info("model %s %s: %s parameters%s%s", model_kind, model_args, f"{count_parameters(raw_model):,}",
             f"; trained on crops of {segment_windows} windows" if segment_windows else "",
             f"; weights from {parent.record['path']}" if parent is not None and resume is None else "")

    class_weights = (np.asarray(resume.ckpt["class_weights"], dtype=np.float32) if resume is not None
                     else training_class_weights(cfg, train_ds))
    # Adam and ReduceLROnPlateau on validation kappa (mode max), as the reference
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
                   optimizer=optimizer, scheduler=scheduler, class_weights=class_weights,
                   loaders={"train": train_loader, "val": val_loader, "test": test_loader},
                   datasets={"train": train_ds, "val": val_ds, "test": test_ds},
                   amp=use_autocast(cfg, device), data_fingerprint=data_fingerprint, writer=None,
                   parent=parent_record, run_uid=read_run_identity(run_dir) if ctx.is_main else None)
    state = (restore_checkpoint(run, resume.ckpt) if resume is not None
             else TrainState(select_best_by=train_cfg["select_best_by"]))
    if ctx.is_main:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events a killed run wrote after its last checkpoint
        run.writer = SummaryWriter(str(run.folder("logs")), purge_step=state.epoch + 1 if state.epoch else None)
    return run, state


def train_one_epoch(model, loader, optimizer, class_weights_C, device, *, n_inputs: int, amp: bool,
                    grad_clip: float, progress: bool, desc: str, subjects: list[str], frozen: tuple = (),
                    ctx: DistContext | None = None) -> dict:
    """One pass over the training loader (`train_step` on each batch). Returns {"loss_sum", "n_valid",
    "windows", "seconds"} (this rank; windows: all windows trained on, so that crops and whole nights give
    comparable speeds). The modules in `frozen` (a frozen encoder) stay in eval mode: see `set_encoder_frozen`.

    Raises DataError on a NaN/Inf input (naming the subject, from whichever rank read it) and TrainingDiverged
    when the loss or the gradient norm is NaN/Inf, before the optimizer step, so the weights stay those of the
    last good step; under torchrun every rank raises at the same step."""
    from tqdm import tqdm

    model.train()
    for module in frozen:
        module.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n_valid = torch.zeros((), dtype=torch.int64, device=device)
    windows = 0
    start = time.perf_counter()
    for step, batch in enumerate(tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True), 1):
        inputs, labels_BW, index_B = batch_on_device(batch, n_inputs, device)
        result = train_step(model, optimizer, inputs, labels_BW, class_weights_C, amp=amp, grad_clip=grad_clip,
                            ctx=ctx)
        if not result.ok:
            raise step_error(f"{desc}, step {step}", result, index_B, subjects, ctx)
        loss_sum += result.loss_sum.double()
        n_valid += result.n_valid
        windows += labels_BW.numel()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {"loss_sum": float(loss_sum.item()), "n_valid": int(n_valid.item()), "windows": windows,
            "seconds": time.perf_counter() - start}


def step_error(where: str, result: Step, index_B: torch.Tensor, subjects: list[str],
               ctx: DistContext | None) -> DataError | TrainingDiverged:
    """The error of a failed step, the same on every rank (the step's flags are agreed): bad data names the
    nights of every rank (gathered here, on the failure path only), else the loss and gradient norm diverged."""
    if result.flags[BAD_DATA] > 0:
        mine = nonfinite_nights(result.bad_IB, index_B, subjects)
        bad = [night for share in (ctx.all_gather(mine) if ctx is not None else [mine]) for night in share]
        return nonfinite_error(where, bad)
    nights_B = ", ".join(subjects[int(i)] for i in index_B)
    return TrainingDiverged(f"{where}: the loss is {float(result.loss):g} and the gradient norm "
                            f"{float(result.grad_norm):g} (nights {nights_B})")


def train(run: RunSetup, state: TrainState) -> None:
    """Train until training.num_epochs or early stopping; after each epoch validate, step the scheduler,
    write the checkpoints and log the epoch (TensorBoard and one console line)."""
    ctx, cfg, train_cfg = run.ctx, run.cfg, run.cfg["training"]
    num_epochs, freeze_epochs = train_cfg["num_epochs"], train_cfg["freeze_encoder_epochs"]
    if state.stopped or state.epoch >= num_epochs:
        log.info("nothing left to train (epoch %d of %d%s)", state.epoch, num_epochs,
                 ", stopped early" if state.stopped else "")
    class_weights_C = torch.as_tensor(run.class_weights, device=run.device)
    if run.parent is not None and state.epoch == 0 and num_epochs > 0:
        evaluate_parent(run)
    while state.epoch < num_epochs and not state.stopped:
        epoch = state.epoch + 1
        epoch_start = time.perf_counter()
        frozen = set_encoder_frozen(run.raw_model, encoder_frozen_at(freeze_epochs, epoch))
        if epoch > 1 and encoder_frozen_at(freeze_epochs, epoch - 1) != bool(frozen):
            log.info("epoch %d: the encoder is %s", epoch, "frozen" if frozen else "trained from now on")
            if ctx.enabled:  # DDP syncs the gradients of what required one when it was built: wrap anew
                run.model = wrap_model(run.raw_model, cfg, ctx, run.device)
                if run.eval_raw_model is run.raw_model:
                    run.eval_model = run.model
        set_loader_epoch(run.loaders["train"], run.seed, epoch)
        lr = run.optimizer.param_groups[0]["lr"]
        stats = train_one_epoch(run.model, run.loaders["train"], run.optimizer, class_weights_C, run.device,
                                n_inputs=run.n_inputs, amp=run.amp, grad_clip=train_cfg["grad_clip"],
                                progress=ctx.is_main, desc=f"epoch {epoch}/{num_epochs}",
                                subjects=run.datasets["train"].subjects, frozen=frozen, ctx=ctx)
        loss_sum, n_valid, windows, train_seconds = ctx.all_sum(
            [stats["loss_sum"], stats["n_valid"], stats["windows"], stats["seconds"] / ctx.world_size])
        nights = windows / cfg["data"]["windows_per_subject"]  # night-equivalents: crops count by length
        train_loss = loss_sum / max(n_valid, 1)

        # validation on whole nights; the learning rate follows validation kappa
        sync_eval_model(run)
        val, val_pred = evaluate(run.eval_model, run.loaders["val"], run.datasets["val"].subjects, run.device,
                                 ctx, n_inputs=run.n_inputs, amp=run.amp, desc=f"epoch {epoch} validation")
        run.scheduler.step(val["kappa"] if math.isfinite(val["kappa"]) else 0.0)

        # history, early stopping and the best epoch (by training.select_best_by)
        values = dict(zip(HISTORY_KEYS, (train_loss, val["loss"], val["accuracy"], val["kappa"], val["f1_weighted"],
                                         val["median_kappa"], lr)))
        timing = {"epoch_seconds": time.perf_counter() - epoch_start,
                  "train_nights_per_s": nights / max(train_seconds, 1e-9)}
        improved = state.record_epoch(epoch, values, timing, train_cfg["patience"])

        # checkpoints on rank 0, each written atomically; last.pth last: it marks the epoch as done
        metrics = {"train_loss": train_loss, "val_loss": val["loss"], "val_accuracy": val["accuracy"],
                   "val_kappa": val["kappa"], "val_f1": val["f1_weighted"], "val_median_kappa": val["median_kappa"]}
        rng_states = ctx.all_gather(capture_rng_state(run.device))
        if ctx.is_main:
            payload, ckpt_dir = checkpoint_payload(run, state, metrics, rng_states), run.folder("checkpoints")
            if improved:
                save_checkpoint(ckpt_dir / BEST_CHECKPOINT, payload)
                if cfg["output"]["save_intermediate"]:
                    save_figure(confusion_figure(val["confusion_matrix"], f"Validation, epoch {epoch}"),
                                run.folder("results") / f"confusion_matrix_epoch_{epoch}.png")
            if epoch % cfg["output"]["save_frequency"] == 0:
                save_checkpoint(ckpt_dir / f"checkpoint_epoch_{epoch}.pth", payload)
            save_checkpoint(ckpt_dir / LAST_CHECKPOINT, payload)
            log_epoch(run, state, val, val_pred, improved)
        ctx.barrier()


def sync_eval_model(run: RunSetup) -> None:
    """Rank 0's BatchNorm statistics on every rank (one model is evaluated and saved, not a mix of ranks'),
    then the trained weights and statistics into the whole-night model, when they differ."""
    run.ctx.broadcast_buffers(run.raw_model)
    if run.eval_raw_model is not run.raw_model:
        run.eval_raw_model.load_state_dict(run.raw_model.state_dict())


def evaluate_parent(run: RunSetup) -> None:
    """The parent's validation figures on this run's validation set, before any step (how well the model
    transfers as it is): recorded with the parent, logged to TensorBoard as epoch 0."""
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
    ctx, cfg = run.ctx, run.cfg
    ctx.barrier()
    n_test = len(run.datasets["test"])
    tested_path = run.folder("checkpoints") / (BEST_CHECKPOINT if state.best_epoch > 0 else LAST_CHECKPOINT)
    if state.best_epoch > 0:
        best = load_checkpoint(tested_path)
        log.info("testing the best checkpoint (epoch %d by %s; validation loss %.4f) on %d test nights",
                 best["epoch"], state.select_best_by, best["early_stopping"]["best_val_loss"], n_test)
    else:
        best = load_checkpoint(tested_path)
        log.warning("no epoch had a finite %s on the validation set (kappa is undefined when the validation "
                    "nights hold one stage only), so there is no best checkpoint: testing the last one (epoch %d) "
                    "on %d test nights", state.select_best_by, best["epoch"], n_test)
    run.eval_raw_model.load_state_dict(best["model_state_dict"])
    test, test_pred = evaluate(run.eval_model, run.loaders["test"], run.datasets["test"].subjects, run.device,
                               ctx, n_inputs=run.n_inputs, amp=run.amp, desc="test", keep_probs=True)
    if not ctx.is_main:
        return None
    results = build_test_results(run, state, test, best, tested_path)
    path = write_test_results(run.folder("results"), results)
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
    log.info("results saved to %s", path)
    write_test_validation(run.folder("results"), list(run.datasets["test"].subjects), test_pred,
                          run.cfg["evaluation"])
    return results


def train_run(cfg: dict, model_kind: str, run_id: int | None, device: torch.device, ctx: DistContext,
              data_fingerprint: dict, resume: Resume | None = None,
              parent: ParentCheckpoint | None = None) -> dict | None:
    """Train, test and write one run (from `parent`'s weights when given); returns the test results on rank 0
    (None on other ranks). A stop (Ctrl-C, bad data, divergence, a full disk) says which epoch last.pth keeps
    and how to continue (`stop_explained`)."""
    run_dir = open_run_dir(cfg, model_kind, run_id, ctx, resume)
    with contextlib.ExitStack() as stack:
        if ctx.is_main:
            stack.enter_context(log_to_file(run_dir / "console_logs" / f"{run_dir.name}.log"))
        stack.enter_context(stop_explained(run_dir, ctx))
        if ctx.is_main:
            write_json(run_dir / "checkpoints" / "config.json", cfg)
        log.info("%s %s in %s on %s%s", "resuming" if resume else "training", model_kind, run_dir, device,
                 f" x{ctx.world_size} processes" if ctx.enabled else "")
        stack.enter_context(kernel_settings(device))
        run, state = build_run(cfg, model_kind, run_id, device, ctx, run_dir, resume, data_fingerprint, parent)
        if run.writer is not None:
            stack.callback(run.writer.close)
        train(run, state)
        return test_best_checkpoint(run, state)


# ----------------------------------------------------------------------------------------------------------
# Entry point


def train_all(args: argparse.Namespace, ctx: DistContext) -> int:
    """Check the setup, then train (and test) every model and run asked for; print the results."""
    cfg, resume = load_run_config(args)
    check_transfer_settings(cfg)
    parents: dict[str, ParentCheckpoint | None] = {}
    if resume is None:  # a resumed run has its own weights and keeps its parent's record
        for kind in models_to_train(args.model, cfg):
            parents[kind] = load_parent(cfg, kind)
            if parents[kind] is not None:
                cfg["training"]["init_from_sha256"] = parents[kind].record["sha256"]  # into config.json
    device = resolve_device(args.device, cfg["gpu"]["device_id"], ctx.local_rank if ctx.enabled else None)
    check_compile_setup(cfg, device, distributed=ctx.enabled)
    kinds = [resume.ckpt["model_kind"]] if resume is not None else models_to_train(args.model, cfg)
    fingerprints = {kind: preflight_data(cfg, kind) for kind in kinds}
    if resume is not None:
        check_resume(resume, cfg, fingerprints[kinds[0]], args.resume_anyway)
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
    if not ctx.is_main:
        return EXIT_OK
    for kind in kinds:
        for r in all_results[kind]:
            print(f"{kind}{'' if r['run_id'] is None else ' run ' + str(r['run_id'])}: test kappa "
                  f"{r['test_kappa_overall']:.4f}, accuracy {r['test_accuracy_overall']:.4f}, "
                  f"median per-subject kappa {r['test_median_kappa']:.4f} -> {r['output_dir']}")
    if num_runs > 1:
        summary = summarize_runs(all_results)
        stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
        path = Path(cfg["output"]["save_dir"]) / f"summary_results_{stamp}.json"
        write_json(path, {"num_runs": num_runs, "models": kinds, "summary": summary, "results": all_results})
        for kind in kinds:
            for key, s in summary[kind].items():
                print(f"{kind} {key}: median {s['median']:.4f} | mean {s['mean']:.4f} ± {s['std']:.4f}")
        print(f"summary over {num_runs} runs: {path}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Train; returns the exit status: 0 done, 1 bad data or training diverged, 2 bad setup (a full disk
    included), 130 Ctrl-C. Every error that stops the run is one line on the console, logged here."""
    args = parse_args(argv)
    setup_logging()
    ctx = DistContext()
    if not ctx.is_main:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 speaks for the group
    try:
        return train_all(args, ctx)
    except KeyboardInterrupt:  # a run in progress has said what last.pth keeps and how to resume
        return EXIT_INTERRUPTED
    except (DataError, TrainingDiverged) as err:
        if ctx.is_main:  # every rank raises the same error at the same step (the step's checks are agreed)
            log.error("%s", err)
        return EXIT_FAILED
    except ConfigError as err:
        log.error("config error: %s", err)
        return EXIT_SETUP
    except SetupError as err:
        log.error("%s", err)
        return EXIT_SETUP
    except (OSError, RuntimeError) as err:
        full = disk_full_error(err)
        if full is None:
            raise
        log.error("disk full while writing %s: free space on the disk and run the same command again",
                  full.filename or "an output file")
        return EXIT_SETUP
    finally:
        ctx.close()


if __name__ == "__main__":
    keep_freed_memory()  # CPU steps: reuse freed activation memory instead of faulting in fresh pages
    sys.exit(run_entry_point(main))
