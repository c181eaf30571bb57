"""A stand-in for the reference implementation's models, to test reading its checkpoints.

Written for these tests from the reference's published structure: the same modules under the same attribute
names, so its state dicts have the reference's keys (dense, tcnblock1/2.network.N.conv1/conv2 with old-style
weight norm weight_g/weight_v, the same convs again as net.0/net.4, final_conv; for PPG+ECG
fusion_layer.*_proj or ppg_gate/ecg_gate), and the same computation: ends in a softmax over classes. The
encoder's 8 blocks (N.conv1/bn1/.../residual_conv) are named as in either published version (`naming`):
  - "original" (sleep-staging-models): an nn.Sequential `resconv_blocks`; PPG+ECG `ppg_encoder`/`ecg_encoder`;
  - "guide" (the version the user guide was written for): an nn.ModuleList `blocks`; PPG+ECG
    `ppg_blocks`/`ecg_blocks`, each run block by block.
One difference: the reference fixes the night at 1,200 windows; here `n_windows` is an argument so tests can
use short nights.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

ENCODER_CHANNELS = (16, 16, 32, 32, 64, 64, 128, 256)


def old_style_weight_norm(conv: nn.Conv1d) -> nn.Conv1d:
    """torch.nn.utils.weight_norm (weight_g / weight_v), as the reference; silence its deprecation warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return nn.utils.weight_norm(conv)


class RefResConvBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv1d(c_in, c_out, 3, padding=1)
        self.bn1 = nn.BatchNorm1d(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, 3, padding=1)
        self.bn2 = nn.BatchNorm1d(c_out)
        self.conv3 = nn.Conv1d(c_out, c_out, 3, padding=1)
        self.bn3 = nn.BatchNorm1d(c_out)
        self.pool = nn.MaxPool1d(2, 2)
        self.residual_conv = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x):
        out = x
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            out = F.leaky_relu(bn(conv(out)))
        skip = x if self.residual_conv is None else self.residual_conv(x)
        return self.pool(out) + F.max_pool1d(skip, 2, 2)


class RefChomp(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x):
        return x[:, :, :-self.n].contiguous()


class RefTemporalBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int, dropout: float = 0.2):
        super().__init__()
        pad = (kernel - 1) * dilation
        self.conv1 = old_style_weight_norm(nn.Conv1d(c_in, c_out, kernel, padding=pad, dilation=dilation))
        self.chomp1, self.relu1, self.dropout1 = RefChomp(pad), nn.LeakyReLU(), nn.Dropout(dropout)
        self.conv2 = old_style_weight_norm(nn.Conv1d(c_out, c_out, kernel, padding=pad, dilation=dilation))
        self.chomp2, self.relu2, self.dropout2 = RefChomp(pad), nn.LeakyReLU(), nn.Dropout(dropout)
        # the same modules again, so the state dict also holds net.0.* (= conv1) and net.4.* (= conv2)
        self.net = nn.Sequential(self.conv1, self.chomp1, self.relu1, self.dropout1,
                                 self.conv2, self.chomp2, self.relu2, self.dropout2)
        self.downsample = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else None
        self.relu = nn.LeakyReLU()

    def forward(self, x):
        res = x if self.downsample is None else self.downsample(x)
        return self.relu(self.net(x) + res)


class RefTemporalConvNet(nn.Module):
    def __init__(self, c_in: int, channels: int, kernel: int = 7):
        super().__init__()
        self.network = nn.Sequential(*[RefTemporalBlock(c_in if i == 0 else channels, channels, kernel, 2 ** i)
                                       for i in range(6)])

    def forward(self, x):
        return self.network(x)


NAMINGS = {"original": ("resconv_blocks", "ppg_encoder", "ecg_encoder"), "guide": ("blocks", "ppg_blocks", "ecg_blocks")}


def ref_encoder(naming: str) -> nn.Module:
    """The 8 blocks: an nn.Sequential ("original") or an nn.ModuleList run block by block ("guide")."""
    chans = (1,) + ENCODER_CHANNELS
    blocks = [RefResConvBlock(a, b) for a, b in zip(chans, chans[1:])]
    return nn.Sequential(*blocks) if naming == "original" else nn.ModuleList(blocks)


def encode(encoder: nn.Module, x):
    for block in encoder:
        x = block(x)
    return x


class RefCrossModalAttention(nn.Module):
    def __init__(self, dim: int, heads: int = 8):
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.query_proj, self.key_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.value_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.dropout = nn.Dropout(0.1)

    def forward(self, ppg, ecg):
        b, c, length = ppg.shape
        ppg, ecg = ppg.transpose(1, 2), ecg.transpose(1, 2)

        def split(t):
            return t.view(b, length, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.query_proj(ppg)), split(self.key_proj(ecg)), split(self.value_proj(ecg))
        probs = self.dropout(F.softmax(q @ k.transpose(-2, -1) / self.head_dim ** 0.5, dim=-1))
        ctx = (probs @ v).transpose(1, 2).contiguous().view(b, length, c)
        return (self.out_proj(ctx) + ppg).transpose(1, 2)


def _head(model: nn.Module, x, n_windows: int):
    """Regroup (B, C, 4W) -> (B, 4C, W), dense per window, two TCNs, final conv, softmax over classes."""
    b, c, _ = x.shape
    x = x.view(b, c, n_windows, 4).permute(0, 1, 3, 2).contiguous().view(b, -1, n_windows)
    x = model.dense(x.transpose(1, 2)).transpose(1, 2)
    x = model.final_conv(model.tcnblock2(model.tcnblock1(x)))
    return F.softmax(x, dim=1)


class RefSleepPPGNet(nn.Module):
    def __init__(self, n_windows: int = 1200, naming: str = "original"):
        super().__init__()
        self.n_windows = n_windows
        self.encoder_name = NAMINGS[naming][0]
        setattr(self, self.encoder_name, ref_encoder(naming))
        self.dense = nn.Linear(1024, 128)
        self.tcnblock1 = RefTemporalConvNet(128, 128)
        self.tcnblock2 = RefTemporalConvNet(128, 128)
        self.final_conv = nn.Conv1d(128, 4, 1)

    def forward(self, x):
        return _head(self, encode(getattr(self, self.encoder_name), x), self.n_windows)


class RefMultiModalSleepNet(nn.Module):
    def __init__(self, fusion_strategy: str = "attention", n_windows: int = 1200, naming: str = "original"):
        super().__init__()
        self.fusion_strategy, self.n_windows = fusion_strategy, n_windows
        self.encoder_names = NAMINGS[naming][1:]
        for name in self.encoder_names:
            setattr(self, name, ref_encoder(naming))
        if fusion_strategy == "concat":
            fusion_dim, self.fusion_layer = 512, nn.Identity()
        elif fusion_strategy == "attention":
            fusion_dim, self.fusion_layer = 256, RefCrossModalAttention(256)
        else:
            fusion_dim = 256
            self.ppg_gate = nn.Sequential(nn.Linear(256, 256), nn.Sigmoid())
            self.ecg_gate = nn.Sequential(nn.Linear(256, 256), nn.Sigmoid())
        self.dense = nn.Linear(fusion_dim * 4, 128)
        self.tcnblock1 = RefTemporalConvNet(128, 128)
        self.tcnblock2 = RefTemporalConvNet(128, 128)
        self.final_conv = nn.Conv1d(128, 4, 1)

    def forward(self, ppg, ecg):
        p, e = (encode(getattr(self, name), x) for name, x in zip(self.encoder_names, (ppg, ecg)))
        if self.fusion_strategy == "concat":
            fused = torch.cat([p, e], dim=1)
        elif self.fusion_strategy == "attention":
            fused = self.fusion_layer(p, e)
        else:
            fused = (self.ppg_gate(p.mean(dim=2)).unsqueeze(2) * p + self.ecg_gate(e.mean(dim=2)).unsqueeze(2) * e)
        return _head(self, fused, self.n_windows)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random values in every parameter and BatchNorm buffer (not the init's), so a wrong mapping shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("num_batches_tracked"):
                t.fill_(7)
            elif name.endswith("running_var") or name.endswith("weight_g"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            else:
                t.copy_(0.3 * torch.randn(t.shape, generator=g))
    return model
