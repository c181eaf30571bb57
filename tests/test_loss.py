"""Tests of sleepppg.loss: the masked cross-entropy (ignores -1, not diluted by padding, equals a slow per-epoch
sum) and the inverse-frequency class weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sleepppg.loss import class_weights_from_labels, masked_cross_entropy


def slow_masked_loss(logits_BCW, labels_BW, weights_C):
    """Obvious version: weighted -log softmax of the true class, summed over scored epochs, / their count."""
    total, count = 0.0, 0
    for b in range(labels_BW.shape[0]):
        for w in range(labels_BW.shape[1]):
            y = int(labels_BW[b, w])
            if y == -1:
                continue
            scores = logits_BCW[b, :, w].double()
            log_p = scores[y] - torch.logsumexp(scores, dim=0)
            total += float(-weights_C[y] * log_p)
            count += 1
    return total / count


def test_loss_ignores_unscored_and_is_not_diluted_by_padding():
    gen = torch.Generator().manual_seed(0)
    logits_BCW = torch.randn(3, 4, 10, generator=gen)
    labels_BW = torch.randint(0, 4, (3, 10), generator=gen)
    labels_BW[0, 7:] = -1  # a night padded at the end
    labels_BW[1, [2, 5]] = -1  # unscored epochs inside a night
    weights_C = torch.tensor([0.5, 0.3, 2.0, 1.2])
    loss_sum, n_valid = masked_cross_entropy(logits_BCW, labels_BW, weights_C)
    assert int(n_valid) == int((labels_BW != -1).sum()) == 25
    assert float(loss_sum / n_valid) == pytest.approx(slow_masked_loss(logits_BCW, labels_BW, weights_C), rel=1e-6)

    # 20 more padded epochs (label -1, any logits) change neither the sum nor the count
    pad_logits = torch.cat([logits_BCW, 50 * torch.randn(3, 4, 20, generator=gen)], dim=2)
    pad_labels = torch.cat([labels_BW, torch.full((3, 20), -1)], dim=1)
    padded_sum, padded_n = masked_cross_entropy(pad_logits, pad_labels, weights_C)
    assert float(padded_sum / padded_n) == pytest.approx(float(loss_sum / n_valid), rel=1e-6)
    # the reference's recipe (reduction='none' then .mean() over all 90 entries) is diluted by the padding
    diluted = torch.nn.functional.cross_entropy(pad_logits, pad_labels, weight=weights_C, ignore_index=-1,
                                                reduction="none").mean()
    assert float(diluted) < 0.5 * float(padded_sum / padded_n)


def test_loss_of_a_night_without_scored_epochs_is_zero_not_nan():
    loss_sum, n_valid = masked_cross_entropy(torch.randn(1, 4, 5), torch.full((1, 5), -1))
    assert int(n_valid) == 0 and float(loss_sum / n_valid.clamp(min=1)) == 0.0


def test_class_weights_inverse_frequency():
    labels = np.array([[0, 0, 0, 0, 1, 1, -1, -1], [2, 3, 3, 3, 3, 1, 1, -1]])  # counts 4, 4, 1, 4
    weights = class_weights_from_labels(labels)
    inverse = np.array([1 / 4, 1 / 4, 1, 1 / 4])
    np.testing.assert_allclose(weights, inverse / inverse.sum() * 4, rtol=1e-6)
    assert weights.sum() == pytest.approx(4.0)
    # a class that never occurs is counted once (finite weight), as the reference
    assert np.isfinite(class_weights_from_labels(np.array([0, 1, 1, 3]))).all()
