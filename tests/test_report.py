"""Tests for sleepppg.report: yasa's sleep statistics on hand-made hypnograms (30-s epochs: 2 epochs = 1 min),
the same epochs for predicted and scored, agreement with the validation report, the predicted - scored
difference and the console text of a night."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sleepppg.report import (
    SLEEP_STATISTICS,
    compared_reports,
    format_night,
    format_sleep_report,
    report_difference,
    sleep_report,
)
from sleepppg.validation import Night
from sleepppg.validation_stats import sleep_statistics

W, L, D, R, U = 0, 1, 2, 3, -1  # Wake, Light, Deep, REM, unscored


def test_sleep_report_textbook_night():
    # 10 min awake, sleep L L D D, 2 epochs wake (WASO), R R, L, then 4 epochs wake at the end
    hyp = [W] * 20 + [L, L, D, D, W, W, R, R, L] + [W] * 4
    rep = sleep_report(hyp)
    assert rep["first_epoch"] == 0 and rep["n_epochs"] == rep["n_epochs_with_stage"] == 33
    assert rep["TIB"] == 16.5
    assert rep["TST"] == 3.5  # 7 sleep epochs
    assert rep["SE"] == pytest.approx(100 * 7 / 33, abs=1e-4)
    assert rep["SOL"] == 10.0
    assert rep["SOL_5min"] is None  # never 10 epochs of continuous sleep
    assert rep["SPT"] == 4.5  # epochs 20..28
    assert rep["SME"] == pytest.approx(100 * 7 / 9, abs=1e-4)
    assert rep["WASO"] == 1.0  # the two wake epochs inside; the final 4 are after the final awakening
    assert rep["Lat_REM"] == 13.0  # first REM at epoch 26, from the start (the AASM's latency: 13 - SOL = 3)
    assert (rep["WAKE"], rep["LIGHT"], rep["DEEP"], rep["REM"]) == (13.0, 1.5, 1.0, 1.0)
    assert rep["%LIGHT"] == pytest.approx(300 / 7, abs=1e-4) and rep["%DEEP"] == pytest.approx(200 / 7, abs=1e-4)
    assert rep["%LIGHT"] + rep["%DEEP"] + rep["%REM"] == pytest.approx(100.0, abs=1e-3)
    assert set(SLEEP_STATISTICS) <= set(rep)


def test_sleep_report_no_sleep_and_empty():
    rep = sleep_report([W] * 10)
    assert rep["TST"] == 0 and rep["SE"] == 0 and rep["TIB"] == 5.0
    for key in ("SOL", "WASO", "Lat_REM", "SME", "%LIGHT", "%DEEP", "%REM"):
        assert rep[key] is None
    empty = sleep_report([U, U])
    assert empty["n_epochs"] == 0 and empty["first_epoch"] is None
    assert all(empty[key] is None for key in SLEEP_STATISTICS)


def test_sleep_report_spans_the_staged_epochs_and_counts_unscored_ones_in_time_in_bed():
    # the hypnogram runs from the first to the last epoch with a stage; unscored epochs inside it are "UNS"
    rep = sleep_report([U, U, W, L, U, D, W, L, U])
    assert rep["first_epoch"] == 2 and rep["n_epochs"] == 6 and rep["n_epochs_with_stage"] == 5
    assert rep["TIB"] == 3.0 and rep["TST"] == 1.5 and rep["SE"] == 50.0
    assert rep["SOL"] == 0.5 and rep["SPT"] == 2.5 and rep["WASO"] == 0.5 and rep["Lat_REM"] is None
    with pytest.raises(ValueError):
        sleep_report([0, 4])


def test_sleep_report_immediate_sleep_all_rem():
    rep = sleep_report([R] * 6)
    assert rep["SOL"] == 0 and rep["Lat_REM"] == 0 and rep["WASO"] == 0
    assert rep["SE"] == 100.0 and rep["%REM"] == 100.0


def test_compared_reports_cover_the_same_epochs():
    # the scoring starts one epoch late and ends one early; the prediction stages every epoch
    true = np.array([U, W, W, L, D, D, W, U])
    pred = np.array([W, W, L, L, D, R, W, W])
    predicted, scored = compared_reports(true, pred)
    assert predicted["first_epoch"] == scored["first_epoch"] == 1
    assert predicted["TIB"] == scored["TIB"] == 3.0  # the same 6 epochs on both sides
    diff = report_difference(predicted, scored)
    assert diff["TIB"] == 0 and diff["TST"] == pytest.approx(0.5)  # 4 vs 3 sleep epochs of 30 s
    assert diff["Lat_REM"] is None  # no REM in the scored night
    assert (diff["WAKE"], diff["LIGHT"], diff["DEEP"], diff["REM"]) == (-0.5, 0.5, -0.5, 0.5)
    assert compared_reports(np.array([W, U]), np.array([U, W])) is None  # no epoch both staged and scored


def test_inference_report_equals_the_validation_reports_statistics():
    rng = np.random.default_rng(3)
    true = rng.integers(-1, 4, 200)
    pred = np.where(rng.random(200) < 0.05, -1, np.where(rng.random(200) < 0.7, true.clip(0), rng.integers(0, 4, 200)))
    predicted, scored = compared_reports(true, pred)
    night = Night("n1", Path("n1.csv"), pred, true, np.full((200, 4), 0.25))
    scored_frame, predicted_frame = sleep_statistics([night])
    for report, frame in ((predicted, predicted_frame), (scored, scored_frame)):
        for key in SLEEP_STATISTICS:
            value = frame.loc["n1", key]
            assert (report[key] is None) if np.isnan(value) else report[key] == pytest.approx(value)


def test_console_text():
    predicted, scored = compared_reports(np.array([W, W, L, D, D, W]), np.array([W, L, L, D, R, W]))
    table = format_sleep_report("0001", predicted, " x", scored=scored)
    assert table.startswith("[0001] x\n") and "predicted    scored  difference" in table
    assert next(line for line in table.splitlines() if "REM latency" in line).split()[-3:] == ["2.0", "n/a", "n/a"]
    entry = {"subject_id": "0002", "sleep_report": predicted, "hours_staged": 0.05, "cache_used": True,
             "warnings": ["30% of the recorded PPG is flat"]}
    text = format_night(entry)
    assert text.startswith("[0002] 0.05 h staged, cache reused\n") and "scored" not in text
    assert text.endswith("\n  WARNING: 30% of the recorded PPG is flat")
