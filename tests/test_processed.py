"""Tests for sleepppg.processed: what the writer (sleepppg.assembly) writes the validator passes; the validator
serves a program about to read the files (one clear error naming the check), and agrees with the dataset's own
checks."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
from helpers import W, write_processed

from multimodal_dataset_aligned import PPGOnlyDataset, make_split
from sleepppg import assembly, processed
from sleepppg.constants import ECG_FILE, INDEX_FILE, PPG_FILE, SAMPLES_PER_WINDOW
from sleepppg.processed import ProcessedFilesError, read_night_starts, require_valid, verify, verify_files


def _subject(has_ecg: bool, seed: int) -> tuple[dict, dict]:
    """(meta, arrays) of one subject, as the writer reads them."""
    rng = np.random.default_rng(seed)
    labels_W = rng.integers(-1, 4, W).astype(np.int64)
    arrays = {"ppg": rng.standard_normal((W, SAMPLES_PER_WINDOW)).astype(np.float32), "labels": labels_W}
    if has_ecg:
        arrays["ecg"] = rng.standard_normal((W, SAMPLES_PER_WINDOW)).astype(np.float32)
    return {"has_ecg": has_ecg, "n_recorded_windows": W - 2}, arrays


def test_what_the_writer_writes_passes_every_check(tmp_path):
    subjects = {"0001": _subject(True, 0), "0002": _subject(False, 1), "0010": _subject(True, 2)}
    stats = assembly.write_processed(tmp_path, sorted(subjects), subjects.__getitem__, W, "linear", 16)
    assembly.write_stats(tmp_path, stats)
    report = verify(tmp_path)  # windows per subject from the files' attr
    assert not report.failed, report.lines
    assert f"[PASS] {W} windows per subject: 3 subjects" in report.lines
    assert stats["total_windows"] == 3 * W and stats["windows_with_real_ecg"] == 2 * W
    with h5py.File(tmp_path / PPG_FILE) as f:
        np.testing.assert_array_equal(f["ppg"][W:2 * W], subjects["0002"][1]["ppg"])
    with h5py.File(tmp_path / ECG_FILE) as f:
        assert not f["ecg"][W:2 * W].any()  # the subject without ECG
    np.testing.assert_array_equal(read_night_starts(tmp_path / INDEX_FILE, ["0010", "0001"], W), [2 * W, 0])
    assert "Total windows: 120" in (tmp_path / "data_stats.txt").read_text()


def test_require_valid_returns_the_report_or_one_error(tmp_path):
    paths = write_processed(tmp_path, n_subjects=4, windows_per_subject=W, n_test=1, short_subjects=("9000",))
    report = require_valid(paths["ppg"], paths["ecg"], paths["index"], W)  # a short night is left out, not wrong
    assert any("1 of 4 subjects have other than 40 windows and are not used" in line for line in report.lines)
    assert "[PASS] ppg values z-scored in every night (sampled rows of each night)" in report.lines  # READABLE
    with pytest.raises(ProcessedFilesError, match=r"40 windows per subject \(4 subjects; wrong counts"):
        require_valid(paths["ppg"], paths["ecg"], paths["index"], W, processed.WRITTEN)
    assert not require_valid(paths["ppg"], None, paths["index"], W).failed  # PPG-only: no ECG checks
    with h5py.File(paths["ppg"], "r+") as f:
        f["labels"][5] = 7
    with h5py.File(paths["index"], "r+") as f:
        f["subjects"].move(paths["subjects"][0], "tmp")
        f["subjects"].move(paths["subjects"][1], paths["subjects"][0])
        f["subjects"].move("tmp", paths["subjects"][1])
    with pytest.raises(ProcessedFilesError) as info:
        require_valid(paths["ppg"], None, paths["index"], W)
    message = str(info.value)
    assert "labels within {-1, 0, 1, 2, 3} (unexpected values [7])" in message
    assert f"{paths['subjects'][0]}: window_indices point at other subjects' rows" in message
    assert info.value.report.failed == ["labels within {-1, 0, 1, 2, 3}", "index entries agree with the data"]


def test_missing_array_and_missing_file(tmp_path):
    paths = write_processed(tmp_path, n_subjects=3, windows_per_subject=W, n_test=1)
    with h5py.File(paths["ppg"], "r+") as f:
        del f["labels"]
    with pytest.raises(ProcessedFilesError, match=r"ppg file datasets \(missing \['labels'\]\)"):
        require_valid(paths["ppg"], paths["ecg"], paths["index"], W)
    report = verify_files(tmp_path / "absent.h5", None, paths["index"], W)
    assert report.failed == ["absent.h5 exists"]


def test_a_night_out_of_order_fails_the_validator_and_the_dataset_alike(tmp_path):
    paths = write_processed(tmp_path, n_subjects=4, windows_per_subject=W, n_test=1)
    sid = paths["subjects"][2]
    with h5py.File(paths["index"], "r+") as f:
        g = f["subjects"][sid]
        rows = g["window_indices"][()]
        del g["window_indices"]
        g["window_indices"] = rows[::-1]  # the same rows, not one increasing block
    report = verify(tmp_path, W)
    assert report.failed == ["index entries agree with the data"]
    assert f"{sid}: window_indices are not one contiguous block of rows" in report.problems[0]
    with pytest.raises(ValueError, match=f"subject {sid}.*contiguous"):
        read_night_starts(paths["index"], [sid], W)
    split = make_split(paths["index"], W, use_sleepppg_test_set=False)
    name = next(name for name in ("train", "val", "test") if sid in getattr(split, name))
    with pytest.raises(ValueError, match=f"subject {sid}.*contiguous"):
        PPGOnlyDataset(tmp_path, split=name, windows_per_subject=W, use_sleepppg_test_set=False)


def test_reference_dtypes_pass_for_a_reader_not_for_the_extractor_check(tmp_path):
    """The reference's files (float64 signals and labels, gzip) are readable; verify_mesa_outputs still holds
    our extractor to float32 and integer labels."""
    paths = write_processed(tmp_path, n_subjects=3, windows_per_subject=W, n_test=1)
    with h5py.File(paths["ppg"], "r+") as f:
        ppg, labels = f["ppg"][()], f["labels"][()]
        del f["ppg"], f["labels"]
        f.create_dataset("ppg", data=ppg.astype(np.float64), compression="gzip")
        f["labels"] = labels.astype(np.float64)
    report = require_valid(paths["ppg"], None, paths["index"], W)
    assert "[PASS] ppg dtype float32 or float64: float64" in report.lines
    assert verify(tmp_path, W).failed == ["ppg dtype float32", "labels are integers"]
    with h5py.File(paths["ppg"], "r+") as f:
        f["labels"][3] = 0.5
    with pytest.raises(ProcessedFilesError, match="labels are integers"):
        require_valid(paths["ppg"], None, paths["index"], W)
