"""Tests for sleepppg.outputs: the per-night CSV and hypnogram PNGs, the background writer and result.json."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_png, read_csv

from sleepppg.constants import STAGE_NAMES
from sleepppg.nights import Night
from sleepppg.outputs import (
    CSV_COLUMNS,
    NO_OUTPUTS,
    RESULT_FORMAT,
    OutputWriter,
    plot_hypnogram,
    predicted_stages,
    write_csv,
    write_result,
)
from sleepppg.runio import json_safe

W, L, D, R, U = 0, 1, 2, 3, -1  # Wake, Light, Deep, REM, unscored


def _probs(n: int, seed: int = 0) -> np.ndarray:
    logits = np.random.default_rng(seed).standard_normal((n, 4))
    e = np.exp(logits)
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


def test_write_csv_with_and_without_labels(tmp_path):
    probs = _probs(7)
    pred = probs.argmax(1)
    write_csv(tmp_path / "a.csv", probs)
    header, rows = read_csv(tmp_path / "a.csv")
    assert header == list(CSV_COLUMNS) and len(rows) == 7
    assert all(r[4] == r[5] == r[6] == "" for r in rows)
    assert [int(r[2]) for r in rows] == pred.tolist()
    assert float(rows[2][1]) == pytest.approx(2 * 30 / 3600, abs=1e-6)
    sums = [sum(float(v) for v in r[7:11]) for r in rows]
    assert np.allclose(sums, 1.0, atol=1e-5)

    truth = pred.copy()
    truth[0] = (pred[0] + 1) % 4
    truth[3] = -1
    write_csv(tmp_path / "b.csv", probs, true_W=truth)
    _, rows = read_csv(tmp_path / "b.csv")
    assert rows[0][6] == "1" and rows[1][6] == "0" and rows[3][4:7] == ["", "", ""]
    assert rows[1][5] == STAGE_NAMES[truth[1]]


def test_gap_epochs_are_not_staged(tmp_path):
    probs = _probs(4)
    probs[1] = np.nan
    assert predicted_stages(probs).tolist() == [probs[0].argmax(), -1, probs[2].argmax(), probs[3].argmax()]
    write_csv(tmp_path / "g.csv", probs, true_W=np.array([W, R, L, D]))
    _, rows = read_csv(tmp_path / "g.csv")
    assert rows[1][2:] == ["", "Gap", "3", "REM", "", "", "", "", "", ""]


def test_plots_are_valid_png(tmp_path):
    pred = np.array([W, W, L, D, D, R, L, W])
    plot_hypnogram(tmp_path / "p.png", pred, "pred")
    plot_hypnogram(tmp_path / "q.png", pred, "with labels", true_W=np.array([W, U, L, D, L, R, R, W]))
    assert_png(tmp_path / "p.png")
    assert_png(tmp_path / "q.png")


def test_writer_returns_the_paths_or_raises_from_the_future(tmp_path):
    night = Night("0001", tmp_path / "x.edf", np.zeros((4, 1024), np.float32), 4, False)
    flags = {"save_csv": True, "save_graph": False}
    with OutputWriter(tmp_path / "run", flags) as writer:
        paths = writer.submit(night, _probs(4)).result()
    assert paths == {**NO_OUTPUTS, "csv": str((tmp_path / "run" / "csv" / "0001" / "0001.csv").resolve())}
    with OutputWriter(None, flags) as writer:
        assert writer.submit(night, _probs(4)).result() == NO_OUTPUTS  # no run folder: nothing written
    (tmp_path / "blocked").write_text("a file where the run folder should be")
    with OutputWriter(tmp_path / "blocked", flags) as writer:
        future = writer.submit(night, _probs(4))
        with pytest.raises(OSError):
            future.result()


def test_json_safe():
    out = json_safe({"a": float("nan"), "b": [np.float32(1.5), np.int64(2)], 3: (float("inf"),)})
    assert json.loads(json.dumps(out, allow_nan=False)) == {"a": None, "b": [1.5, 2], "3": [None]}


def test_result_json_is_strict_json(tmp_path):
    path = write_result(tmp_path, {"run_id": "r", "elapsed_s": float("nan"), "nights": [{"x": np.float32(1.5)}]})
    assert path == tmp_path / "result.json" and Path(path).is_file()
    text = path.read_text()
    result = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in result.json"))
    assert list(result)[:3] == ["result_format", "paths", "run_id"]
    assert result == {"result_format": RESULT_FORMAT, "paths": "absolute", "run_id": "r", "elapsed_s": None,
                      "nights": [{"x": 1.5}]}
