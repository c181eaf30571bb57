"""One training step, as train_ppg_only.py runs it and bench/bench_train.py times it.

`train_step`: forward (bf16 autocast when asked), the masked cross-entropy of sleepppg.loss, backward, gradient
clipping, then one host sync that reads every check at once: NaN/Inf in the batch's signals, a NaN/Inf loss
(both agreed across ranks by a small all-reduce before backward, so every rank stops at the same step) and a
NaN/Inf gradient norm (the same on every rank after DDP's gradient sync). Only a step that passes all three
updates the weights; the caller turns a failed step into its error (it knows the subjects and the epoch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sleepppg.distributed import DistContext, autocast
from sleepppg.loss import masked_cross_entropy
from sleepppg.trainingdata import nonfinite_inputs

BAD_DATA, BAD_LOSS = 0, 1  # the positions of the step's flags (any rank: 1)


@dataclass
class Step:
    """What one step gives back. loss_sum, n_valid: this rank's summed loss over scored epochs and their number
    (device tensors); ok: the weights were updated; flags: (2,) float (BAD_DATA, BAD_LOSS) over every rank;
    bad_IB: (n_inputs, B) bool, this rank's nights with NaN/Inf signals; loss, grad_norm: for a message."""

    loss_sum: torch.Tensor
    n_valid: torch.Tensor
    ok: bool
    flags: torch.Tensor
    bad_IB: torch.Tensor
    loss: torch.Tensor
    grad_norm: torch.Tensor


def train_step(model, optimizer, inputs: list[torch.Tensor], labels_BW: torch.Tensor,
               class_weights_C: torch.Tensor | None, *, amp: bool, grad_clip: float,
               ctx: DistContext | None = None) -> Step:
    """One optimizer step on a batch already on the device, unless a check fails (see the module docstring).

    Args:
        inputs: [ppg_B1T] or [ppg_B1T, ecg_B1T]; labels_BW: int64 (B, W), -1 unscored.
        grad_clip: the gradient-norm clip (> 0); ctx: the process group (None: one process).
    Returns:
        a `Step`; when `ok` is False the optimizer did not step (the weights are those of the last good step).
    """
    bad_IB = nonfinite_inputs(inputs)
    with autocast(labels_BW.device, amp):  # bf16 (gpu.mixed_precision): no GradScaler needed, unlike fp16
        logits_BCW = model(*inputs)
    loss_sum, n_valid = masked_cross_entropy(logits_BCW, labels_BW, class_weights_C)
    loss = loss_sum / n_valid.clamp(min=1)  # mean over scored epochs; padding counts not at all
    flags = torch.stack([bad_IB.any(), ~torch.isfinite(loss.detach())]).float()
    if ctx is not None:
        ctx.max_(flags)  # before backward: a rank that saw bad data stops with the others, not alone in DDP's sync
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=grad_clip)  # grad_clip > 0
    ok = bool((flags.sum() == 0) & torch.isfinite(grad_norm))  # the one host sync of the step
    if ok:
        optimizer.step()
    return Step(loss_sum.detach(), n_valid, ok, flags, bad_IB, loss.detach(), grad_norm)
