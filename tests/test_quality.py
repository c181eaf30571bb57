"""Tests for sleepppg.quality: the flat and clipped shares of a night's PPG against a slow obvious count."""
from __future__ import annotations

import numpy as np
import pytest

from sleepppg.constants import SAMPLES_PER_WINDOW, TARGET_FS
from sleepppg.quality import FLAT_RUN_S, FLAT_STEP_SD, ppg_quality, quality_warnings


def _quality_slow(x: np.ndarray, step_sd: float, run_samples: float) -> float:
    """ppg_quality's flat share, the obvious way: walk the samples, count runs of still steps."""
    flat, run = 0, 1  # run = samples in the current still run
    for i in range(1, x.size + 1):
        if i < x.size and abs(float(x[i]) - float(x[i - 1])) < step_sd:
            run += 1
            continue
        if run >= run_samples and run > 1:
            flat += run
        run = 1
    return flat / x.size


def test_ppg_quality_matches_a_slow_count():
    rng = np.random.default_rng(5)
    x = rng.standard_normal(6 * SAMPLES_PER_WINDOW).astype(np.float32)
    x[100:400] = 1.5  # 300 samples (8.8 s) flat
    x[1000:1040] = -0.2  # 40 samples (1.2 s): shorter than FLAT_RUN_S, not counted
    x[5000:5200] = 0.0
    windows = x.reshape(6, SAMPLES_PER_WINDOW)
    q = ppg_quality(windows, 6)
    expected = _quality_slow(x, FLAT_STEP_SD, FLAT_RUN_S * TARGET_FS)
    assert q["flat_share"] == pytest.approx(expected) and q["flat_share"] == pytest.approx(500 / x.size)
    assert q["clipped_share"] == pytest.approx(2 / x.size)  # one max and one min sample
    assert quality_warnings(q) == []
    assert ppg_quality(windows, 0) == {"flat_share": 0.0, "clipped_share": 0.0}
    clipped = np.clip(x, -1.0, 1.0)  # ~32% of the samples at the clip
    assert quality_warnings(ppg_quality(clipped.reshape(6, -1), 6))[0].endswith("excursions)")
    # a gap in the recording (zero-filled epochs, not staged) is no flat signal
    gapped = windows.copy()
    gapped[2:4] = 0.0
    assert ppg_quality(gapped, 6)["flat_share"] > 1 / 3
    assert ppg_quality(gapped, 6, gap_epochs=[2, 3])["flat_share"] == pytest.approx(500 / (4 * 1024))
