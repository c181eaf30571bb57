"""Tests for sleepppg.report: the sleep report on hand-made hypnograms (30-s epochs: 2 epochs = 1 min), the
predicted - scored difference and the console text of a night."""
from __future__ import annotations

import pytest

from sleepppg.report import format_night, format_sleep_report, report_difference, sleep_report

W, L, D, R, U = 0, 1, 2, 3, -1  # Wake, Light, Deep, REM, unscored


def test_sleep_report_textbook_night():
    # 10 min awake, sleep L L D D, 2 epochs wake (WASO), R R, L, then 4 epochs wake at the end
    hyp = [W] * 20 + [L, L, D, D, W, W, R, R, L] + [W] * 4
    rep = sleep_report(hyp)
    assert rep["n_epochs"] == rep["n_epochs_with_stage"] == 33
    assert rep["time_in_bed_min"] == 16.5
    assert rep["total_sleep_time_min"] == 3.5  # 7 sleep epochs
    assert rep["sleep_efficiency_pct"] == pytest.approx(100 * 7 / 33)
    assert rep["sleep_onset_latency_min"] == 10.0
    assert rep["sleep_period_min"] == 4.5  # epochs 20..28
    assert rep["waso_min"] == 1.0  # the two wake epochs inside; the final 4 are after the final awakening
    assert rep["rem_latency_min"] == 3.0  # first REM at epoch 26, onset at 20
    assert rep["stage_minutes"] == {"Wake": 13.0, "Light": 1.5, "Deep": 1.0, "REM": 1.0}
    pct = rep["stage_percent_of_tst"]
    assert pct["Light"] == pytest.approx(300 / 7) and pct["Deep"] == pytest.approx(200 / 7)
    assert sum(pct.values()) == pytest.approx(100.0)
    assert rep["wake_percent_of_time_in_bed"] == pytest.approx(100 * 26 / 33)


def test_sleep_report_no_sleep_and_empty():
    rep = sleep_report([W] * 10)
    assert rep["total_sleep_time_min"] == 0 and rep["sleep_efficiency_pct"] == 0
    for key in ("sleep_onset_latency_min", "waso_min", "rem_latency_min", "sleep_period_min"):
        assert rep[key] is None
    assert all(v is None for v in rep["stage_percent_of_tst"].values())
    empty = sleep_report([])
    assert empty["time_in_bed_min"] == 0 and empty["sleep_efficiency_pct"] is None


def test_sleep_report_unscored_epochs_and_no_rem():
    # unscored epochs keep their place in time but count toward no total
    hyp = [U, U, W, L, U, D, W, L]
    rep = sleep_report(hyp, epoch_s=60)
    assert rep["n_epochs"] == 8 and rep["n_epochs_with_stage"] == 5 and rep["time_in_bed_min"] == 5.0
    assert rep["sleep_onset_latency_min"] == 3.0  # first sleep at epoch 3 (1-min epochs)
    assert rep["sleep_period_min"] == 5.0 and rep["waso_min"] == 1.0
    assert rep["rem_latency_min"] is None
    assert rep["sleep_efficiency_pct"] == pytest.approx(60.0)
    with pytest.raises(ValueError):
        sleep_report([0, 4])


def test_sleep_report_immediate_sleep_all_rem():
    rep = sleep_report([R] * 6)
    assert rep["sleep_onset_latency_min"] == 0 and rep["rem_latency_min"] == 0 and rep["waso_min"] == 0
    assert rep["sleep_efficiency_pct"] == 100.0 and rep["stage_percent_of_tst"]["REM"] == 100.0


def test_difference_and_console_text():
    predicted, scored = sleep_report([W, L, L, D, R, W]), sleep_report([W, W, L, D, D, W])
    diff = report_difference(predicted, scored)
    assert diff["total_sleep_time_min"] == pytest.approx(0.5)  # 4 vs 3 sleep epochs of 30 s
    assert diff["rem_latency_min"] is None  # no REM in the scored night
    assert diff["stage_minutes"] == {"Wake": -0.5, "Light": 0.5, "Deep": -0.5, "REM": 0.5}
    table = format_sleep_report("0001", predicted, " x", scored=scored)
    assert table.startswith("[0001] x\n") and "predicted    scored  difference" in table
    assert next(line for line in table.splitlines() if "REM latency" in line).split()[-3:] == ["1.5", "n/a", "n/a"]
    entry = {"subject_id": "0002", "sleep_report": predicted, "hours_staged": 0.05, "cache_used": True,
             "warnings": ["30% of the recorded PPG is flat"]}
    text = format_night(entry)
    assert text.startswith("[0002] 0.05 h staged, cache reused\n") and "scored" not in text
    assert text.endswith("\n  WARNING: 30% of the recorded PPG is flat")
