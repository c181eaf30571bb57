"""Tests for inference_ppg_only.py: sleep report on hand-made hypnograms, CSV/PNG outputs, the validated
cache, and (with the other pipeline modules) end-to-end HDF5 and EDF runs on tiny synthetic nights."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import inference_ppg_only as inf
from sleepppg_common import SAMPLES_PER_WINDOW

W, L, D, R, U = 0, 1, 2, 3, -1  # Wake, Light, Deep, REM, unscored


# ----------------------------------------------------------------------------------------------------------
# sleep_report on hand-made hypnograms (30-s epochs: 2 epochs = 1 min)


def test_sleep_report_textbook_night():
    # 10 min awake, sleep L L D D, 2 epochs wake (WASO), R R, L, then 4 epochs wake at the end
    hyp = [W] * 20 + [L, L, D, D, W, W, R, R, L] + [W] * 4
    rep = inf.sleep_report(hyp)
    assert rep["n_epochs"] == rep["n_scored_epochs"] == 33
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
    rep = inf.sleep_report([W] * 10)
    assert rep["total_sleep_time_min"] == 0 and rep["sleep_efficiency_pct"] == 0
    for key in ("sleep_onset_latency_min", "waso_min", "rem_latency_min", "sleep_period_min"):
        assert rep[key] is None
    assert all(v is None for v in rep["stage_percent_of_tst"].values())
    empty = inf.sleep_report([])
    assert empty["time_in_bed_min"] == 0 and empty["sleep_efficiency_pct"] is None


def test_sleep_report_unscored_epochs_and_no_rem():
    # unscored epochs keep their place in time but count toward no total
    hyp = [U, U, W, L, U, D, W, L]
    rep = inf.sleep_report(hyp, epoch_s=60)
    assert rep["n_scored_epochs"] == 5 and rep["time_in_bed_min"] == 5.0
    assert rep["sleep_onset_latency_min"] == 3.0  # first sleep at epoch 3 (1-min epochs)
    assert rep["sleep_period_min"] == 5.0 and rep["waso_min"] == 1.0
    assert rep["rem_latency_min"] is None
    assert rep["sleep_efficiency_pct"] == pytest.approx(60.0)
    with pytest.raises(ValueError):
        inf.sleep_report([0, 4])


def test_sleep_report_immediate_sleep_all_rem():
    rep = inf.sleep_report([R] * 6)
    assert rep["sleep_onset_latency_min"] == 0 and rep["rem_latency_min"] == 0 and rep["waso_min"] == 0
    assert rep["sleep_efficiency_pct"] == 100.0 and rep["stage_percent_of_tst"]["REM"] == 100.0


# ----------------------------------------------------------------------------------------------------------
# Outputs


def _probs(n: int, seed: int = 0) -> np.ndarray:
    logits = np.random.default_rng(seed).standard_normal((n, 4))
    e = np.exp(logits)
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    lines = path.read_text().splitlines()
    return lines[0].split(","), [line.split(",") for line in lines[1:]]


def test_write_csv_with_and_without_labels(tmp_path):
    probs = _probs(7)
    pred = probs.argmax(1)
    inf.write_csv(tmp_path / "a.csv", probs)
    header, rows = _read_csv(tmp_path / "a.csv")
    assert header == list(inf.CSV_COLUMNS) and len(rows) == 7
    assert all(r[4] == r[5] == r[6] == "" for r in rows)
    assert [int(r[2]) for r in rows] == pred.tolist()
    assert float(rows[2][1]) == pytest.approx(2 * 30 / 3600, abs=1e-6)
    sums = [sum(float(v) for v in r[7:]) for r in rows]
    assert np.allclose(sums, 1.0, atol=1e-5)

    truth = pred.copy()
    truth[0] = (pred[0] + 1) % 4
    truth[3] = -1
    inf.write_csv(tmp_path / "b.csv", probs, true_W=truth)
    _, rows = _read_csv(tmp_path / "b.csv")
    assert rows[0][6] == "1" and rows[1][6] == "0" and rows[3][4:7] == ["", "", ""]
    assert rows[1][5] == inf.STAGE_NAMES[truth[1]]


def _assert_png(path: Path) -> None:
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_plots_are_valid_png(tmp_path):
    pred = np.array([W, W, L, D, D, R, L, W])
    inf.plot_hypnogram(tmp_path / "p.png", pred, "pred")
    inf.plot_hypnogram(tmp_path / "q.png", pred, "with labels", true_W=np.array([W, U, L, D, L, R, R, W]))
    _assert_png(tmp_path / "p.png")
    _assert_png(tmp_path / "q.png")


# ----------------------------------------------------------------------------------------------------------
# Cache logic (no EDF needed)


def _fake_edf(tmp_path: Path, name="mesa-sleep-0042.edf") -> Path:
    p = tmp_path / name
    p.write_bytes(b"0" * 100)
    return p


def test_cache_roundtrip_and_invalidation(tmp_path):
    edf = _fake_edf(tmp_path)
    settings = inf.preprocessing_settings("linear", ["Pleth", "ppg"], n_windows=6)
    windows = np.random.default_rng(0).standard_normal((6, SAMPLES_PER_WINDOW)).astype(np.float32)
    cache = tmp_path / "cache" / "0042"
    assert inf.load_cache(cache, inf.edf_signature(edf), settings)[2] == "no cache yet"
    inf.write_cache(cache, windows, {"edf": inf.edf_signature(edf), "settings": settings, "n_recorded_windows": 5})
    got, meta, reason = inf.load_cache(cache, inf.edf_signature(edf), settings)
    assert reason == "" and np.array_equal(got, windows) and meta["n_recorded_windows"] == 5
    assert sorted(p.name for p in cache.iterdir()) == ["meta.json", "ppg_windows.npy"]  # no temp files left

    # other settings -> stale
    for other in (inf.preprocessing_settings("polyphase", ["pleth", "ppg"], 6),
                  inf.preprocessing_settings("linear", ["pleth"], 6),
                  inf.preprocessing_settings("linear", ["pleth", "ppg"], 7)):
        assert inf.load_cache(cache, inf.edf_signature(edf), other)[0] is None
    # the EDF changes (new mtime) -> stale
    st = edf.stat()
    os.utime(edf, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert "EDF changed" in inf.load_cache(cache, inf.edf_signature(edf), settings)[2]


@pytest.mark.parametrize("damage", ["truncate_npy", "delete_npy", "bad_json", "json_list", "wrong_shape",
                                    "delete_meta"])
def test_corrupt_cache_is_rejected(tmp_path, damage):
    edf = _fake_edf(tmp_path)
    sig = inf.edf_signature(edf)
    settings = inf.preprocessing_settings("linear", ["pleth"], n_windows=4)
    cache = tmp_path / "c"
    inf.write_cache(cache, np.ones((4, SAMPLES_PER_WINDOW), np.float32),
                    {"edf": sig, "settings": settings, "n_recorded_windows": 4})
    npy, meta = cache / inf.CACHE_WINDOWS_FILE, cache / inf.CACHE_META_FILE
    if damage == "truncate_npy":
        npy.write_bytes(npy.read_bytes()[:1000])
    elif damage == "delete_npy":
        npy.unlink()
    elif damage == "bad_json":
        meta.write_text("{not json")
    elif damage == "json_list":
        meta.write_text("[1, 2]")
    elif damage == "wrong_shape":
        np.save(npy, np.ones((3, SAMPLES_PER_WINDOW), np.float32))
    elif damage == "delete_meta":
        meta.unlink()
    got, _, reason = inf.load_cache(cache, sig, settings)
    assert got is None and reason and reason != "no cache yet"


def test_resolve_inputs_and_ids(tmp_path):
    a = _fake_edf(tmp_path, "mesa-sleep-0001.edf")
    b = _fake_edf(tmp_path, "night_B.EDF")
    (tmp_path / "notes.txt").write_text("x")
    assert inf.resolve_edf_inputs(str(a)) == [a]
    assert inf.resolve_edf_inputs(str(tmp_path)) == sorted([a, b])
    assert inf.resolve_edf_inputs(str(tmp_path / "mesa-*.edf")) == [a]
    assert inf.subject_id_for(a) == "0001" and inf.subject_id_for(b) == "night_B"
    assert inf.unique_ids([a, b, a]) == ["0001", "night_B", "0001_2"]
    empty = tmp_path / "empty"
    empty.mkdir()
    for spec in (str(empty), str(tmp_path / "nothing-*.edf"), str(tmp_path / "missing.edf")):
        with pytest.raises(inf.SetupError):
            inf.resolve_edf_inputs(spec)


def test_select_test_subjects_is_seeded():
    subs = [f"{i:04d}" for i in range(20)]
    first = inf.select_test_subjects(subs, 5, seed=42)
    assert first == inf.select_test_subjects(list(reversed(subs)), 5, seed=42)
    assert len(first) == 5 and set(first) <= set(subs)
    assert inf.select_test_subjects(subs, 50, seed=1) != subs and len(inf.select_test_subjects(subs, 50, 1)) == 20


def test_recorded_epochs_ignores_padding():
    ppg = np.zeros((6, SAMPLES_PER_WINDOW), np.float32)
    ppg[:3] = 1.0
    labels = np.array([0, 1, -1, 2, -1, -1])
    assert inf.recorded_epochs(ppg, labels) == 4
    assert inf.recorded_epochs(np.zeros_like(ppg), np.full(6, -1)) == 0


def test_json_safe():
    out = inf.json_safe({"a": float("nan"), "b": [np.float32(1.5), np.int64(2)], 3: (float("inf"),)})
    assert json.loads(json.dumps(out, allow_nan=False)) == {"a": None, "b": [1.5, 2], "3": [None]}
