"""The training loss: cross-entropy over scored epochs only, with inverse-frequency class weights.

The reference averaged the loss over every epoch of the padded night; here it is summed over scored epochs
(label != -1) and divided by their number, so padding and unscored epochs count not at all. Class weights are
inverse frequencies over all training labels, normalised to sum to the number of classes (as the reference).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from sleepppg.constants import IGNORE_INDEX, N_CLASSES


def masked_cross_entropy(logits_BCW: torch.Tensor, labels_BW: torch.Tensor,
                         class_weights_C: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy summed over scored epochs, and how many epochs were scored.

    Args:
        logits_BCW: raw class scores (B, C, W); the model computes them in float32 (its output layer runs
            outside autocast), and the loss stays in float32.
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
