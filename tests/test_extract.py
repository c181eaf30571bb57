"""Tests for extract_mesa_data.py and what it runs on (sleepppg.extraction, .parts, .assembly, .preprocessing,
.edf, .annotations): labels from hand-written NSRR XML, preprocessing against slow obvious versions, HDF5
formats, bad data, bad setup, resume after a crash (kill -9 included), a worker killed by a signal,
workers=2 == workers=1.

Recordings are tiny EDFs written with edfio under tmp_path (10-20 min nights, 40 windows per subject).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import (
    REPO,
    W,
    channels_for_raw_edf,
    interrupted_on_call,
    make_cohort,
    run_cli,
    set_field,
    synthetic_night,
    write_edf,
    write_raw_edf,
    write_xml,
)
from scipy import signal as sps

import extract_mesa_data as ex
import sleepppg.annotations
import sleepppg.assembly
import sleepppg.edf
import sleepppg.extraction
import sleepppg.preprocessing
from sleepppg.annotations import xml_to_labels
from sleepppg.channels import PPG_PATTERNS, find_ecg_channel, find_ppg_channel
from sleepppg.constants import SAMPLES_PER_WINDOW, TARGET_FS
from sleepppg.edf import _read_digital, read_edf, read_edf_header, to_physical
from sleepppg.errors import BadRecordingError
from sleepppg.extraction import worker_died
from sleepppg.parts import read_part, write_part
from sleepppg.preprocessing import (
    PREPROCESSING_VERSION,
    file_signature,
    flat_fraction,
    input_signature,
    preprocess_ecg,
    preprocess_ppg,
    preprocess_recording,
    preprocessing_settings,
    repair_nonfinite,
    resample,
    resampled_length,
    to_windows,
)
from sleepppg.workers import run_jobs


@pytest.fixture(autouse=True)
def _fresh_log_handlers():
    """setup_logging binds its console handler to the sys.stderr of the test that first called it; drop the
    handlers after each test so a later test's captured stderr holds only its own lines."""
    import logging

    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_sleepppg_console", False) or isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()


def dataset_contents(out_dir: Path) -> dict:
    """Every dataset and attribute of the three HDF5 files, for equality checks."""
    contents = {}
    for name in (ex.PPG_FILE, ex.ECG_FILE, ex.INDEX_FILE):
        with h5py.File(out_dir / name, "r") as f:
            f.visititems(lambda key, obj: contents.__setitem__(
                (name, key), obj[()].tobytes() if isinstance(obj, h5py.Dataset) else None))
            for key, obj in [("/", f)] + [(k, f[k]) for k in _all_keys(f)]:
                contents[(name, key, "attrs")] = sorted((a, str(v)) for a, v in obj.attrs.items())
    return contents


def _all_keys(f: h5py.File) -> list[str]:
    keys: list[str] = []
    f.visit(keys.append)
    return keys


# ----------------------------------------------------------------------------------------------------------
# Labels


def test_labels_runs_gaps_overlaps_and_concepts(tmp_path):
    xml = write_xml(tmp_path / "a.xml", [
        ("Wake|0", 0, 60),               # epochs 0-1
        ("Stage 1 sleep|1", 60, 30),     # 2
        ("Stage 2 sleep|2", 90, 60),     # 3-4
        # gap: epoch 5 unscored
        ("Stage 3 sleep|3", 180, 30),    # 6
        ("Stage 4 sleep|4", 210, 30),    # 7 (R&K stage 4 -> Deep)
        ("REM sleep|5", 240, 90),        # 8-10 ...
        ("Wake|0", 270, 30),             # ... but epoch 9 is overwritten: the later event wins
        ("Movement|6", 330, 30),         # 11 -> -1
        ("Unscored|9", 360, 30),         # 12 -> -1
        ("Mystery stage|7", 390, 30),    # 13 -> unknown concept -> -1
        ("Stage 2 sleep|2", 435, 60),    # starts mid-epoch 14: epochs whose start is in [435, 495) = 15, 16
    ])
    labels = xml_to_labels(xml, n_windows=20)
    expected = [0, 0, 1, 1, 1, -1, 2, 2, 3, 0, 3, -1, -1, -1, -1, 1, 1, -1, -1, -1]
    assert labels.dtype == np.int64 and labels.shape == (20,)
    assert labels.tolist() == expected


def test_labels_events_past_the_window_limit_are_ignored(tmp_path):
    # 10 h = 1,200 epochs; a run from 9 h 59 min to 10 h 30 min fills only the last two epochs
    xml = write_xml(tmp_path / "long.xml", [("Stage 2 sleep|2", 0, 35940), ("REM sleep|5", 35940, 1860),
                                            ("Wake|0", 40000, 3000)])
    labels = xml_to_labels(xml)
    assert labels.shape == (1200,)
    assert (labels[:1198] == 1).all() and (labels[1198:] == 3).all()


def test_labels_float_times_on_epoch_boundaries(tmp_path):
    xml = write_xml(tmp_path / "f.xml", [("Wake|0", 0.0, 29.9999999), ("REM sleep|5", 29.9999999, 60.0000001)])
    assert xml_to_labels(xml, 4).tolist() == [0, 3, 3, -1]


@pytest.mark.parametrize("content, kind", [
    ("<PSGAnnotation><ScoredEvents><ScoredEvent>", "malformed_xml"),  # cut off mid-file
    ("not xml at all", "malformed_xml"),
    ("<PSGAnnotation><ScoredEvents><ScoredEvent><EventType>Stages|Stages</EventType><EventConcept>Wake|0"
     "</EventConcept><Start>abc</Start><Duration>30</Duration></ScoredEvent></ScoredEvents></PSGAnnotation>",
     "malformed_xml"),
    ("<PSGAnnotation><ScoredEvents><ScoredEvent><EventType>Arousals|Arousals</EventType><EventConcept>A"
     "</EventConcept><Start>0</Start><Duration>30</Duration></ScoredEvent></ScoredEvents></PSGAnnotation>",
     "no_stage_events"),
])
def test_labels_bad_xml(tmp_path, content, kind):
    path = tmp_path / "bad.xml"
    path.write_text(content)
    with pytest.raises(BadRecordingError) as info:
        xml_to_labels(path, 10)
    assert info.value.kind == kind


def test_labels_missing_xml(tmp_path):
    with pytest.raises(BadRecordingError) as info:
        xml_to_labels(tmp_path / "nope.xml", 10)
    assert info.value.kind == "missing_xml"


# ----------------------------------------------------------------------------------------------------------
# Channels


def test_channel_choice():
    assert find_ppg_channel(["EKG", "Pleth", "PPG2"], [256, 256, 256]) == "Pleth"  # tie: the first
    assert find_ppg_channel(["EEG1", "finger PPG"], [256, 128]) == "finger PPG"
    assert find_ppg_channel(["EEG1", "Thor"], [256, 32]) is None
    assert find_ppg_channel(["EEG1", "Plethysmo"], [256, 256], ("pleth",)) == "Plethysmo"
    assert find_ppg_channel(["PlethStatus", "EKG", "Pleth"], [1, 256, 256]) == "Pleth"  # rate beats order
    assert find_ecg_channel(["ECG I", "ECG II", "EKG"]) == "ECG II"
    assert find_ecg_channel(["EKG", "ECG"]) == "ECG"
    assert find_ecg_channel(["EEG", "EKG"]) == "EKG"
    assert find_ecg_channel(["EEG", "Pleth"]) is None


# ----------------------------------------------------------------------------------------------------------
# Preprocessing


def slow_linear_resample(x: np.ndarray, n_out: int) -> np.ndarray:
    """The reference's resampling written out sample by sample: new sample k sits at old index
    k (n-1)/(n_out-1) and is interpolated between its two neighbours."""
    out = np.empty(n_out)
    step = (x.size - 1) / (n_out - 1)
    for k in range(n_out):
        pos = k * step
        i = min(int(math.floor(pos)), x.size - 2)
        out[k] = x[i] + (pos - i) * (x[i + 1] - x[i])
    return out


def slow_clip_zscore(x: np.ndarray) -> np.ndarray:
    mu, sd = float(np.mean(x)), float(np.std(x))
    clipped = np.array([min(max(v, mu - 3 * sd), mu + 3 * sd) for v in x])
    return (clipped - clipped.mean()) / (clipped.std() + 1e-8)


@pytest.mark.parametrize("fs", [125, 250, 256])
def test_preprocess_ppg_matches_slow_version(fs):
    rng = np.random.default_rng(fs)
    seconds = 300
    x = np.sin(2 * np.pi * 1.1 * np.arange(seconds * fs) / fs) + 0.3 * rng.standard_normal(seconds * fs)
    x[1000] = 40.0  # an artefact the clip must catch
    out = preprocess_ppg(x, fs)
    assert out.dtype == np.float32
    assert out.size == round(seconds * TARGET_FS) == seconds * SAMPLES_PER_WINDOW // 30
    sos = sps.cheby2(8, 40, 8, btype="low", fs=fs, output="sos")
    expected = slow_clip_zscore(slow_linear_resample(sps.sosfiltfilt(sos, x), out.size))
    np.testing.assert_allclose(out, expected, atol=2e-5)
    assert abs(out.mean()) < 1e-4 and abs(out.std() - 1) < 1e-4


def test_preprocess_ecg_matches_slow_version_and_low_rates():
    rng = np.random.default_rng(1)
    fs, seconds = 256, 120
    x = np.sin(2 * np.pi * 1.2 * np.arange(seconds * fs) / fs) ** 9 + 0.1 * rng.standard_normal(seconds * fs)
    out = preprocess_ecg(x, fs)
    sos = sps.butter(4, [0.5, 40], btype="bandpass", fs=fs, output="sos")
    expected = slow_clip_zscore(slow_linear_resample(sps.sosfiltfilt(sos, x), out.size))
    np.testing.assert_allclose(out, expected, atol=2e-5)
    low = preprocess_ecg(x[::4], 64)  # 40 Hz is above Nyquist (32 Hz): the band is capped
    assert low.size == seconds * 1024 // 30 and np.isfinite(low).all() and abs(low.std() - 1) < 1e-3


def test_linear_resampling_is_the_references_np_interp_bit_for_bit():
    rng = np.random.default_rng(5)
    for n, fs in [(7680, 256), (7681, 256), (3750, 125), (12_345, 250)]:
        x = rng.standard_normal(n)
        out = resample(x, fs)
        reference = np.interp(np.linspace(0, n - 1, out.size), np.linspace(0, n - 1, n), x)
        assert out.size == resampled_length(n, fs)
        np.testing.assert_array_equal(out, reference)


def test_polyphase_resampling_agrees_with_linear():
    fs, seconds = 256, 120
    x = np.sin(2 * np.pi * 0.9 * np.arange(seconds * fs) / fs)
    lin, poly = preprocess_ppg(x, fs, "linear"), preprocess_ppg(x, fs, "polyphase")
    assert lin.shape == poly.shape == (seconds * 1024 // 30,)
    truth = np.sin(2 * np.pi * 0.9 * np.arange(lin.size) / TARGET_FS)  # sampled on the exact new grid
    assert np.corrcoef(poly[200:-200], truth[200:-200])[0, 1] > 0.9999
    # the reference's linear grid spreads n_out samples over the old index range [0, n-1], a stretch of
    # (n-1)/(n_out-1) vs n/n_out: a few ms over two minutes, still nearly the same wave
    assert np.corrcoef(lin[200:-200], truth[200:-200])[0, 1] > 0.99
    with pytest.raises(ValueError):
        preprocess_ppg(x, fs, "cubic")


def test_resampled_length_exact():
    assert resampled_length(int(10 * 3600 * 256), 256) == 1_228_800
    assert resampled_length(int(10.5 * 3600 * 125), 125) == int(10.5 * 3600 * 1024 / 30)
    assert resampled_length(255, 256) == 34  # 0.996 s -> floor(34.0) samples


def test_preprocess_rejects_too_short_and_low_rate():
    with pytest.raises(BadRecordingError) as info:
        preprocess_ppg(np.ones(100), 256)
    assert info.value.kind == "too_short"
    with pytest.raises(BadRecordingError) as info:
        preprocess_ppg(np.random.default_rng(0).standard_normal(600), 10)
    assert info.value.kind == "low_sampling_rate"


def test_to_windows_pads_and_truncates():
    x = np.arange(2.5 * SAMPLES_PER_WINDOW, dtype=np.float32)
    w = to_windows(x, 4)
    assert w.shape == (4, SAMPLES_PER_WINDOW) and w.dtype == np.float32
    assert w.reshape(-1)[: x.size].tolist() == x.tolist() and not w.reshape(-1)[x.size:].any()
    assert to_windows(x, 2).reshape(-1).tolist() == x[: 2 * SAMPLES_PER_WINDOW].tolist()


def test_nan_repair_and_flat_detection():
    x = np.sin(np.arange(10_000) / 10.0)
    y = x.copy()
    y[[10, 11, 500]] = np.nan
    fixed = repair_nonfinite(y, "PPG")
    assert np.isfinite(fixed).all() and abs(fixed[10] - x[10]) < 0.01
    y[:200] = np.nan
    with pytest.raises(BadRecordingError) as info:
        repair_nonfinite(y, "PPG")
    assert info.value.kind == "nan_signal"
    fs = 10
    night = np.sin(np.arange(30 * 300) / 3.0)  # 30 segments of 30 s
    assert flat_fraction(night, fs) == 0.0
    night[:20 * 300] = 1.5  # 20 of 30 segments constant
    assert flat_fraction(night, fs) == pytest.approx(20 / 30)


def test_preprocess_recording_reads_edf(tmp_path):
    edf = write_edf(tmp_path / "mesa-sleep-0001.edf", minutes=11)
    rec = preprocess_recording(edf, n_windows=W)
    assert rec["ppg_channel"] == "Pleth" and rec["ppg_fs"] == 256 and rec["has_ecg"]
    assert rec["ppg_windows"].shape == rec["ecg_windows"].shape == (W, SAMPLES_PER_WINDOW)
    assert rec["n_recorded_windows"] == 22 and rec["duration_s"] == 11 * 60
    assert not rec["ppg_windows"][22:].any() and rec["ppg_windows"][:22].std() > 0.5
    raw = read_edf(edf)
    np.testing.assert_array_equal(rec["ppg_windows"].reshape(-1)[: 22 * 1024],
                                  preprocess_ppg(raw["ppg"], 256)[: 22 * 1024])
    no_ecg = preprocess_recording(write_edf(tmp_path / "b.edf", 3, fs_ppg=125, ecg=False), n_windows=W)
    assert not no_ecg["has_ecg"] and no_ecg["ecg_windows"] is None and no_ecg["ppg_fs"] == 125
    ppg_only = preprocess_recording(edf, n_windows=W, with_ecg=False)  # what PPG-only inference asks for
    assert ppg_only["ecg_windows"] is None and not ppg_only["has_ecg"]
    np.testing.assert_array_equal(ppg_only["ppg_windows"], rec["ppg_windows"])


def test_preprocess_recording_nan_ppg_is_bad(tmp_path, monkeypatch):
    edf = write_edf(tmp_path / "n.edf", 3)
    real = read_edf

    def with_nans(path, patterns=PPG_PATTERNS, with_ecg=True):
        rec = real(path, patterns, with_ecg)
        rec["ppg"][: rec["ppg"].size // 10] = np.nan
        return rec

    monkeypatch.setattr(sleepppg.preprocessing, "read_edf", with_nans)
    with pytest.raises(BadRecordingError) as info:
        preprocess_recording(edf, n_windows=W)
    assert info.value.kind == "nan_signal"


# ----------------------------------------------------------------------------------------------------------
# The whole run


def test_formats_attrs_and_bad_inputs(tmp_path, monkeypatch, capsys):
    good = ["0003", "0010", "0021"]
    edf_dir, xml_dir = make_cohort(tmp_path / "raw", good, minutes=12)
    # one of each kind of bad input
    write_edf(edf_dir / "mesa-sleep-0100.edf", 12, ppg_label="Thermistor")                         # no PPG
    write_xml(xml_dir / "mesa-sleep-0100-nsrr.xml", [("Wake|0", 0, 600)])
    data = write_edf(tmp_path / "full.edf", 12).read_bytes()
    (edf_dir / "mesa-sleep-0101.edf").write_bytes(data[: len(data) // 2])                         # truncated
    write_xml(xml_dir / "mesa-sleep-0101-nsrr.xml", [("Wake|0", 0, 600)])
    (edf_dir / "mesa-sleep-0102.edf").write_bytes(b"garbage" * 500)                                # unreadable
    write_xml(xml_dir / "mesa-sleep-0102-nsrr.xml", [("Wake|0", 0, 600)])
    write_edf(edf_dir / "mesa-sleep-0103.edf", 12)                                                 # no XML
    write_edf(edf_dir / "mesa-sleep-0104.edf", 12)
    write_xml(xml_dir / "mesa-sleep-0104-nsrr.xml", [])                                            # no stages
    write_edf(edf_dir / "mesa-sleep-0105.edf", 12)
    (xml_dir / "mesa-sleep-0105-nsrr.xml").write_text("<PSGAnnotation><ScoredEvents>")            # malformed
    write_edf(edf_dir / "mesa-sleep-0106.edf", 12, flat_ppg=True)                                  # flat PPG
    write_xml(xml_dir / "mesa-sleep-0106-nsrr.xml", [("Wake|0", 0, 600)])
    write_xml(xml_dir / "mesa-sleep-0107-nsrr.xml", [("Wake|0", 0, 600)])                          # no EDF
    write_edf(edf_dir / "mesa-sleep-0108.edf", 12)                                                 # NaNs
    write_xml(xml_dir / "mesa-sleep-0108-nsrr.xml", [("Wake|0", 0, 600)])
    real = read_edf

    def nan_for_0108(path, patterns=PPG_PATTERNS, with_ecg=True):
        rec = real(path, patterns, with_ecg)
        if "0108" in str(path):
            rec["ppg"][::20] = np.nan
        return rec

    monkeypatch.setattr(sleepppg.preprocessing, "read_edf", nan_for_0108)
    out = tmp_path / "out"
    assert run_cli(edf_dir, xml_dir, out) == 1

    failed = json.loads((out / ex.FAILED_FILE).read_text())
    kinds = {item["id"]: item["kind"] for item in failed}
    assert kinds == {"0100": "no_ppg_channel", "0101": "truncated_edf", "0102": "unreadable_edf",
                     "0103": "missing_xml", "0104": "no_stage_events", "0105": "malformed_xml",
                     "0106": "flat_ppg", "0107": "missing_edf", "0108": "nan_signal"}
    assert all(item["file"] and item["reason"].strip() for item in failed)  # no empty reason
    reasons = {item["id"]: item["reason"] for item in failed}
    assert "flat PPG 'Pleth'" in reasons["0106"] and "PPG 'Pleth'" in reasons["0108"]  # the channel is named
    assert "9 failed" in capsys.readouterr().out
    log_text = (out / "logs" / "processing.log").read_text()
    assert "subject 0106 skipped (flat_ppg)" in log_text

    n = len(good) * W
    with h5py.File(out / ex.PPG_FILE) as f:
        assert set(f) == {"ppg", "labels", "subject_ids"}
        assert f["ppg"].shape == (n, 1024) and f["ppg"].dtype == np.float32
        assert f["labels"].dtype == np.int64 and f["subject_ids"].dtype == np.dtype("S4")
        assert f["subject_ids"][::W].tolist() == [s.encode() for s in good]
        assert dict(f.attrs) == {"sampling_rate": TARGET_FS, "window_duration": 30, "samples_per_window": 1024,
                                 "total_windows": n, "total_subjects": 3, "windows_per_subject": W,
                                 "resample_method": "linear"}
        ppg, labels = f["ppg"][()], f["labels"][()]
    with h5py.File(out / ex.ECG_FILE) as f:
        assert set(f) == {"ecg", "has_real_ecg", "subject_ids", "labels", "real_ecg_indices"}
        assert f["ecg"].shape == (n, 1024) and f["ecg"].dtype == np.float32
        assert f["has_real_ecg"][()].all() and f["real_ecg_indices"][()].tolist() == list(range(n))
        assert f.attrs["windows_with_real_ecg"] == n and f.attrs["windows_without_real_ecg"] == 0
        np.testing.assert_array_equal(f["labels"][()], labels)
    with h5py.File(out / ex.INDEX_FILE) as f:
        assert sorted(f["subjects"]) == good
        assert f.attrs["total_subjects"] == 3 and f.attrs["total_windows"] == n
        for i, sid in enumerate(good):
            g = f["subjects"][sid]
            assert g["window_indices"][()].tolist() == list(range(i * W, (i + 1) * W))
            assert g.attrs["n_windows"] == W and g.attrs["has_ecg"] and g.attrs["n_recorded_windows"] == 24
    # rows hold exactly the preprocessed recording and its labels (cut at the end of the recording)
    for i, sid in enumerate(good):
        rec = preprocess_recording(edf_dir / f"mesa-sleep-{sid}.edf", n_windows=W)
        np.testing.assert_array_equal(ppg[i * W:(i + 1) * W], rec["ppg_windows"])
        expected = xml_to_labels(xml_dir / f"mesa-sleep-{sid}-nsrr.xml", W)
        expected[24:] = -1
        np.testing.assert_array_equal(labels[i * W:(i + 1) * W], expected)
    stats = np.load(out / "data_stats.npy", allow_pickle=True).item()
    assert stats["total_subjects"] == 3 and stats["failed_subjects"] == 9
    assert sum(stats["label_distribution"].values()) == stats["valid_labels"] == int((labels >= 0).sum())
    assert "Total windows: 120" in (out / "data_stats.txt").read_text()
    assert not (out / ex.PARTS_DIR).exists()  # parts removed after success
    assert not list(out.glob(".*.tmp"))


def test_workers_2_equals_workers_1_and_up_to_date(tmp_path, capsys):
    ids = ["0002", "0005", "0007", "0011"]
    edf_dir, xml_dir = make_cohort(tmp_path / "raw", ids, minutes=10, no_ecg=("0005",))
    assert run_cli(edf_dir, xml_dir, tmp_path / "one") == 0
    assert run_cli(edf_dir, xml_dir, tmp_path / "two", "--workers", "2") == 0
    assert dataset_contents(tmp_path / "one") == dataset_contents(tmp_path / "two")
    # the subject without ECG: zero ECG rows, flagged in every place that says so
    rows = np.arange(W, 2 * W)
    with h5py.File(tmp_path / "two" / ex.ECG_FILE) as f:
        has = f["has_real_ecg"][()]
        assert not has[rows].any() and has.sum() == 3 * W
        assert not f["ecg"][W:2 * W].any() and f["ecg"][:W].std() > 0.5
        assert set(f["real_ecg_indices"][()].tolist()).isdisjoint(rows.tolist())
        assert f.attrs["windows_with_real_ecg"] == 3 * W and f.attrs["windows_without_real_ecg"] == W
    with h5py.File(tmp_path / "two" / ex.INDEX_FILE) as f:
        assert [bool(f["subjects"][s].attrs["has_ecg"]) for s in ids] == [True, False, True, True]
    capsys.readouterr()
    assert run_cli(edf_dir, xml_dir, tmp_path / "two", "--workers", "2") == 0
    assert "up to date" in capsys.readouterr().out
    assert not (tmp_path / "two" / ex.PARTS_DIR).exists()
    # a changed source file makes the outputs stale again: 0007 rescored with 0011's stages
    with h5py.File(tmp_path / "two" / ex.PPG_FILE) as f:
        before = f["labels"][()]
    (xml_dir / "mesa-sleep-0007-nsrr.xml").write_bytes((xml_dir / "mesa-sleep-0011-nsrr.xml").read_bytes())
    assert run_cli(edf_dir, xml_dir, tmp_path / "two", "--workers", "2") == 0
    assert "up to date" not in capsys.readouterr().out
    with h5py.File(tmp_path / "two" / ex.PPG_FILE) as f:
        after = f["labels"][()]
    rows_0007, rows_0011 = slice(2 * W, 3 * W), slice(3 * W, 4 * W)
    assert not np.array_equal(before[rows_0007], after[rows_0007])
    np.testing.assert_array_equal(after[rows_0007], after[rows_0011])
    np.testing.assert_array_equal(before[:2 * W], after[:2 * W])
    # --subjects picks a subset
    assert run_cli(edf_dir, xml_dir, tmp_path / "sub", "--subjects", "0007,0002") == 0
    with h5py.File(tmp_path / "sub" / ex.INDEX_FILE) as f:
        assert sorted(f["subjects"]) == ["0002", "0007"]
    assert run_cli(edf_dir, xml_dir, tmp_path / "lim", "--limit", "1") == 0
    with h5py.File(tmp_path / "lim" / ex.INDEX_FILE) as f:
        assert sorted(f["subjects"]) == ["0002"]


def _killed_run(edf_dir: Path, xml_dir: Path, out: Path, kill_at: str) -> None:
    """Run the extractor in a subprocess that SIGKILLs itself at a chosen point."""
    script = f"""
import os, signal, sys
import numpy as np
import extract_mesa_data as ex
import sleepppg.assembly as assembly
import sleepppg.extraction as extraction
calls = {{"n": 0}}
def kill_on_second(real):
    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the whole run: the main process and the HDF5 writer it forked
            os.killpg(0, signal.SIGKILL)
        return real(*args, **kwargs)
    return wrapper
if {kill_at!r} == "processing":   # after the first subject's part is written
    extraction.process_subject = kill_on_second(extraction.process_subject)
else:                               # in the middle of writing the HDF5 files
    assembly.read_part = kill_on_second(assembly.read_part)
sys.exit(ex.main(["--edf-dir", {str(edf_dir)!r}, "--xml-dir", {str(xml_dir)!r}, "--out-dir", {str(out)!r},
                  "--windows-per-subject", "{W}", "--workers", "1"]))
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                          start_new_session=True)
    assert proc.returncode == -9, proc.stderr


@pytest.mark.parametrize("kill_at", ["processing", "assembly"])
def test_resume_after_kill_gives_identical_outputs(tmp_path, kill_at, capsys):
    ids = ["0004", "0006", "0009"]
    edf_dir, xml_dir = make_cohort(tmp_path / "raw", ids, minutes=10)
    assert run_cli(edf_dir, xml_dir, tmp_path / "clean") == 0
    out = tmp_path / "resumed"
    _killed_run(edf_dir, xml_dir, out, kill_at)
    for name in (ex.PPG_FILE, ex.ECG_FILE, ex.INDEX_FILE, ex.MANIFEST_FILE):
        assert not (out / name).exists()  # no half-written file under a final name
    parts = sorted(p.stem for p in (out / ex.PARTS_DIR).glob("*.npz"))
    assert parts == (ids[:1] if kill_at == "processing" else ids)
    capsys.readouterr()
    assert run_cli(edf_dir, xml_dir, out) == 0
    assert f"({len(parts)} reused)" in capsys.readouterr().out
    assert dataset_contents(out) == dataset_contents(tmp_path / "clean")
    assert not list(out.glob(".*.tmp"))


def test_crash_in_assembly_keeps_old_outputs_untouched(tmp_path, monkeypatch, capsys):
    ids = ["0004", "0006"]
    edf_dir, xml_dir = make_cohort(tmp_path / "raw", ids, minutes=6)
    out = tmp_path / "out"
    assert run_cli(edf_dir, xml_dir, out) == 0
    before = dataset_contents(out)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sleepppg.assembly, "assemble", boom)  # Ctrl-C while the HDF5 files are written
    capsys.readouterr()
    assert run_cli(edf_dir, xml_dir, out, "--overwrite", "--keep-parts") == 130
    assert "interrupted: finished subjects are kept" in capsys.readouterr().err
    assert dataset_contents(out) == before
    assert not (out / ex.MANIFEST_FILE).exists()  # so the next run does not call the outputs up to date
    monkeypatch.undo()
    assert run_cli(edf_dir, xml_dir, out) == 0
    assert dataset_contents(out) == before


def test_bad_setup_exits_2(tmp_path, capsys):
    edf_dir, xml_dir = make_cohort(tmp_path / "raw", ["0001"], minutes=2)
    assert run_cli(tmp_path / "missing", xml_dir, tmp_path / "o") == 2
    assert "not a folder" in capsys.readouterr().err
    not_a_dir = tmp_path / "file.txt"
    not_a_dir.write_text("x")
    assert run_cli(edf_dir, xml_dir, not_a_dir / "out") == 2
    assert "not writable" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli(empty, empty, tmp_path / "o") == 2
    assert "no EDF/XML pairs" in capsys.readouterr().err
    assert run_cli(edf_dir, xml_dir, tmp_path / "o", "--subjects", "9999") == 2
    bad_cfg = tmp_path / "bad.yaml"
    demo_text = (REPO / "configs" / "config_demo.yaml").read_text()
    bad_cfg.write_text(demo_text.replace("\n  workers: 0", "\n  workers: many"))
    assert ex.main(["--config", str(bad_cfg)]) == 2
    assert "preprocessing.workers" in capsys.readouterr().err


def test_folder_flags_of_the_other_format_are_refused_by_name_and_nothing_is_written(tmp_path, capsys):
    edf_dir, xml_dir = make_cohort(tmp_path / "raw", ["0001"], minutes=2)
    out = tmp_path / "o"
    assert run_cli(edf_dir, xml_dir, out, "--csv-dir", str(tmp_path)) == 2
    assert "--csv-dir applies to --format dreamt only" in capsys.readouterr().err
    assert ex.main(["--format", "dreamt", "--csv-dir", str(tmp_path), "--edf-dir", str(edf_dir),
                    "--out-dir", str(out)]) == 2
    assert "--edf-dir applies to --format edf only" in capsys.readouterr().err
    assert not out.exists()


def test_a_zero_windows_per_subject_or_a_negative_limit_is_refused_not_replaced(tmp_path, capsys):
    edf_dir, xml_dir = make_cohort(tmp_path / "raw", ["0001"], minutes=2)
    for flag, value in (("--windows-per-subject", "0"), ("--limit", "-3"), ("--limit", "0")):
        with pytest.raises(SystemExit) as stop:
            run_cli(edf_dir, xml_dir, tmp_path / "o", flag, value)
        assert stop.value.code == 2 and f"argument {flag}: must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("record_s", [1e-6, 1e6])
def test_a_record_duration_that_makes_the_rate_absurd_is_a_header_error(tmp_path, record_s):
    path = write_raw_edf(tmp_path / "a.edf", channels_for_raw_edf(seconds=4), record_s=record_s)
    with pytest.raises(BadRecordingError, match="record duration .* rate .* Hz") as err, path.open("rb") as fh:
        read_edf_header(fh, path, path.stat().st_size)
    assert err.value.kind == "bad_edf_header"


def test_config_paths_and_cli_subprocess(tmp_path):
    """--config supplies paths and settings; the script runs as a command and exits 0."""
    import yaml

    edf_dir, xml_dir = make_cohort(tmp_path / "raw", ["0001", "0002"], minutes=3)
    cfg = yaml.safe_load((REPO / "configs" / "config_demo.yaml").read_text())
    cfg["preprocessing"].update(edf_dir=str(edf_dir), xml_dir=str(xml_dir), out_dir=str(tmp_path / "x"),
                                workers=1, compression="lzf", chunk_windows=16, resample_method="polyphase")
    cfg["data"]["windows_per_subject"] = 12
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "extract_mesa_data.py", "--config", str(tmp_path / "c.yaml")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(tmp_path / "x" / ex.PPG_FILE) as f:
        assert f["ppg"].shape == (24, 1024) and f["ppg"].chunks == (16, 1024) and f["ppg"].compression == "lzf"
        assert f.attrs["resample_method"] == "polyphase" and f.attrs["windows_per_subject"] == 12
    assert os.stat(tmp_path / "x" / ex.PPG_FILE).st_size > 0


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        kids += [int(c) for c in task.read_text().split()]
    return kids


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_kill_9_of_the_main_process_takes_the_workers_with_it(tmp_path):
    import signal
    import time

    edf_dir, xml_dir = make_cohort(tmp_path / "raw", ["0001", "0002", "0003", "0004"], minutes=30)
    proc = subprocess.Popen([sys.executable, "extract_mesa_data.py", "--edf-dir", str(edf_dir), "--xml-dir",
                             str(xml_dir), "--out-dir", str(tmp_path / "out"), "--workers", "2"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    workers: list[int] = []
    while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        workers = _children(proc.pid)
    assert len(workers) >= 2, "the workers never started"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = [w for w in workers if _alive(w)]
    assert not alive, f"workers {alive} outlived the killed main process"


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped counts as dead)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_one_preprocessing_version_and_signature_for_parts_and_inference_cache(tmp_path, monkeypatch):
    import sleepppg.cache as inference_cache

    assert inference_cache.preprocessing_settings is preprocessing_settings
    assert inference_cache.file_signature is file_signature
    edf = write_edf(tmp_path / "a.edf", 1)
    settings = preprocessing_settings("linear", ["Pleth"], 4)
    assert settings["version"] == PREPROCESSING_VERSION
    signature = input_signature(settings, edf)
    assert signature == input_signature(preprocessing_settings("linear", ["pleth"], 4), edf)
    assert signature != input_signature(preprocessing_settings("polyphase", ["pleth"], 4), edf)
    os.utime(edf, ns=(10**9, 10**9))  # a touched file counts as changed
    assert input_signature(settings, edf) != signature
    signature = input_signature(settings, edf)
    monkeypatch.setattr(sleepppg.preprocessing, "PREPROCESSING_VERSION", PREPROCESSING_VERSION + 1)
    assert input_signature(preprocessing_settings("linear", ["Pleth"], 4), edf) != signature
    assert file_signature(tmp_path / "absent.edf") is None and file_signature(None) is None


# ----------------------------------------------------------------------------------------------------------
# Our EDF reader: equal to mne, and hostile headers and bodies


def test_edf_reader_equals_mne_for_every_channel(tmp_path):
    """Our reader gives mne's values (float precision) for each channel of an edfio-written EDF with mixed rates."""
    import mne

    edf = write_edf(tmp_path / "a.edf", minutes=2)
    with open(edf, "rb") as fh:
        header = read_edf_header(fh, edf, edf.stat().st_size)
        digital = _read_digital(fh, header, list(range(len(header.signals))))
    assert header.labels == ["EKG", "Pleth", "Thor", "SpO2"] and header.n_records == 120 and not header.warnings
    assert [s.fs for s in header.signals] == [256.0, 256.0, 32.0, 1.0]
    for signal, values in zip(header.signals, digital):
        raw = mne.io.read_raw_edf(edf, include=[signal.label], preload=True, verbose="error")
        ours = to_physical(values, signal)
        assert float(raw.info["sfreq"]) == signal.fs
        np.testing.assert_allclose(ours, raw.get_data()[0], rtol=1e-12, atol=1e-12 * np.abs(ours).max())
    rec = read_edf(edf)
    assert rec["ppg_channel"] == "Pleth" and rec["ecg_channel"] == "EKG" and rec["duration_s"] == 120.0
    assert rec["ppg"].dtype == np.float64 and rec["warnings"] == []


def test_bdf_and_hand_written_edf_equal_mne(tmp_path):
    import mne

    for bdf in (False, True):
        path = write_raw_edf(tmp_path / ("a.bdf" if bdf else "a.edf"), channels_for_raw_edf(bdf=bdf), bdf=bdf)
        rec = read_edf(path)
        reader = mne.io.read_raw_bdf if bdf else mne.io.read_raw_edf
        for channel, key in (("Pleth", "ppg"), ("EKG", "ecg")):
            expected = reader(path, include=[channel], preload=True, verbose="error").get_data()[0]
            np.testing.assert_allclose(rec[key], expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())
        # the spec's formula, sample by sample, on the stored integers
        c = channels_for_raw_edf(bdf=bdf)[1]
        slow = [c["pmin"] + (d - c["dmin"]) * (c["pmax"] - c["pmin"]) / (c["dmax"] - c["dmin"])
                for d in c["digital"][:50]]
        np.testing.assert_allclose(rec["ppg"][:50], slow, rtol=1e-13)


def _read(path: Path) -> dict:
    return read_edf(path)


NS = 3  # signals in channels_for_raw_edf(): EKG, Pleth, SpO2


@pytest.mark.parametrize("field, value, signal, kind", [
    ("n_signals", "0", None, "bad_edf_header"),
    ("n_signals", "x1", None, "bad_edf_header"),
    ("n_signals", "999", None, "bad_edf_header"),  # header size then disagrees
    ("header_bytes", "2048", None, "bad_edf_header"),
    ("header_bytes", "abc", None, "bad_edf_header"),
    ("record_s", "0", None, "bad_edf_header"),
    ("record_s", "-1", None, "bad_edf_header"),
    ("record_s", "inf", None, "bad_edf_header"),
    ("record_s", "nan", None, "bad_edf_header"),
    ("record_s", "one", None, "bad_edf_header"),
    ("record_s", "1e-300", None, "bad_edf_header"),  # a rate beyond any recorder
    ("n_records", "many", None, "bad_edf_header"),
    ("n_records", "0", None, "bad_edf_header"),
    ("n_records", "500", None, "truncated_edf"),  # more than the file holds
    ("version", "9", None, "unreadable_edf"),
    ("samples_per_record", "0", 1, "bad_edf_header"),
    ("samples_per_record", "x", 1, "bad_edf_header"),
    ("samples_per_record", "-256", 1, "bad_edf_header"),
    ("digital_min", "32767", 1, "bad_edf_header"),  # = digital max
    ("physical_min", "100", 1, "bad_edf_header"),  # = physical max
    ("physical_max", "nan", 1, "bad_edf_header"),
    ("digital_max", "high", 1, "bad_edf_header"),
])
def test_absurd_header_fields_make_a_bad_subject(tmp_path, field, value, signal, kind):
    data = write_raw_edf(tmp_path / "ok.edf", channels_for_raw_edf()).read_bytes()
    path = tmp_path / "bad.edf"
    path.write_bytes(set_field(data, NS, field, value, signal))
    with pytest.raises(BadRecordingError) as info:
        preprocess_recording(path, n_windows=8)
    assert info.value.kind == kind and str(info.value) and "bad.edf" in str(info.value)


def test_header_problems_on_unused_channels_only_warn_or_pass(tmp_path):
    data = write_raw_edf(tmp_path / "ok.edf", channels_for_raw_edf()).read_bytes()
    good = preprocess_recording(tmp_path / "ok.edf", n_windows=8)
    assert good["has_ecg"] and good["warnings"] == []
    path = tmp_path / "b.edf"
    path.write_bytes(set_field(set_field(data, NS, "digital_min", "1000", 2), NS, "physical_max", "zz", 2))  # SpO2
    np.testing.assert_array_equal(preprocess_recording(path, n_windows=8)["ppg_windows"], good["ppg_windows"])
    path.write_bytes(set_field(data, NS, "digital_max", "-32768", 0))  # the ECG has no scale: dropped, not fatal
    rec = preprocess_recording(path, n_windows=8)
    assert not rec["has_ecg"] and any("ECG not used" in w and "'EKG'" in w for w in rec["warnings"])
    np.testing.assert_array_equal(rec["ppg_windows"], good["ppg_windows"])


def test_record_count_and_trailing_bytes(tmp_path):
    """Trailing garbage is never read as signal; -1 (unknown) uses the complete records the file holds."""
    path = write_raw_edf(tmp_path / "ok.edf", channels_for_raw_edf())
    data, good = path.read_bytes(), read_edf(path)
    record_bytes = (256 + 256 + 1) * 2
    cases = {
        "garbage.edf": (data + b"\x7f\xff" * 700, "bytes after the 120 declared data records are ignored", 120),
        "unknown.edf": (set_field(data, NS, "n_records", "-1"), "reading the 120 complete records", 120),
        "unknown_partial.edf": (set_field(data, NS, "n_records", "-1") + b"\x01" * 100, "partial record", 120),
        "fewer.edf": (set_field(data, NS, "n_records", "100"), "bytes after the 100 declared", 100),
    }
    for name, (content, warning, n_records) in cases.items():
        (tmp_path / name).write_bytes(content)
        rec = read_edf(tmp_path / name)
        assert any(warning in w for w in rec["warnings"]), (name, rec["warnings"])
        np.testing.assert_array_equal(rec["ppg"], good["ppg"][:n_records * 256])
        assert rec["duration_s"] == n_records
    (tmp_path / "short.edf").write_bytes(data[:-record_bytes // 2])  # half a record missing: truncated download
    with pytest.raises(BadRecordingError) as info:
        read_edf(tmp_path / "short.edf")
    assert info.value.kind == "truncated_edf" and "119 complete data records" in str(info.value)
    for size in (0, 100, 300):  # shorter than the headers
        (tmp_path / "tiny.edf").write_bytes(data[:size])
        with pytest.raises(BadRecordingError) as info:
            read_edf(tmp_path / "tiny.edf")
        assert info.value.kind == "truncated_edf"


def test_labels_differing_only_in_case_or_padding(tmp_path):
    channels = channels_for_raw_edf()
    second = dict(channels[1], label="PLETH", digital=channels[1]["digital"] // 2)
    path = write_raw_edf(tmp_path / "dup.edf", channels + [second])
    raw = path.read_bytes()
    path.write_bytes(set_field(raw, 4, "label", b"PLETH\x00\x00 ", 3))  # NUL padding, other case
    rec = read_edf(path)
    assert rec["ppg_channel"] == "Pleth"
    np.testing.assert_array_equal(rec["ppg"], read_edf(write_raw_edf(tmp_path / "one.edf", channels))["ppg"])
    assert any("both labelled 'PLETH'" in w for w in rec["warnings"])


def test_saturated_ppg_is_kept_with_a_warning(tmp_path):
    channels = channels_for_raw_edf()
    digital = channels[1]["digital"].copy()
    digital[: digital.size // 5] = 32767  # 20% at the digital max
    digital[digital.size // 5: digital.size // 5 + 2000] = -32768  # dropout markers
    channels[1] = dict(channels[1], digital=digital)
    rec = preprocess_recording(write_raw_edf(tmp_path / "sat.edf", channels), n_windows=8)
    assert any("PPG 'Pleth' sits at its digital limits" in w and "27%" in w for w in rec["warnings"])


# ----------------------------------------------------------------------------------------------------------
# Hostile inputs through the whole run: XML, permissions, damaged parts and manifest, full disk, Ctrl-C


def deny_read(monkeypatch, *paths: Path) -> None:
    """Make `paths` unreadable to extraction: chmod 000, or (as root, who reads anything) a refused open."""
    if os.geteuid() != 0:
        for path in paths:
            path.chmod(0)
        return
    import builtins

    real_open = builtins.open

    def refusing_open(file, *args, **kwargs):
        if Path(file) in paths:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    for reader in (sleepppg.edf, sleepppg.annotations):  # the readers' module-level `open` before the builtin
        monkeypatch.setattr(reader, "open", refusing_open, raising=False)


def test_xml_problems_and_unreadable_files_are_bad_subjects_with_their_own_path(tmp_path, monkeypatch):
    ids = ["0001", "0002", "0003", "0004", "0005", "0006"]
    edf_dir, xml_dir = make_cohort(tmp_path / "raw", ids, minutes=6)
    write_xml(xml_dir / "mesa-sleep-0002-nsrr.xml", [("Wake|0", 900, 300), ("REM sleep|5", 1200, 600)])  # after
    write_xml(xml_dir / "mesa-sleep-0003-nsrr.xml", [("Stage 2 sleep|2", 0, 3 * 3600)])  # 3 h of stages, 6-min EDF
    write_xml(xml_dir / "mesa-sleep-0006-nsrr.xml", [("Wake|0", 1e308, 1e308), ("Wake|0", float("nan"), 30),
                                                     ("Wake|0", 0, 360)])  # absurd times are skipped
    deny_read(monkeypatch, xml_dir / "mesa-sleep-0004-nsrr.xml", edf_dir / "mesa-sleep-0005.edf")
    out = tmp_path / "out"
    assert run_cli(edf_dir, xml_dir, out) == 1
    failed = {item["id"]: item for item in json.loads((out / ex.FAILED_FILE).read_text())}
    assert {sid: item["kind"] for sid, item in failed.items()} == {
        "0002": "no_scored_epochs", "0004": "unreadable_xml", "0005": "unreadable_edf"}
    assert failed["0004"]["file"] == str(xml_dir / "mesa-sleep-0004-nsrr.xml")
    assert "no permission" in failed["0004"]["reason"] and "mesa-sleep-0004-nsrr.xml" in failed["0004"]["reason"]
    assert failed["0005"]["file"] == str(edf_dir / "mesa-sleep-0005.edf")
    assert "stages span 0.25-0.50 h" in failed["0002"]["reason"]
    assert all(item["reason"].strip() for item in failed.values())  # no empty reason
    warnings = json.loads((out / ex.WARNINGS_FILE).read_text())
    assert [(w["id"], w["warning"]) for w in warnings] == [
        ("0003", "the XML's stages end at 3.00 h but the EDF lasts 0.10 h")]
    with h5py.File(out / ex.INDEX_FILE) as f:
        assert sorted(f["subjects"]) == ["0001", "0003", "0006"]


def test_unreadable_input_folder_and_output_file_are_bad_setup(tmp_path, monkeypatch, capsys):
    edf_dir, xml_dir = make_cohort(tmp_path / "raw", ["0001"], minutes=2)
    out_file = tmp_path / "out.txt"
    out_file.write_text("x")
    assert run_cli(edf_dir, xml_dir, out_file) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: output folder {out_file} is a file, not a folder"
    real_access = os.access
    monkeypatch.setattr(ex.os, "access", lambda p, mode: Path(p) != edf_dir and real_access(p, mode))
    assert run_cli(edf_dir, xml_dir, tmp_path / "o") == 2
    assert "is not readable (permission denied)" in capsys.readouterr().err


def test_damaged_parts_and_manifest_are_rebuilt(tmp_path, capsys):
    ids = ["0004", "0006", "0009"]
    edf_dir, xml_dir = make_cohort(tmp_path / "raw", ids, minutes=5)
    assert run_cli(edf_dir, xml_dir, tmp_path / "clean") == 0
    out = tmp_path / "out"
    assert run_cli(edf_dir, xml_dir, out, "--keep-parts") == 0
    parts = {sid: out / ex.PARTS_DIR / f"{sid}.npz" for sid in ids}
    data = parts["0004"].read_bytes()
    parts["0004"].write_bytes(data[: len(data) // 2])  # truncated
    data = bytearray(parts["0006"].read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the PPG: only the CRC-32 can tell (same size)
    parts["0006"].write_bytes(bytes(data))
    (out / ex.MANIFEST_FILE).write_text('{"key": {"settin')  # truncated manifest
    capsys.readouterr()
    assert run_cli(edf_dir, xml_dir, out, "--keep-parts") == 0
    assert "(1 reused)" in capsys.readouterr().out  # 0009 reused; 0004 and 0006 rebuilt
    assert dataset_contents(out) == dataset_contents(tmp_path / "clean")
    for sid in ids:
        read_part(parts[sid], W)  # all intact again


def test_each_subject_records_its_signal_quality_and_a_warning_where_it_is_no_ppg(tmp_path, capsys):
    """The synthetic cohort's EKG in the channel taken for the PPG: subject_quality.json holds every subject's
    figures, subject_warnings.json says that one does not look like a PPG; a part reused from a run whose meta
    has no figures gets them from its windows."""
    import edfio

    edf_dir, xml_dir = make_cohort(tmp_path / "raw", ["0001", "0002"], minutes=6)
    _, ecg, _ = synthetic_night(6)
    edfio.Edf([edfio.EdfSignal(ecg, 256, label="Pleth", physical_range=(-5, 5)),
               edfio.EdfSignal(np.full(360, 95.0), 1, label="SpO2", physical_range=(0, 100))]).write(
        edf_dir / "mesa-sleep-0002.edf")
    out = tmp_path / "out"
    assert run_cli(edf_dir, xml_dir, out, "--keep-parts") == 0
    quality = {q["id"]: q for q in json.loads((out / ex.QUALITY_FILE).read_text())}
    assert sorted(quality) == ["0001", "0002"] and quality["0002"]["file"] == str(edf_dir / "mesa-sleep-0002.edf")
    assert quality["0001"]["pulse_share"] >= 0.9 and quality["0001"]["flat_share"] == 0
    assert quality["0002"]["pulse_share"] <= 0.1 and quality["0002"]["ecg_like_share"] >= 0.5
    warnings = json.loads((out / ex.WARNINGS_FILE).read_text())
    assert [w["id"] for w in warnings] == ["0002"] and "does not look like a PPG" in warnings[0]["warning"]
    assert "ECG" in warnings[0]["warning"]
    with h5py.File(out / ex.PPG_FILE) as f:  # the processed files keep their datasets
        assert sorted(f) == ["labels", "ppg", "subject_ids"]

    part = out / ex.PARTS_DIR / "0002.npz"
    meta, arrays = read_part(part, W)
    write_part(part, arrays, {k: v for k, v in meta.items() if k not in ("signal_quality", "gap_epochs")}
               | {"warnings": []})  # as a part written without the figures
    (out / ex.MANIFEST_FILE).unlink()
    capsys.readouterr()
    assert run_cli(edf_dir, xml_dir, out) == 0
    assert "(2 reused)" in capsys.readouterr().out
    assert {q["id"]: q for q in json.loads((out / ex.QUALITY_FILE).read_text())} == quality
    assert json.loads((out / ex.WARNINGS_FILE).read_text()) == warnings


def test_ctrl_c_exits_130_and_keeps_finished_subjects(tmp_path, monkeypatch, capsys):
    ids = ["0001", "0002", "0003"]
    edf_dir, xml_dir = make_cohort(tmp_path / "raw", ids, minutes=3)
    monkeypatch.setattr(sleepppg.extraction, "process_subject",
                        interrupted_on_call(sleepppg.extraction.process_subject, 2))  # on the second subject
    out = tmp_path / "out"
    assert run_cli(edf_dir, xml_dir, out) == 130
    assert "interrupted: finished subjects are kept" in capsys.readouterr().err
    assert sorted(p.stem for p in (out / ex.PARTS_DIR).glob("*.npz")) == ["0001"]
    monkeypatch.undo()
    assert run_cli(edf_dir, xml_dir, out) == 0
    assert "(1 reused)" in capsys.readouterr().out


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True,
                   capture_output=True)


def _tmpfs_available(tmp_path: Path) -> str | None:
    """None when a tmpfs can be mounted here, else the reason (the full-disk test is then skipped)."""
    if os.geteuid() != 0:
        return "mounting a small tmpfs needs root"
    probe = tmp_path / "probe"
    try:
        _mount_tmpfs(probe, "64k")
    except (OSError, subprocess.CalledProcessError) as err:
        return f"cannot mount a tmpfs here: {getattr(err, 'stderr', b'') or err}"
    subprocess.run(["umount", str(probe)], check=True)
    return None


@pytest.mark.parametrize("size_kb, stage", [(500, "per-subject step"), (1500, "assembly")])
def test_full_disk_stops_with_one_line_and_a_rerun_completes_identically(tmp_path, capsys, size_kb, stage):
    reason = _tmpfs_available(tmp_path)
    if reason:
        pytest.skip(reason)
    ids = ["0001", "0002", "0003"]
    edf_dir, xml_dir = make_cohort(tmp_path / "raw", ids, minutes=5)
    assert run_cli(edf_dir, xml_dir, tmp_path / "clean") == 0
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, f"{size_kb}k")  # parts are ~330 kB each, the HDF5 files ~1 MB together
    try:
        out = disk / "out"
        capsys.readouterr()
        assert run_cli(edf_dir, xml_dir, out) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        last = err.strip().splitlines()[-1]  # the lines before are the log and the progress bar
        assert last.startswith("error: disk full while writing ") and last.endswith("GB and run the same command again")
        written = str(out / ex.PARTS_DIR) if stage == "per-subject step" else str(out / ex.PPG_FILE)
        assert written in last, last
        assert not list(out.glob(".*.tmp")) and not list((out / ex.PARTS_DIR).glob(".*.tmp"))
        subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
        assert run_cli(edf_dir, xml_dir, out) == 0
        for name in (ex.PPG_FILE, ex.ECG_FILE, ex.INDEX_FILE):
            assert (out / name).read_bytes() == (tmp_path / "clean" / name).read_bytes()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fail_first_sleep_others(job: dict) -> dict:
    """Stand-in for a worker's job: the first subject fails at once, the others would take a minute."""
    import time

    if job["fail"]:
        raise RuntimeError(f"subject {job['id']} is broken")
    time.sleep(60)
    return {}


def test_an_error_stops_the_worker_processes_at_once():
    """With several workers, an error that escapes a job (as a full disk does) or Ctrl-C in the main process
    terminates the workers instead of leaving them to finish their subjects while the run has already stopped."""
    import multiprocessing
    import time

    jobs = [{"id": "0001", "fail": True}] + [{"id": f"000{i}", "fail": False} for i in (2, 3, 4)]
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="subject 0001 is broken"):
        run_jobs(_fail_first_sleep_others, jobs, 2, worker_died)
    while multiprocessing.active_children() and time.monotonic() - start < 20:
        time.sleep(0.1)
    assert not multiprocessing.active_children()  # both workers are gone, long before their 60-s jobs end
    assert time.monotonic() - start < 20


def test_a_worker_killed_by_a_signal_costs_only_its_subject(tmp_path, monkeypatch, capsys):
    """A worker process killed while it preprocesses one subject (SIGKILL, as the out-of-memory killer sends)
    breaks the pool for every pending subject: that subject is listed with the signal, the others go on in a
    new pool and are written as in a run without it."""
    import signal

    ids = ["0001", "0002", "0003", "0004"]
    edf_dir, xml_dir = make_cohort(tmp_path / "raw", ids, minutes=3)
    assert run_cli(edf_dir, xml_dir, tmp_path / "clean", "--subjects", "0001,0002,0004") == 0
    real, main_pid = preprocess_recording, os.getpid()

    def killed_on_0003(edf, *args, **kwargs):  # inherited by the forked workers
        if "0003" in Path(edf).name and os.getpid() != main_pid:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(edf, *args, **kwargs)

    monkeypatch.setattr(sleepppg.extraction, "preprocess_recording", killed_on_0003)
    out = tmp_path / "out"
    capsys.readouterr()
    assert run_cli(edf_dir, xml_dir, out, "--workers", "2") == 1
    failed = json.loads((out / ex.FAILED_FILE).read_text())
    assert [(f["id"], f["kind"], f["file"]) for f in failed] == [
        ("0003", "worker_killed", str(edf_dir / "mesa-sleep-0003.edf"))]
    assert "killed by signal SIGKILL (9)" in failed[0]["reason"]
    assert "1 failed (worker_killed: 1" in capsys.readouterr().out
    assert "subject 0003 skipped (worker_killed)" in (out / "logs" / "processing.log").read_text()
    with h5py.File(out / ex.INDEX_FILE) as f:
        assert sorted(f["subjects"]) == ["0001", "0002", "0004"]
    assert dataset_contents(out) == dataset_contents(tmp_path / "clean")


def test_an_unforeseen_error_costs_only_its_subject(tmp_path, monkeypatch, capsys):
    """Bad data never stops the run, even data that breaks the code in a way nobody foresaw (here running out
    of memory on one subject): it is counted with its error and the other subjects are written."""
    ids = ["0001", "0002"]
    edf_dir, xml_dir = make_cohort(tmp_path / "raw", ids, minutes=3)
    real = preprocess_recording

    def out_of_memory_on_0002(edf, *args, **kwargs):
        if "0002" in Path(edf).name:
            raise MemoryError("Unable to allocate 4.55 PiB")
        return real(edf, *args, **kwargs)

    monkeypatch.setattr(sleepppg.extraction, "preprocess_recording", out_of_memory_on_0002)
    out = tmp_path / "out"
    assert run_cli(edf_dir, xml_dir, out) == 1
    failed = json.loads((out / "failed_subjects.json").read_text())
    assert [(f["id"], f["kind"], f["reason"]) for f in failed] == [
        ("0002", "unexpected_error", "MemoryError: Unable to allocate 4.55 PiB")]
    with h5py.File(out / ex.INDEX_FILE) as f:
        assert sorted(f["subjects"]) == ["0001"]


def test_damaged_final_files_are_never_up_to_date(tmp_path, capsys, caplog):
    """The manifest records each HDF5 file's size, mtime and dataset shapes: a truncated PPG file, or one
    rewritten in place, is written again (from the kept parts, or preprocessed again) and the run says why."""
    ids = ["0003", "0008"]
    edf_dir, xml_dir = make_cohort(tmp_path / "raw", ids, minutes=4)
    out = tmp_path / "out"
    assert run_cli(edf_dir, xml_dir, out, "--keep-parts") == 0
    clean = dataset_contents(out)
    recorded = json.loads((out / ex.MANIFEST_FILE).read_text())["outputs"]
    assert recorded[ex.PPG_FILE]["shapes"]["ppg"] == [2 * W, 1024] and set(recorded) == {
        ex.PPG_FILE, ex.ECG_FILE, ex.INDEX_FILE}
    ppg = out / ex.PPG_FILE
    ppg.write_bytes(ppg.read_bytes()[:-4096])  # truncated
    capsys.readouterr()
    caplog.clear()
    assert run_cli(edf_dir, xml_dir, out, "--keep-parts") == 0
    assert "up to date" not in capsys.readouterr().out
    assert f"{ex.PPG_FILE} holds" in caplog.text and "extraction wrote" in caplog.text
    assert dataset_contents(out) == clean
    with h5py.File(ppg, "r+") as f:  # rewritten in place, same size and shapes
        f["ppg"][0] *= 250
    caplog.clear()
    assert run_cli(edf_dir, xml_dir, out) == 0  # parts removed at the end of this run
    assert f"{ex.PPG_FILE} was modified after extraction wrote it" in caplog.text
    assert dataset_contents(out) == clean
    capsys.readouterr()
    assert run_cli(edf_dir, xml_dir, out) == 0
    assert "up to date" in capsys.readouterr().out
    # a manifest without the record (an older run): readable files of the manifest's size are up to date,
    # unreadable ones are not, even without parts (every subject is preprocessed again)
    manifest = json.loads((out / ex.MANIFEST_FILE).read_text())
    del manifest["outputs"]
    (out / ex.MANIFEST_FILE).write_text(json.dumps(manifest))
    assert run_cli(edf_dir, xml_dir, out) == 0
    assert "up to date" in capsys.readouterr().out
    (out / ex.INDEX_FILE).write_bytes(b"not hdf5")
    caplog.clear()
    assert run_cli(edf_dir, xml_dir, out) == 0
    assert f"{ex.INDEX_FILE} cannot be read" in caplog.text and "(0 reused)" in capsys.readouterr().out
    assert dataset_contents(out) == clean
