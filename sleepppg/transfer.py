"""Transfer learning: a run that starts from a trained model's weights (`training.init_from`, ours or the
reference's checkpoint) instead of random ones, optionally with the encoder frozen
(`training.freeze_encoder_epochs`).

The paper's second result (kappa 0.74 on an external cohort) comes from fine-tuning its MESA model. The parent
must be of the same model kind, window count, TCN causality (and fusion) as the run; `load_parent` checks that
and stops (SetupError) before any run folder exists. The parent's path and sha256 are recorded in the run's
config, every checkpoint and test_results.json.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sleepppg.checkpoints import file_sha256
from sleepppg.constants import N_CLASSES
from sleepppg.errors import ConfigError, SetupError

log = logging.getLogger("sleepppg.transfer")

FREEZE_ALL_EPOCHS = -1  # training.freeze_encoder_epochs: the encoder stays frozen for the whole run
ENCODER_NAMES = ("encoder", "ppg_encoder", "ecg_encoder")  # the 8-ResConv-block encoders of our two models


@dataclass
class ParentCheckpoint:
    """The trained model a run starts from: what is recorded about it, and its weights."""

    # path, sha256, checkpoint_format (+ reference_version), model_kind, model_args, epoch (+ val_before_training)
    record: dict
    state_dict: dict


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

    Ours or the reference's format (sleepppg.checkpoints.load_model_from_checkpoint reads both, with
    weights_only=True). Stops the program, naming the problem, when the file is missing or unreadable, its
    sha256 is not training.init_from_sha256 (when that is set), or its model kind, window count, TCN causality,
    fusion or class count differ from this run's: all before any run folder is made.
    """
    train_cfg = cfg["training"]
    if not train_cfg["init_from"]:
        return None
    from sleepppg.checkpoints import load_model_from_checkpoint

    path = Path(train_cfg["init_from"])
    if path.is_dir():
        raise SetupError(f"training.init_from (--init-from) = {path} is a folder; give the checkpoint file")
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
