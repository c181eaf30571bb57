"""Training on crops of nights (`training.segment_windows`): which windows a crop may start at, how many crops
each night gives per epoch, and the sampler that draws new crop boundaries every epoch, so an epoch still
covers every night about once while each step sees N-window stretches instead of whole 10-h nights.
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import DistributedSampler, Sampler

from sleepppg.constants import IGNORE_INDEX


def crop_candidates(labels_W: np.ndarray, segment_windows: int) -> np.ndarray:
    """First windows at which a crop of `segment_windows` windows holds at least one scored epoch.

    Args:
        labels_W: one night's labels (W,); -1 = unscored or padding.
        segment_windows: crop length, 1..W.
    Returns:
        int64 sorted starts in 0..W-segment_windows; every start when no crop holds a scored epoch (a night
        without any: its crops all add nothing to the loss, so any will do).
    """
    n_starts = labels_W.size - segment_windows + 1
    if n_starts < 1:
        raise ValueError(f"a crop of {segment_windows} windows does not fit a night of {labels_W.size}")
    scored_cumsum = np.concatenate([[0], np.cumsum(labels_W != IGNORE_INDEX)])
    scored_per_crop = scored_cumsum[segment_windows:] - scored_cumsum[:n_starts]
    starts = np.flatnonzero(scored_per_crop > 0)
    return starts if starts.size else np.arange(n_starts)


def crops_per_night(windows_per_subject: int, segment_windows: int) -> int:
    """K, the crops each night gives per epoch: W // N, so an epoch of crops covers about as many windows as
    an epoch of whole nights (1,200-window nights, 240-window crops: 5 per night per epoch)."""
    return max(1, windows_per_subject // segment_windows)


def draw_crop_starts(candidates: np.ndarray, n_crops: int, epoch_seed: int, night: int) -> np.ndarray:
    """The `n_crops` crop starts of night `night` in the epoch with shuffle seed `epoch_seed`: `candidates`
    split into `n_crops` consecutive strata of (almost) equal size, one start drawn uniformly from each (so the
    crops spread over the whole night, with new boundaries every epoch); with fewer candidates than crops, drawn
    with replacement. A function of (epoch_seed, night) only, so a resumed run and every worker draw the same.

    Returns:
        int64 (n_crops,), sorted when drawn from strata.
    """
    rng = np.random.default_rng([epoch_seed, night])
    if candidates.size < n_crops:
        return candidates[rng.integers(candidates.size, size=n_crops)]
    edges = (np.arange(n_crops + 1) * candidates.size) // n_crops  # stratum k: candidates[edges[k]:edges[k+1]]
    return candidates[edges[:-1] + rng.integers(0, edges[1:] - edges[:-1])]


class SegmentSampler(Sampler):
    """Wraps a sampler of crop slots 0 .. N*K-1 (N nights, K = `dataset.crops_per_night`) and yields (night
    index, first window of its crop) pairs for a dataset built with `segment_windows > 0`: slot i is crop i % K
    of night i // K. The crops are drawn in the main process, so workers need no epoch state. Call
    `set_epoch(epoch_seed)` before each epoch (it is also passed on to a DistributedSampler inside)."""

    def __init__(self, sampler: Sampler, dataset):
        self.sampler, self.dataset = sampler, dataset
        self.epoch_seed = 0

    def set_epoch(self, epoch_seed: int) -> None:
        self.epoch_seed = int(epoch_seed)
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(self.epoch_seed)

    def __iter__(self):
        n_crops, drawn = self.dataset.crops_per_night, {}
        for slot in self.sampler:
            idx, k = divmod(int(slot), n_crops)
            if idx not in drawn:
                drawn[idx] = draw_crop_starts(self.dataset.crop_starts[idx], n_crops, self.epoch_seed, idx)
            yield idx, int(drawn[idx][k])

    def __len__(self) -> int:
        return len(self.sampler)


# ----------------------------------------------------------------------------------------------------------
# Datasets
