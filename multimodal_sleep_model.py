"""SleepPPG-Net (PPG only) and its PPG+ECG variant, returning per-epoch class logits.

Architecture (Kotzen et al., "SleepPPG-Net", IEEE JBHI 2023; SPEC §6):

    ppg_B1T (B, 1, n_windows*1024)  z-scored PPG at 34.13 Hz, T = 1,228,800 for a 10-h night
      -> 8 ResConv blocks (channels 16,16,32,32,64,64,128,256; each halves time)   (B, 256, 4*n_windows)
      -> regroup the 4 steps of each 30-s window into channels                     (B, 1024, n_windows)
      -> dense layer per window 1024 -> 128                                         (B, 128, n_windows)
      -> two TCN stacks of 6 residual blocks (kernel 7, dilations 1..32)            (B, 128, n_windows)
      -> 1x1 conv 128 -> 4                                                          logits_BCW (B, 4, n_windows)

The output is raw logits (Wake, Light, Deep, REM) for `torch.nn.CrossEntropyLoss`; the reference applied a
softmax here and again inside the loss, which we do not. At the default `n_windows=1200` the PPG-only model has
3,642,644 parameters, as the reference; the count does not depend on `n_windows`.

`MultiModalSleepNet` encodes ECG with its own 8 blocks and fuses the two streams before the regroup step:
`concat` (512 channels), `attention` (8-head cross-attention, PPG queries ECG, residual) or `gated` (sigmoid
gates from channel means).

Checkpoints are self-describing: `checkpoint_model_fields(model)` gives the model kind and constructor
arguments, and `load_model_from_checkpoint(path)` rebuilds the model from the file alone (weights_only=True).

Usage: `python multimodal_sleep_model.py [--n-windows 4]` prints output shapes and parameter counts.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm

from sleepppg_common import N_CLASSES, SAMPLES_PER_WINDOW, WINDOWS_PER_SUBJECT

# ----------------------------------------------------------------------------------------------------------
# Constants (SleepPPG-Net paper; SPEC §6)
ENCODER_CHANNELS = (16, 16, 32, 32, 64, 64, 128, 256)  # output channels of the 8 ResConv blocks
TIME_REDUCTION = 2 ** len(ENCODER_CHANNELS)  # each block max-pools by 2: 1,228,800 -> 4,800 samples
STEPS_PER_WINDOW = SAMPLES_PER_WINDOW // TIME_REDUCTION  # 4 encoder steps per 30-s window
EMBED_DIM = 128  # per-window embedding after the dense layer
TCN_KERNEL = 7
TCN_LEVELS = 6  # dilations 1, 2, 4, 8, 16, 32: a receptive field of ~380 windows (~3 h) per stack
TCN_STACKS = 2
ATTENTION_HEADS = 8  # cross-modal attention (reference)
ATTENTION_DROPOUT = 0.1  # on the attention weights (reference)
FUSION_STRATEGIES = ("concat", "attention", "gated")
PPG_ONLY_PARAMETERS = 3_642_644  # the reference's count at defaults (a test checks it)

log = logging.getLogger("sleepppg.model")


# ----------------------------------------------------------------------------------------------------------
# Small pure functions


def check_signal(x_B1T: torch.Tensor, n_windows: int, name: str = "ppg") -> None:
    """Raise ValueError unless `x_B1T` is a (B, 1, n_windows*1024) float tensor."""
    expected = n_windows * SAMPLES_PER_WINDOW
    if not isinstance(x_B1T, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x_B1T).__name__}")
    if x_B1T.ndim != 3 or x_B1T.shape[1] != 1:
        raise ValueError(f"{name} must have shape (batch, 1, {expected}) = (batch, channel, samples); "
                         f"got {tuple(x_B1T.shape)}")
    if x_B1T.shape[2] != expected:
        raise ValueError(f"{name} has {x_B1T.shape[2]} samples but this model expects n_windows x 1024 = "
                         f"{n_windows} x {SAMPLES_PER_WINDOW} = {expected}; build the model with "
                         f"n_windows={x_B1T.shape[2] / SAMPLES_PER_WINDOW:g} or pad/truncate the night")
    if not x_B1T.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x_B1T.dtype}")


def regroup_windows(feat_BCL: torch.Tensor, n_windows: int) -> torch.Tensor:
    """(B, C, n_windows*4) encoder output -> (B, C*4, n_windows): the 4 steps of each window become channels.

    Step s of window w (time index 4w + s) lands in channel 4c + s of column w, the reference's order
    (view as (B, C, W, 4), move the step axis before the window axis, merge it with the channels).
    """
    b, c, length = feat_BCL.shape
    if length != n_windows * STEPS_PER_WINDOW:
        raise ValueError(f"encoder output has {length} steps, expected {n_windows} x {STEPS_PER_WINDOW}")
    feat_BCWS = feat_BCL.reshape(b, c, n_windows, STEPS_PER_WINDOW)
    return feat_BCWS.permute(0, 1, 3, 2).reshape(b, c * STEPS_PER_WINDOW, n_windows)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (weight-normed convs count their magnitude and direction, as the reference)."""
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------------
# Building blocks


class ResConvBlock(nn.Module):
    """Three Conv1d(k=3) + BatchNorm + LeakyReLU, MaxPool(2); skip = (1x1 conv if channels change) + MaxPool(2).

    (B, C_in, L) -> (B, C_out, L/2).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(3):
            layers += [nn.Conv1d(in_channels if i == 0 else out_channels, out_channels, kernel_size=3, padding=1),
                       nn.BatchNorm1d(out_channels), nn.LeakyReLU()]
        self.main = nn.Sequential(*layers)
        self.skip = nn.Conv1d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None

    def forward(self, x_BCL: torch.Tensor) -> torch.Tensor:
        skip_BCL = x_BCL if self.skip is None else self.skip(x_BCL)
        return F.max_pool1d(self.main(x_BCL), 2) + F.max_pool1d(skip_BCL, 2)


def make_encoder() -> nn.Sequential:
    """The 8 ResConv blocks: (B, 1, T) -> (B, 256, T/256)."""
    blocks, c_in = [], 1
    for c_out in ENCODER_CHANNELS:
        blocks.append(ResConvBlock(c_in, c_out))
        c_in = c_out
    return nn.Sequential(*blocks)


class CausalConv1d(nn.Module):
    """Weight-normed dilated Conv1d padded on both sides, then the last `padding` steps chomped off.

    Output step t sees inputs t-(k-1)d .. t only (the TCN of Bai et al. 2018, as the reference uses it).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int):
        super().__init__()
        self.chomp = (kernel_size - 1) * dilation
        # The reference also drew these weights from N(0, 0.01), but under weight_norm that assignment is
        # overwritten at the first forward pass, so it trains with PyTorch's default init; we keep that.
        self.conv = weight_norm(nn.Conv1d(in_channels, out_channels, kernel_size,
                                          padding=self.chomp, dilation=dilation))

    def forward(self, x_BCL: torch.Tensor) -> torch.Tensor:
        return self.conv(x_BCL)[:, :, :-self.chomp]


class TemporalBlock(nn.Module):
    """Two causal dilated convs (each LeakyReLU + dropout) with a residual: (B, C, W) -> (B, C_out, W)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            CausalConv1d(in_channels, out_channels, kernel_size, dilation), nn.LeakyReLU(), nn.Dropout(dropout),
            CausalConv1d(out_channels, out_channels, kernel_size, dilation), nn.LeakyReLU(), nn.Dropout(dropout),
        )
        self.downsample = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x_BCW: torch.Tensor) -> torch.Tensor:
        res_BCW = x_BCW if self.downsample is None else self.downsample(x_BCW)
        return F.leaky_relu(self.net(x_BCW) + res_BCW)


def make_tcn(channels: int, dropout: float) -> nn.Sequential:
    """One TCN stack: TCN_LEVELS temporal blocks with dilations 1, 2, 4, ... (B, C, W) -> (B, C, W)."""
    return nn.Sequential(*[TemporalBlock(channels, channels, TCN_KERNEL, 2 ** i, dropout)
                           for i in range(TCN_LEVELS)])


class StagingHead(nn.Module):
    """Encoder features -> logits: regroup, dense per window, two TCN stacks, 1x1 conv.

    (B, C, 4*n_windows) -> (B, num_classes, n_windows).
    """

    def __init__(self, in_channels: int, n_windows: int, num_classes: int, dropout: float):
        super().__init__()
        self.n_windows = n_windows
        self.dense = nn.Linear(in_channels * STEPS_PER_WINDOW, EMBED_DIM)
        self.tcn = nn.Sequential(*[make_tcn(EMBED_DIM, dropout) for _ in range(TCN_STACKS)])
        self.classifier = nn.Conv1d(EMBED_DIM, num_classes, kernel_size=1)

    def forward(self, feat_BCL: torch.Tensor) -> torch.Tensor:
        feat_BDW = regroup_windows(feat_BCL, self.n_windows)
        emb_BEW = self.dense(feat_BDW.transpose(1, 2)).transpose(1, 2)
        return self.classifier(self.tcn(emb_BEW))


class CrossModalAttention(nn.Module):
    """Multi-head attention with PPG steps as queries and ECG steps as keys/values, plus the PPG residual.

    (B, C, L), (B, C, L) -> (B, C, L). Softmax(QK^T/sqrt(d)) with dropout on the weights, as the reference;
    computed with `scaled_dot_product_attention` (flash/memory-efficient kernels on GPU).
    """

    def __init__(self, channels: int, num_heads: int = ATTENTION_HEADS, dropout: float = ATTENTION_DROPOUT):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
        self.num_heads, self.dropout = num_heads, dropout
        self.query = nn.Linear(channels, channels)
        self.key = nn.Linear(channels, channels)
        self.value = nn.Linear(channels, channels)
        self.out = nn.Linear(channels, channels)

    def _heads(self, x_BLC: torch.Tensor) -> torch.Tensor:
        b, length, c = x_BLC.shape
        return x_BLC.reshape(b, length, self.num_heads, c // self.num_heads).transpose(1, 2)  # (B, H, L, d)

    def forward(self, ppg_BCL: torch.Tensor, ecg_BCL: torch.Tensor) -> torch.Tensor:
        ppg_BLC, ecg_BLC = ppg_BCL.transpose(1, 2), ecg_BCL.transpose(1, 2)
        ctx_BHLd = F.scaled_dot_product_attention(
            self._heads(self.query(ppg_BLC)), self._heads(self.key(ecg_BLC)), self._heads(self.value(ecg_BLC)),
            dropout_p=self.dropout if self.training else 0.0)
        ctx_BLC = ctx_BHLd.transpose(1, 2).reshape(ppg_BLC.shape)
        return (self.out(ctx_BLC) + ppg_BLC).transpose(1, 2)


# ----------------------------------------------------------------------------------------------------------
# Models


class SleepPPGNet(nn.Module):
    """SleepPPG-Net: (B, 1, n_windows*1024) PPG -> (B, num_classes, n_windows) logits."""

    model_kind = "ppg_only"

    def __init__(self, n_windows: int = WINDOWS_PER_SUBJECT, num_classes: int = N_CLASSES, dropout: float = 0.2):
        super().__init__()
        _check_args(n_windows, num_classes, dropout)
        self.model_args = {"n_windows": int(n_windows), "num_classes": int(num_classes), "dropout": float(dropout)}
        self.n_windows = int(n_windows)
        self.encoder = make_encoder()
        self.head = StagingHead(ENCODER_CHANNELS[-1], self.n_windows, num_classes, dropout)

    def forward(self, ppg_B1T: torch.Tensor) -> torch.Tensor:
        check_signal(ppg_B1T, self.n_windows, "ppg")
        return self.head(self.encoder(ppg_B1T))


class MultiModalSleepNet(nn.Module):
    """PPG + ECG: two encoders, a fusion step, then the SleepPPG-Net head. Returns (B, num_classes, n_windows)."""

    model_kind = "real_ecg"

    def __init__(self, fusion_strategy: str = "attention", n_windows: int = WINDOWS_PER_SUBJECT,
                 num_classes: int = N_CLASSES, dropout: float = 0.2):
        super().__init__()
        _check_args(n_windows, num_classes, dropout)
        if fusion_strategy not in FUSION_STRATEGIES:
            raise ValueError(f"fusion_strategy must be one of {FUSION_STRATEGIES}, got {fusion_strategy!r}")
        self.model_args = {"fusion_strategy": fusion_strategy, "n_windows": int(n_windows),
                           "num_classes": int(num_classes), "dropout": float(dropout)}
        self.fusion_strategy = fusion_strategy
        self.n_windows = int(n_windows)
        channels = ENCODER_CHANNELS[-1]
        self.ppg_encoder = make_encoder()
        self.ecg_encoder = make_encoder()
        if fusion_strategy == "attention":
            self.attention = CrossModalAttention(channels)
        elif fusion_strategy == "gated":
            self.ppg_gate = nn.Sequential(nn.Linear(channels, channels), nn.Sigmoid())
            self.ecg_gate = nn.Sequential(nn.Linear(channels, channels), nn.Sigmoid())
        fused_channels = 2 * channels if fusion_strategy == "concat" else channels
        self.head = StagingHead(fused_channels, self.n_windows, num_classes, dropout)

    def fuse(self, ppg_BCL: torch.Tensor, ecg_BCL: torch.Tensor) -> torch.Tensor:
        """Combine the two encoded streams: (B, 256, L) x 2 -> (B, 512 or 256, L)."""
        if self.fusion_strategy == "concat":
            return torch.cat([ppg_BCL, ecg_BCL], dim=1)
        if self.fusion_strategy == "attention":
            return self.attention(ppg_BCL, ecg_BCL)
        ppg_gate_BC1 = self.ppg_gate(ppg_BCL.mean(dim=2)).unsqueeze(2)
        ecg_gate_BC1 = self.ecg_gate(ecg_BCL.mean(dim=2)).unsqueeze(2)
        return ppg_gate_BC1 * ppg_BCL + ecg_gate_BC1 * ecg_BCL

    def forward(self, ppg_B1T: torch.Tensor, ecg_B1T: torch.Tensor) -> torch.Tensor:
        check_signal(ppg_B1T, self.n_windows, "ppg")
        check_signal(ecg_B1T, self.n_windows, "ecg")
        if ppg_B1T.shape[0] != ecg_B1T.shape[0]:
            raise ValueError(f"ppg and ecg batch sizes differ: {ppg_B1T.shape[0]} vs {ecg_B1T.shape[0]}")
        return self.head(self.fuse(self.ppg_encoder(ppg_B1T), self.ecg_encoder(ecg_B1T)))


MODEL_CLASSES = {"ppg_only": SleepPPGNet, "real_ecg": MultiModalSleepNet}


def _check_args(n_windows: Any, num_classes: Any, dropout: Any) -> None:
    if not isinstance(n_windows, int) or isinstance(n_windows, bool) or n_windows < 1:
        raise ValueError(f"n_windows must be a positive int, got {n_windows!r}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


# ----------------------------------------------------------------------------------------------------------
# Factory and checkpoints


def build_model(kind: str, **model_args: Any) -> nn.Module:
    """Build a model by kind: "ppg_only" -> SleepPPGNet, "real_ecg" -> MultiModalSleepNet (kwargs passed on)."""
    if kind not in MODEL_CLASSES:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(MODEL_CLASSES)}")
    return MODEL_CLASSES[kind](**model_args)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside DistributedDataParallel / DataParallel and torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def checkpoint_model_fields(model: nn.Module) -> dict:
    """{"model_kind", "model_args"}: what a checkpoint needs to rebuild `model` (wrappers are unwrapped)."""
    model = unwrap_model(model)
    if not hasattr(model, "model_kind") or not hasattr(model, "model_args"):
        raise ValueError(f"{type(model).__name__} is not a model of this module (no model_kind/model_args)")
    return {"model_kind": model.model_kind, "model_args": dict(model.model_args)}


def load_model_from_checkpoint(path: str | os.PathLike, map_location: Any = "cpu",
                               expected_kind: str | None = None) -> tuple[nn.Module, dict]:
    """Rebuild a model from a checkpoint written by train_ppg_only.py.

    Args:
        path: the .pth file (a dict with model_kind, model_args, model_state_dict, ...).
        map_location: passed to torch.load.
        expected_kind: if given ("ppg_only" or "real_ecg"), a checkpoint of another kind is an error.
    Returns:
        (model in eval mode with the saved weights, the checkpoint dict)
    Raises:
        FileNotFoundError if the file is missing; ValueError if it is not one of our checkpoints or is of
        the wrong kind.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path} cannot be loaded with weights_only=True (not a checkpoint written by "
                         f"train_ppg_only.py, or it holds arbitrary Python objects): {err}") from err
    except (RuntimeError, EOFError) as err:  # torch raises RuntimeError for files that are not torch archives
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {err}") from err
    required = ("model_kind", "model_args", "model_state_dict")
    missing = [k for k in required if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"{path} is not a checkpoint of this project: missing {missing} (it must be written by "
                         f"train_ppg_only.py with model_kind, model_args and model_state_dict)")
    kind = ckpt["model_kind"]
    if kind not in MODEL_CLASSES:
        raise ValueError(f"{path}: unknown model_kind {kind!r}; expected one of {sorted(MODEL_CLASSES)}")
    if expected_kind is not None and kind != expected_kind:
        raise ValueError(f"{path} holds a {kind!r} model but a {expected_kind!r} model was asked for")
    try:
        model = build_model(kind, **ckpt["model_args"])
    except TypeError as err:  # an argument this version does not know
        raise ValueError(f"{path}: cannot build a {kind!r} model from model_args {ckpt['model_args']}: {err}") from err
    state = dict(ckpt["model_state_dict"])
    for prefix in ("_orig_mod.", "module."):  # saved from a compiled or DDP-wrapped model
        nn.modules.utils.consume_prefix_in_state_dict_if_present(state, prefix)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # missing/unexpected keys or shape mismatches
        raise ValueError(f"{path}: the weights do not fit a {kind!r} model with {ckpt['model_args']}: {err}") from err
    model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu")
    model.eval()
    return model, ckpt


# ----------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Print output shapes and parameter counts of every model variant.")
    p.add_argument("--n-windows", type=int, default=4,
                   help="windows per night for the shape check (default 4, i.e. 2 min; 1200 = a full night)")
    p.add_argument("--batch", type=int, default=2, help="batch size for the shape check")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(0)
    n_samples = args.n_windows * SAMPLES_PER_WINDOW
    ppg_B1T = torch.randn(args.batch, 1, n_samples)
    ecg_B1T = torch.randn(args.batch, 1, n_samples)
    variants = [("ppg_only", {})] + [("real_ecg", {"fusion_strategy": s}) for s in FUSION_STRATEGIES]
    print(f"input (B, 1, T) = {tuple(ppg_B1T.shape)}  ({args.n_windows} windows of {SAMPLES_PER_WINDOW} samples)")
    for kind, extra in variants:
        model = build_model(kind, n_windows=args.n_windows, **extra).eval()
        with torch.no_grad():
            logits_BCW = model(ppg_B1T) if kind == "ppg_only" else model(ppg_B1T, ecg_B1T)
        name = kind + (f"/{extra['fusion_strategy']}" if extra else "")
        print(f"{name:<20s} logits {tuple(logits_BCW.shape)}  parameters {count_parameters(model):,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
