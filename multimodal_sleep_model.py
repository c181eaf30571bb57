"""SleepPPG-Net (PPG only) and its PPG+ECG variant, returning per-epoch class logits.

Architecture (Kotzen et al., "SleepPPG-Net", IEEE JBHI 2023), for a night of W 30-s windows:

    ppg_B1T (B, 1, W*1024)  z-scored PPG at 34.13 Hz, T = 1,228,800 for a 10-h night (W = 1,200)
      -> 8 ResConv blocks (channels 16,16,32,32,64,64,128,256; each halves time)   feat_BCL (B, 256, L = 4*W)
      -> regroup the 4 steps of each 30-s window into channels                     (B, 1024, W)
      -> dense layer per window 1024 -> 128                                         emb_BEW (B, 128, W)
      -> two TCN stacks of 6 residual blocks (kernel 7, dilations 1..32)            (B, 128, W)
      -> 1x1 conv 128 -> 4                                                          logits_BCW (B, 4, W)

Shape suffixes in tensor names: B batch (nights), C channels or classes, W windows (30-s epochs),
T time samples (1,024 per window), L encoder steps (4 per window), E embedding (128).

The output is raw logits (Wake, Light, Deep, REM) for `torch.nn.CrossEntropyLoss`; the reference applied a
softmax here and again inside the loss, which we do not. The PPG-only model has 3,642,644 parameters, as the
reference; the count does not depend on W. The network is convolutional and only the regroup step depends on
W, so the weights of a model trained on 240-window segments stage a full 1,200-window night once rebuilt at
that count (`with_n_windows`, or `load_model_from_checkpoint(..., n_windows=1200)`).

The TCN is causal by default (`tcn_causal=True`, as the reference: each conv is padded by (k-1)d on both sides
and the last (k-1)d steps are chomped, so window w sees windows <= w only). `tcn_causal=False` pads (k-1)d/2
on each side instead: a centred dilated TCN that also sees later windows, with the same parameters.

`MultiModalSleepNet` encodes ECG with its own 8 blocks and fuses the two streams before the regroup step:
`concat` (512 channels), `attention` (8-head cross-attention, PPG queries ECG, residual) or `gated` (sigmoid
gates from channel means).

Memory: `set_activation_checkpointing(model, True)` recomputes the 8 encoder blocks in the backward pass
instead of keeping their activations (most of a training step's memory); outputs and gradients are the same.

Checkpoints are self-describing: `checkpoint_model_fields(model)` gives the model kind and constructor
arguments, and `load_model_from_checkpoint(path)` rebuilds the model from the file alone (weights_only=True).
It also reads the reference implementation's checkpoints (`best_model.pth`, `checkpoint_epoch_N.pth`, or a
bare state dict with its module names) and converts them in memory; see its docstring.

Usage: `python multimodal_sleep_model.py [--n-windows 10]` prints output shapes and parameter counts.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm
from torch.utils.checkpoint import checkpoint as checkpoint_activations

from sleepppg.constants import N_CLASSES, SAMPLES_PER_WINDOW, WINDOWS_PER_SUBJECT

# ----------------------------------------------------------------------------------------------------------
# Constants (SleepPPG-Net paper and the reference implementation)
ENCODER_CHANNELS = (16, 16, 32, 32, 64, 64, 128, 256)  # output channels of the 8 ResConv blocks
TIME_REDUCTION = 2 ** len(ENCODER_CHANNELS)  # each block max-pools by 2: 1,228,800 -> 4,800 samples
STEPS_PER_WINDOW = SAMPLES_PER_WINDOW // TIME_REDUCTION  # 4 encoder steps per 30-s window
EMBED_DIM = 128  # per-window embedding after the dense layer
TCN_KERNEL = 7
TCN_LEVELS = 6  # dilations 1..32, two convs each: a reach of 1 + 2*6*63 = 757 windows (6.3 h) per stack
TCN_STACKS = 2
ATTENTION_HEADS = 8  # cross-modal attention (reference)
ATTENTION_DROPOUT = 0.1  # on the attention weights (reference)
FUSION_STRATEGIES = ("concat", "attention", "gated")
PPG_ONLY_PARAMETERS = 3_642_644  # the reference's count at defaults (a test checks it)
REFERENCE_N_WINDOWS = 1200  # the reference's forward() reshapes to exactly 1,200 windows (10 h)
REFERENCE_DROPOUT = 0.2  # the reference's TCN dropout (not stored in its checkpoints; no effect in eval mode)
CHECKPOINT_FORMATS = ("sleepppg", "reference")  # values of checkpoint_dict["checkpoint_format"]

# Plain values a reference checkpoint holds besides tensors: numpy float64 scalars (its kappa, accuracy and
# F1 from numpy/scikit-learn, in `best_overall_kappa` and `training_history`). Unpickling them needs numpy's
# scalar constructor, numpy.dtype and the float64 dtype class (numpy.dtypes.Float64DType); they only rebuild a
# float64 number from its bytes, no code runs. Other numpy types stay refused.
# Files written with numpy 1.x name the constructor numpy.core.multiarray.scalar, with numpy 2.x
# numpy._core.multiarray.scalar. (torch.serialization.safe_globals needs torch >= 2.5.)
_NUMPY_SCALAR = (getattr(np, "_core", None) or np.core).multiarray.scalar  # numpy 2 renamed numpy.core to _core
NUMPY_SAFE_GLOBALS = [np.dtype, type(np.dtype("float64")), (_NUMPY_SCALAR, "numpy._core.multiarray.scalar"),
                      (_NUMPY_SCALAR, "numpy.core.multiarray.scalar")]

log = logging.getLogger("sleepppg.model")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the one-line message names the file and the problem."""


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
                         f"{n_windows} x {SAMPLES_PER_WINDOW} = {expected}; rebuild the model with "
                         f"with_n_windows(model, {x_B1T.shape[2] / SAMPLES_PER_WINDOW:g}) or pad/truncate the night")
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
    feat_BCWL = feat_BCL.reshape(b, c, n_windows, STEPS_PER_WINDOW)  # L: the 4 encoder steps of one window
    return feat_BCWL.permute(0, 1, 3, 2).reshape(b, c * STEPS_PER_WINDOW, n_windows)


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


@contextlib.contextmanager
def _batchnorm_stats_kept(module: nn.Module) -> Iterator[None]:
    """Restore the BatchNorm running statistics of `module` on exit.

    Activation checkpointing runs a block's forward a second time during backward; in training mode that
    would update the running mean/variance (and the batch counter) twice per step.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [[b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked)] for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, (mean, var, count) in zip(norms, saved):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)


class Encoder(nn.Sequential):
    """The 8 ResConv blocks: (B, 1, T) -> (B, 256, T/256), optionally with activation checkpointing.

    With `activation_checkpointing` on (see set_activation_checkpointing) and gradients enabled, each block's
    activations are dropped after the forward pass and recomputed in the backward pass (torch.utils.checkpoint,
    non-reentrant). The encoder's activations at full resolution are most of a training step's memory.
    """

    def __init__(self, channels: tuple[int, ...] = ENCODER_CHANNELS):
        blocks, c_in = [], 1
        for c_out in channels:
            blocks.append(ResConvBlock(c_in, c_out))
            c_in = c_out
        super().__init__(*blocks)
        self.activation_checkpointing = False

    def forward(self, x_BCL: torch.Tensor) -> torch.Tensor:
        use_checkpoints = self.activation_checkpointing and torch.is_grad_enabled()
        compiling = torch.compiler.is_compiling()
        for block in self:
            if not use_checkpoints:
                x_BCL = block(x_BCL)
            elif compiling:  # the compiled graph recomputes values only; buffer updates happen once, in forward
                x_BCL = checkpoint_activations(block, x_BCL, use_reentrant=False)
            else:
                x_BCL = checkpoint_activations(
                    block, x_BCL, use_reentrant=False,
                    context_fn=lambda b=block: (contextlib.nullcontext(), _batchnorm_stats_kept(b)))
        return x_BCL


def make_encoder() -> Encoder:
    """The 8 ResConv blocks: (B, 1, T) -> (B, 256, T/256)."""
    return Encoder()


class CausalConv1d(nn.Module):
    """Weight-normed dilated Conv1d of a TCN block; causal (chomped) or centred.

    causal=True (the TCN of Bai et al. 2018, as the reference uses it): padded by (k-1)d on both sides, then
    the last (k-1)d steps are chomped off, so output step w sees inputs w-(k-1)d .. w only.
    causal=False: padded by (k-1)d/2 on each side, so step w sees w-(k-1)d/2 .. w+(k-1)d/2. Same parameters.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int,
                 causal: bool = True):
        super().__init__()
        if not causal and kernel_size % 2 == 0:
            raise ValueError(f"a centred TCN needs an odd kernel size, got {kernel_size}")
        span = (kernel_size - 1) * dilation
        self.chomp = span if causal else 0
        # The reference also drew these weights from N(0, 0.01), but under weight_norm that assignment is
        # overwritten at the first forward pass, so it trains with PyTorch's default init; we keep that.
        self.conv = weight_norm(nn.Conv1d(in_channels, out_channels, kernel_size,
                                          padding=span if causal else span // 2, dilation=dilation))

    def forward(self, x_BCW: torch.Tensor) -> torch.Tensor:
        out_BCW = self.conv(x_BCW)
        return out_BCW[:, :, :-self.chomp] if self.chomp else out_BCW


class TemporalBlock(nn.Module):
    """Two dilated convs (each LeakyReLU + dropout) with a residual: (B, C, W) -> (B, C_out, W)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int, dropout: float,
                 causal: bool = True):
        super().__init__()
        self.net = nn.Sequential(
            CausalConv1d(in_channels, out_channels, kernel_size, dilation, causal), nn.LeakyReLU(),
            nn.Dropout(dropout),
            CausalConv1d(out_channels, out_channels, kernel_size, dilation, causal), nn.LeakyReLU(),
            nn.Dropout(dropout),
        )
        self.downsample = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x_BCW: torch.Tensor) -> torch.Tensor:
        res_BCW = x_BCW if self.downsample is None else self.downsample(x_BCW)
        return F.leaky_relu(self.net(x_BCW) + res_BCW)


def make_tcn(channels: int, dropout: float, causal: bool = True) -> nn.Sequential:
    """One TCN stack: TCN_LEVELS temporal blocks with dilations 1, 2, 4, ... (B, C, W) -> (B, C, W)."""
    return nn.Sequential(*[TemporalBlock(channels, channels, TCN_KERNEL, 2 ** i, dropout, causal)
                           for i in range(TCN_LEVELS)])


class StagingHead(nn.Module):
    """Encoder features -> logits: regroup, dense per window, two TCN stacks, 1x1 conv.

    (B, C, 4*n_windows) -> (B, num_classes, n_windows).
    """

    def __init__(self, in_channels: int, n_windows: int, num_classes: int, dropout: float,
                 tcn_causal: bool = True):
        super().__init__()
        self.n_windows = n_windows
        self.dense = nn.Linear(in_channels * STEPS_PER_WINDOW, EMBED_DIM)
        self.tcn = nn.Sequential(*[make_tcn(EMBED_DIM, dropout, tcn_causal) for _ in range(TCN_STACKS)])
        self.classifier = nn.Conv1d(EMBED_DIM, num_classes, kernel_size=1)

    def forward(self, feat_BCL: torch.Tensor) -> torch.Tensor:
        feat_BCW = regroup_windows(feat_BCL, self.n_windows)
        emb_BEW = self.dense(feat_BCW.transpose(1, 2)).transpose(1, 2)
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
        """(B, L, C) -> (B, heads, L, C/heads)."""
        b, length, c = x_BLC.shape
        return x_BLC.reshape(b, length, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, ppg_BCL: torch.Tensor, ecg_BCL: torch.Tensor) -> torch.Tensor:
        ppg_BLC, ecg_BLC = ppg_BCL.transpose(1, 2), ecg_BCL.transpose(1, 2)
        ctx_heads = F.scaled_dot_product_attention(  # (B, heads, L, C/heads)
            self._heads(self.query(ppg_BLC)), self._heads(self.key(ecg_BLC)), self._heads(self.value(ecg_BLC)),
            dropout_p=self.dropout if self.training else 0.0)
        ctx_BLC = ctx_heads.transpose(1, 2).reshape(ppg_BLC.shape)
        return (self.out(ctx_BLC) + ppg_BLC).transpose(1, 2)


# ----------------------------------------------------------------------------------------------------------
# Models


class SleepPPGNet(nn.Module):
    """SleepPPG-Net: (B, 1, n_windows*1024) PPG -> (B, num_classes, n_windows) logits.

    Args:
        n_windows: 30-s windows per input night (1,200 = 10 h); only the regroup step depends on it.
        num_classes: output classes (4: Wake, Light, Deep, REM).
        dropout: TCN dropout (0.2, the reference).
        tcn_causal: True (default, the reference) = chomped causal TCN; False = centred dilated TCN.
    """

    model_kind = "ppg_only"

    def __init__(self, n_windows: int = WINDOWS_PER_SUBJECT, num_classes: int = N_CLASSES, dropout: float = 0.2,
                 tcn_causal: bool = True):
        super().__init__()
        _check_args(n_windows, num_classes, dropout, tcn_causal)
        self.model_args = {"n_windows": int(n_windows), "num_classes": int(num_classes), "dropout": float(dropout),
                           "tcn_causal": tcn_causal}
        self.n_windows = int(n_windows)
        self.encoder = make_encoder()
        self.head = StagingHead(ENCODER_CHANNELS[-1], self.n_windows, num_classes, dropout, tcn_causal)

    def forward(self, ppg_B1T: torch.Tensor) -> torch.Tensor:
        check_signal(ppg_B1T, self.n_windows, "ppg")
        return self.head(self.encoder(ppg_B1T))


class MultiModalSleepNet(nn.Module):
    """PPG + ECG: two encoders, a fusion step, then the SleepPPG-Net head. Returns (B, num_classes, n_windows).

    Args: fusion_strategy ("concat", "attention" or "gated"), then as SleepPPGNet.
    """

    model_kind = "real_ecg"

    def __init__(self, fusion_strategy: str = "attention", n_windows: int = WINDOWS_PER_SUBJECT,
                 num_classes: int = N_CLASSES, dropout: float = 0.2, tcn_causal: bool = True):
        super().__init__()
        _check_args(n_windows, num_classes, dropout, tcn_causal)
        if fusion_strategy not in FUSION_STRATEGIES:
            raise ValueError(f"fusion_strategy must be one of {FUSION_STRATEGIES}, got {fusion_strategy!r}")
        self.model_args = {"fusion_strategy": fusion_strategy, "n_windows": int(n_windows),
                           "num_classes": int(num_classes), "dropout": float(dropout), "tcn_causal": tcn_causal}
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
        self.head = StagingHead(fused_channels, self.n_windows, num_classes, dropout, tcn_causal)

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


def _check_args(n_windows: Any, num_classes: Any, dropout: Any, tcn_causal: Any) -> None:
    if not isinstance(n_windows, int) or isinstance(n_windows, bool) or n_windows < 1:
        raise ValueError(f"n_windows must be a positive int, got {n_windows!r}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if not isinstance(tcn_causal, bool):
        raise ValueError(f"tcn_causal must be true or false, got {tcn_causal!r}")


# ----------------------------------------------------------------------------------------------------------
# Factory, training switches


def build_model(kind: str, **model_args: Any) -> nn.Module:
    """Build a model by kind: "ppg_only" -> SleepPPGNet, "real_ecg" -> MultiModalSleepNet.

    model_args are the constructor's: n_windows, num_classes, dropout, tcn_causal (+ fusion_strategy for
    "real_ecg"); left out, each takes the class default.
    """
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


def set_activation_checkpointing(model: nn.Module, enabled: bool) -> nn.Module:
    """Turn activation checkpointing of the encoder(s) on or off; returns `model` (changed in place).

    On, each of the 8 ResConv blocks keeps only its input during the forward pass and recomputes its
    activations in the backward pass: less memory per night for about one more encoder forward per step.
    Outputs, gradients and BatchNorm statistics are the same as without it. It acts only while gradients are
    enabled (inference under torch.no_grad() is unchanged) and is not part of the checkpoint: it is a
    training setting (config key training.activation_checkpointing), not a property of the weights.
    Call it on the plain model or a wrapped one (torch.compile, DDP), before compiling for best results.
    """
    encoders = [m for m in unwrap_model(model).modules() if isinstance(m, Encoder)]
    if not encoders:
        raise ValueError(f"{type(model).__name__} has no encoder of this module to checkpoint")
    for encoder in encoders:
        encoder.activation_checkpointing = bool(enabled)
    return model


def with_n_windows(model: nn.Module, n_windows: int) -> nn.Module:
    """A copy of `model` rebuilt for nights of `n_windows` windows, with the same weights.

    The network is convolutional and the dense layer is shared across windows, so only the regroup step
    depends on the window count: a model trained on 240-window segments stages a 1,200-window night this way.
    The copy keeps the device, dtype, train/eval mode and activation-checkpointing setting. (Call it before
    inference-only rewrites such as folding BatchNorm into the convs: it reloads the original state dict.)
    """
    model = unwrap_model(model)
    fields = checkpoint_model_fields(model)
    new = build_model(fields["model_kind"], **{**fields["model_args"], "n_windows": n_windows})
    new.load_state_dict(model.state_dict())
    first = next(model.parameters())
    new.to(device=first.device, dtype=first.dtype).train(model.training)
    enabled = any(m.activation_checkpointing for m in model.modules() if isinstance(m, Encoder))
    return set_activation_checkpointing(new, enabled)

# ----------------------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_model_fields(model: nn.Module) -> dict:
    """{"model_kind", "model_args"}: what a checkpoint needs to rebuild `model` (wrappers are unwrapped)."""
    model = unwrap_model(model)
    if not hasattr(model, "model_kind") or not hasattr(model, "model_args"):
        raise ValueError(f"{type(model).__name__} is not a model of this module (no model_kind/model_args)")
    return {"model_kind": model.model_kind, "model_args": dict(model.model_args)}


# The reference's module names -> ours. Its ResConvBlock names its layers conv1, bn1, conv2, bn2, conv3, bn3
# and residual_conv (ours: main.0, main.1, main.3, main.4, main.6, main.7 and skip). Its TemporalBlock names
# the two weight-normed convs conv1/conv2 and registers them again inside its `net` Sequential as net.0/net.4
# (the same tensors under two names); ours are net.0.conv/net.3.conv. The head is `dense`,
# `tcnblock1/2.network.N` and `final_conv`, the attention fusion `fusion_layer.{query,key,value,out}_proj`, the
# gated fusion `ppg_gate.0`/`ecg_gate.0`. Two published versions name the encoders differently (an
# nn.Sequential or an nn.ModuleList of the 8 blocks: the same keys apart from the encoder's name):
REFERENCE_VERSIONS = {
    # version -> {model kind: {its encoder name: ours}}
    "sleep-staging-models (resconv_blocks / ppg_encoder, ecg_encoder)": {
        "ppg_only": {"resconv_blocks": "encoder"},
        "real_ecg": {"ppg_encoder": "ppg_encoder", "ecg_encoder": "ecg_encoder"}},
    "the user guide's version (blocks / ppg_blocks, ecg_blocks)": {
        "ppg_only": {"blocks": "encoder"},
        "real_ecg": {"ppg_blocks": "ppg_encoder", "ecg_blocks": "ecg_encoder"}},
}
_REFERENCE_BLOCK_LAYERS = {"conv1": "main.0", "bn1": "main.1", "conv2": "main.3", "bn2": "main.4",
                           "conv3": "main.6", "bn3": "main.7", "residual_conv": "skip"}
_REFERENCE_TCN_CONVS = {"conv1": "net.0", "conv2": "net.3"}
_REFERENCE_TCN_ALIASES = {"0": "conv1", "4": "conv2"}  # net.0 is conv1, net.4 is conv2
# torch.nn.utils.weight_norm (old style, dim 0) stores g (out, 1, 1) and v (out, in, k) with w = g v / ||v||,
# the norm over the in and k dims; the parametrization our convs use stores the same g and v as original0 and
# original1 and computes the same w, so the pair is copied as is and training can go on from it.
_WEIGHT_NORM_NAMES = {"weight_g": "parametrizations.weight.original0",
                      "weight_v": "parametrizations.weight.original1", "bias": "bias"}
_REFERENCE_MARKERS = ("tcnblock1.", "tcnblock2.", "final_conv.") + tuple(
    f"{name}." for kinds in REFERENCE_VERSIONS.values() for encoders in kinds.values() for name in encoders)
_REFERENCE_TCN_CONV = r"tcnblock([12])\.network\.(\d+)\.(conv[12])\.(weight_g|weight_v|bias)"


def _our_tcn_key(match: re.Match) -> str:
    """Our name of a reference TCN conv tensor matched by _REFERENCE_TCN_CONV (stack, level, conv, tensor)."""
    stack, level, conv, tensor = match.groups()
    return f"head.tcn.{int(stack) - 1}.{level}.{_REFERENCE_TCN_CONVS[conv]}.conv.{_WEIGHT_NORM_NAMES[tensor]}"


def _strip_wrapper_prefixes(state: dict) -> dict:
    """A copy of `state` without the prefixes torch.compile ("_orig_mod.") and DDP/DataParallel ("module.")
    add, in either order and nesting (compile(DDP(m)) gives "_orig_mod.module.", DDP(compile(m)) the reverse)."""
    state = dict(state)
    while True:
        before = list(state)
        for prefix in ("_orig_mod.", "module."):
            nn.modules.utils.consume_prefix_in_state_dict_if_present(state, prefix)
        if list(state) == before:
            return state


def is_reference_state_dict(state: Any) -> bool:
    """True if `state` is a state dict with the reference implementation's module names."""
    return (isinstance(state, dict) and bool(state) and all(isinstance(k, str) for k in state)
            and any(k.startswith(_REFERENCE_MARKERS) for k in _strip_wrapper_prefixes(state)))


def reference_version(state: dict) -> tuple[str, str, dict]:
    """(version, model kind, {its encoder name: ours}) of a reference state dict, told by its encoder names
    (REFERENCE_VERSIONS); ValueError naming the names looked for when no version's encoders are all there."""
    prefixes = {k.split(".", 1)[0] for k in state}
    for version, kinds in REFERENCE_VERSIONS.items():
        for kind, encoders in kinds.items():
            if prefixes >= set(encoders):
                return version, kind, encoders
    wanted = " or ".join(" and ".join(f"{name}.*" for name in encoders)
                         for kinds in REFERENCE_VERSIONS.values() for encoders in kinds.values())
    raise ValueError(f"no encoder weights of the reference ({wanted})")


def convert_reference_state_dict(state: dict) -> tuple[str, str, dict, dict]:
    """Convert a state dict of the reference's SleepPPGNet / MultiModalSleepNet to this module's names.

    Both published versions are read (REFERENCE_VERSIONS; reference_version tells them apart). The kind and
    the arguments are inferred: "ppg_only" if the one encoder is there (`resconv_blocks` or `blocks`),
    "real_ecg" if both are (`ppg_encoder`/`ecg_encoder` or `ppg_blocks`/`ecg_blocks`); fusion "attention" if `fusion_layer` weights exist, "gated" if
    `ppg_gate` weights exist, else "concat"; num_classes from `final_conv`. The rest are the reference's fixed
    settings, not stored in its files: n_windows 1,200, dropout 0.2, a causal TCN. The reference's final
    softmax has no parameters; our model returns the logits before it.

    Returns:
        (version, model_kind, model_args, state dict for build_model(model_kind, **model_args))
    Raises:
        ValueError naming the first keys that have no place in the inferred model.
    """
    state = _strip_wrapper_prefixes(state)
    version, kind, encoders = reference_version(state)
    ours: dict[str, torch.Tensor] = {}
    aliases: dict[str, tuple[str, torch.Tensor]] = {}
    unexpected: list[str] = []
    for key, tensor in state.items():
        if (m := re.fullmatch(r"(\w+)\.(\d+)\.(conv[123]|bn[123]|residual_conv)\.(\w+)", key)) and m[1] in encoders:
            ours[f"{encoders[m[1]]}.{m[2]}.{_REFERENCE_BLOCK_LAYERS[m[3]]}.{m[4]}"] = tensor
        elif m := re.fullmatch(_REFERENCE_TCN_CONV, key):
            ours[_our_tcn_key(m)] = tensor
        elif m := re.fullmatch(r"tcnblock([12])\.network\.(\d+)\.net\.([04])\.(weight_g|weight_v|bias)", key):
            aliases[f"tcnblock{m[1]}.network.{m[2]}.{_REFERENCE_TCN_ALIASES[m[3]]}.{m[4]}"] = (key, tensor)
        elif m := re.fullmatch(r"(dense|final_conv)\.(weight|bias)", key):
            ours[f"head.{'dense' if m[1] == 'dense' else 'classifier'}.{m[2]}"] = tensor
        elif kind == "real_ecg" and (m := re.fullmatch(r"fusion_layer\.(query|key|value|out)_proj\.(weight|bias)",
                                                       key)):
            ours[f"attention.{m[1]}.{m[2]}"] = tensor
        elif kind == "real_ecg" and re.fullmatch(r"(ppg|ecg)_gate\.0\.(weight|bias)", key):
            ours[key] = tensor
        else:
            unexpected.append(key)
    if unexpected:
        raise ValueError(f"{len(unexpected)} weight(s) with no place in the reference's {kind} model: "
                         f"{', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}")
    for canonical, (alias, tensor) in aliases.items():
        if canonical not in state:  # only the alias was saved: it is the same convolution
            ours[_our_tcn_key(re.fullmatch(_REFERENCE_TCN_CONV, canonical))] = tensor
        elif not torch.equal(state[canonical], tensor):
            raise ValueError(f"{alias} and {canonical} are one convolution in the reference but hold different values")
    if "final_conv.weight" not in state:
        raise ValueError("no final_conv.weight (the reference's output layer)")
    model_args: dict[str, Any] = {"n_windows": REFERENCE_N_WINDOWS,
                                  "num_classes": int(state["final_conv.weight"].shape[0]),
                                  "dropout": REFERENCE_DROPOUT, "tcn_causal": True}
    if kind == "real_ecg":
        fusion = ("attention" if any(k.startswith("fusion_layer.") for k in state)
                  else "gated" if "ppg_gate.0.weight" in state else "concat")
        model_args = {"fusion_strategy": fusion, **model_args}
    return version, kind, model_args, ours


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _looks_like_text(path: Path) -> bool:
    """True if the file starts with UTF-8 text (no NUL bytes)."""
    with path.open("rb") as f:
        head = f.read(4096)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:  # not just a character cut at the 4096-byte boundary
            return False
    return b"\x00" not in head


def _refused_globals(path: Path, err: Exception) -> list[str]:
    """The Python globals a weights-only load refused: read from the archive, else from torch's message."""
    if zipfile.is_zipfile(path):
        try:
            with torch.serialization.safe_globals(NUMPY_SAFE_GLOBALS):
                names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            allowed = {"numpy.dtype", "numpy.dtypes.Float64DType", "numpy._core.multiarray.scalar",
                       "numpy.core.multiarray.scalar"}
            names = [n for n in names if n not in allowed]
            if names:
                return names
        except (RuntimeError, ValueError):  # not a readable archive: fall back to the message
            pass
    return sorted({a or b for a, b in re.findall(r"GLOBAL ([\w.]+)|got <class '([\w.]+)'>", str(err))})


def read_checkpoint_file(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """torch.load(path, weights_only=True), with numpy scalars allowed; any failure is one CheckpointError line.

    Only tensors, plain Python values and the numpy scalar types in NUMPY_SAFE_GLOBALS are read: a file
    holding other objects is refused and nothing in it runs.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes), not a checkpoint (an interrupted save or copy?)")
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(NUMPY_SAFE_GLOBALS):
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # plain pickles: refused below
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch.load raises EOFError, KeyError, IndexError, UnpicklingError,
        # RuntimeError... for a file it cannot parse; each means "not a usable checkpoint" and is reported as one
        # line here (the cause stays chained). torch's own text advises weights_only=False, which we never do.
        weights_only_refusal = "weights only" in str(err).lower()
        refused = _refused_globals(path, err) if weights_only_refusal else []
        if not refused and _looks_like_text(path):
            raise CheckpointError(f"{path} is a text file, not a PyTorch checkpoint") from err
        if weights_only_refusal:
            what = f" ({', '.join(refused[:5])})" if refused else ""
            raise CheckpointError(
                f"{path} holds Python objects other than tensors and plain values{what}; it is refused so that "
                f"no code from it runs (a checkpoint of this project or of the reference holds only weights and "
                f"plain values)") from err
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (damaged, truncated or another kind of "
                              f"file): {type(err).__name__}: {_one_line(err) or 'no details'}") from err


def _first_non_finite(state: dict) -> tuple[str, int, int] | None:
    """(name, bad count, size) of the first floating-point tensor holding NaN or Inf, else None."""
    for name, tensor in state.items():
        if tensor.is_floating_point() or tensor.is_complex():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                return name, bad, tensor.numel()
    return None


def _fit_report(model: nn.Module, state: dict) -> str:
    """One line: which keys are missing, unexpected or of another shape when `state` is loaded into `model`."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", shapes)):
        if keys:
            parts.append(f"{len(keys)} {label} ({', '.join(keys[:2])}{' ...' if len(keys) > 2 else ''})")
    return "; ".join(parts)


def load_model_from_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", expected_kind: str | None = None,
                               n_windows: int | None = None) -> tuple[nn.Module, dict]:
    """Rebuild a model from a checkpoint of this project or of the reference implementation.

    Two formats are read (always with torch.load(weights_only=True)):
      - "sleepppg": written by train_ppg_only.py, a dict with model_kind, model_args and model_state_dict
        (a model_args without tcn_causal, from before that option, loads as the causal TCN);
      - "reference": the reference's best_model.pth / checkpoint_epoch_N.pth (a dict whose model_state_dict
        uses its module names; also its epoch, optimizer state, numpy-float metrics and config dict), or a bare
        state dict of that form, from either published version of the reference (REFERENCE_VERSIONS: encoder
        `resconv_blocks` or `blocks`; `ppg_encoder`/`ecg_encoder` or `ppg_blocks`/`ecg_blocks`). It holds no
        model kind or arguments: the kind, fusion and num_classes are
        inferred from the weights, the rest are the reference's fixed settings (1,200 windows, dropout 0.2,
        causal TCN); see convert_reference_state_dict. Outputs equal the reference's before its final softmax.
    A weight holding NaN or Inf is refused (the model cannot be right), naming the first such tensor.

    Args:
        path: the .pth file.
        map_location: passed to torch.load; the model is moved there if it is a device or device string.
        expected_kind: if given ("ppg_only" or "real_ecg"), a checkpoint of another kind is an error.
        n_windows: build the model for nights of this many windows instead of the stored count (same weights;
            see with_n_windows).
    Returns:
        (model in eval mode, checkpoint dict). The dict is the file's dict (or {"model_state_dict": ...} for a
        bare state dict) with these keys set: "checkpoint_format" ("sleepppg" or "reference"), "model_kind",
        "model_args" (the arguments the returned model was built with, defaults filled in), "trained_n_windows"
        (the window count stored in or implied by the file), and for a reference file "model_fields_inferred"
        (a sentence saying what was inferred and how) and "reference_version" (a key of REFERENCE_VERSIONS).
    Raises:
        FileNotFoundError if the file is missing; CheckpointError (a ValueError, one line naming the file) for
        a file that is empty, not a checkpoint, holds arbitrary objects, holds NaN/Inf weights, is of another
        kind than expected_kind, or whose weights do not fit the model; ValueError for a bad n_windows.
    """
    if n_windows is not None and (not isinstance(n_windows, int) or isinstance(n_windows, bool) or n_windows < 1):
        raise ValueError(f"n_windows must be a positive int, got {n_windows!r}")
    path = Path(path)
    raw = read_checkpoint_file(path, map_location)
    if isinstance(raw, dict) and ("model_kind" in raw or "model_args" in raw):
        fmt = "sleepppg"
        missing = [k for k in ("model_kind", "model_args", "model_state_dict") if k not in raw]
        if missing:
            raise CheckpointError(f"{path} is not a checkpoint of this project: missing {missing} (it must be "
                                  f"written by train_ppg_only.py with model_kind, model_args and model_state_dict)")
        ckpt, state = dict(raw), raw["model_state_dict"]
    elif isinstance(raw, dict) and is_reference_state_dict(raw.get("model_state_dict")):
        fmt, ckpt, state = "reference", dict(raw), raw["model_state_dict"]
    elif is_reference_state_dict(raw):
        fmt, ckpt, state = "reference", {"model_state_dict": raw}, raw
    else:
        raise CheckpointError(f"{path} is not a checkpoint of this project: missing ['model_kind', 'model_args', "
                              f"'model_state_dict'] (it must be written by train_ppg_only.py), nor one of the "
                              f"reference implementation (a model_state_dict with its module names)")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise CheckpointError(f"{path}: model_state_dict is not a mapping of names to tensors")
    bad = _first_non_finite(state)
    if bad:
        raise CheckpointError(f"{path}: weight {bad[0]} holds NaN or Inf values ({bad[1]} of {bad[2]}); a model "
                              f"with them cannot give valid stages (did training diverge?)")

    if fmt == "reference":
        try:
            version, kind, model_args, state = convert_reference_state_dict(state)
        except ValueError as err:
            raise CheckpointError(f"{path}: a reference-style state dict that cannot be converted: {err}") from err
        ckpt["model_fields_inferred"] = (
            f"model kind {kind!r}{' and fusion ' + repr(model_args['fusion_strategy']) if kind == 'real_ecg' else ''}"
            f" inferred from the weight names, num_classes from the output layer; n_windows "
            f"{REFERENCE_N_WINDOWS}, dropout {REFERENCE_DROPOUT} and a causal TCN are the reference's fixed "
            f"settings (a reference checkpoint stores no model arguments)")
        ckpt["reference_version"] = version
        log.info("%s: reference checkpoint of %s (it carries no checksum); %s", path, version,
                 ckpt["model_fields_inferred"])
    else:
        kind, model_args = ckpt["model_kind"], ckpt["model_args"]
        if kind not in MODEL_CLASSES:
            raise CheckpointError(f"{path}: unknown model_kind {kind!r}; expected one of {sorted(MODEL_CLASSES)}")
        if not isinstance(model_args, dict):
            raise CheckpointError(f"{path}: model_args must be a mapping, got {type(model_args).__name__}")
        state = _strip_wrapper_prefixes(state)
    if expected_kind is not None and kind != expected_kind:
        raise CheckpointError(f"{path} holds a {kind!r} model but a {expected_kind!r} model was asked for")
    trained_n_windows = model_args.get("n_windows", WINDOWS_PER_SUBJECT)
    build_args = dict(model_args) if n_windows is None else {**model_args, "n_windows": n_windows}
    try:
        model = build_model(kind, **build_args)
    except (TypeError, ValueError) as err:  # an argument this version does not know, or a bad value
        raise CheckpointError(f"{path}: cannot build a {kind!r} model from model_args {model_args}: "
                              f"{_one_line(err)}") from err
    mismatch = _fit_report(model, state)
    if mismatch:
        raise CheckpointError(f"{path}: the weights do not fit a {kind!r} model with {model_args}: {mismatch}")
    model.load_state_dict(state)
    model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu")
    model.eval()
    ckpt.update(checkpoint_format=fmt, model_kind=kind, model_args=dict(model.model_args),
                trained_n_windows=trained_n_windows)
    return model, ckpt


# ----------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Print output shapes and parameter counts of every model variant.")
    p.add_argument("--n-windows", type=int, default=10,
                   help="windows per night for the shape check (default 10, i.e. 5 min; 1200 = a full night)")
    p.add_argument("--batch", type=int, default=2, help="batch size for the shape check")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.n_windows < 1 or args.batch < 1:
        print("--n-windows and --batch must be positive", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    n_samples = args.n_windows * SAMPLES_PER_WINDOW
    ppg_B1T = torch.randn(args.batch, 1, n_samples)
    ecg_B1T = torch.randn(args.batch, 1, n_samples)
    variants = [("ppg_only", {})] + [("real_ecg", {"fusion_strategy": s}) for s in FUSION_STRATEGIES]
    print(f"input ppg_B1T (B, 1, T) = {tuple(ppg_B1T.shape)}  ({args.n_windows} windows of {SAMPLES_PER_WINDOW} "
          f"samples)")
    for kind, extra in variants:
        model = build_model(kind, n_windows=args.n_windows, **extra).eval()
        with torch.no_grad():
            logits_BCW = model(ppg_B1T) if kind == "ppg_only" else model(ppg_B1T, ecg_B1T)
        name = kind + (f"/{extra['fusion_strategy']}" if extra else "")
        print(f"{name:<20s} logits_BCW (B, C, W) = {tuple(logits_BCW.shape)}  "
              f"parameters {count_parameters(model):,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
