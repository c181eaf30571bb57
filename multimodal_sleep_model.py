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
that count (`with_n_windows`, or `sleepppg.checkpoints.load_model_from_checkpoint(..., n_windows=1200)`).

The TCN is causal by default (`tcn_causal=True`, as the reference: each conv is padded by (k-1)d on both sides
and the last (k-1)d steps are chomped, so window w sees windows <= w only). `tcn_causal=False` pads (k-1)d/2
on each side instead: a centred dilated TCN that also sees later windows, with the same parameters.

`MultiModalSleepNet` encodes ECG with its own 8 blocks and fuses the two streams before the regroup step:
`concat` (512 channels), `attention` (8-head cross-attention, PPG queries ECG, residual) or `gated` (sigmoid
gates from channel means).

Memory: `set_activation_checkpointing(model, True)` recomputes the 8 encoder blocks in the backward pass
instead of keeping their activations (most of a training step's memory); outputs and gradients are the same.

Each model carries `model_kind` and `model_args` (its constructor arguments), so a checkpoint rebuilds it
from the file alone; writing and reading checkpoints, ours and the reference implementation's, is
`sleepppg.checkpoints`.

Usage: `python multimodal_sleep_model.py [--n-windows 10]` prints output shapes and parameter counts.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm
from torch.utils.checkpoint import checkpoint as checkpoint_activations

from sleepppg.cli import run_entry_point
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
        hidden_BEW = self.tcn(emb_BEW)
        # The output layer runs in fp32 even under bf16 autocast: logits rounded to bf16 (8 bits of mantissa)
        # could flip near-ties between stages, and the loss is computed from them. It is 128 -> 4 per window:
        # no measurable cost.
        with torch.autocast(device_type=hidden_BEW.device.type, enabled=False):
            return self.classifier(hidden_BEW.float())


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
    if not hasattr(model, "model_kind") or not hasattr(model, "model_args"):
        raise ValueError(f"{type(model).__name__} is not a model of this module (no model_kind/model_args)")
    new = build_model(model.model_kind, **{**model.model_args, "n_windows": n_windows})
    new.load_state_dict(model.state_dict())
    first = next(model.parameters())
    new.to(device=first.device, dtype=first.dtype).train(model.training)
    enabled = any(m.activation_checkpointing for m in model.modules() if isinstance(m, Encoder))
    return set_activation_checkpointing(new, enabled)


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
    sys.exit(run_entry_point(main))
