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


def test_values_per_night_agree_with_numpy(tmp_path):
    """The blockwise per-subject statistics equal numpy's over each night's rows with signal, and a sample of
    scored rows lands near them."""
    from sleepppg.processed_values import sample_values, scan_values

    paths = write_processed(tmp_path, n_subjects=4, windows_per_subject=W, n_test=1)
    with h5py.File(paths["ppg"], "r") as f:
        ppg, labels, sids = f["ppg"][()], f["labels"][()], f["subject_ids"][()]
        subjects, inverse = np.unique(sids, return_inverse=True)
        scanned = scan_values(f["ppg"], inverse, subjects.size, block=7)  # blocks that straddle nights
        sampled = sample_values(f["ppg"], inverse, subjects.size, labels, per_subject=8)
    for i in range(subjects.size):
        night = ppg[inverse == i]
        with_signal = night[np.any(night != 0, axis=1)]
        n = with_signal.size
        assert scanned.rows_with_signal[i] == len(with_signal)
        np.testing.assert_allclose(scanned.sum_S[i] / n, with_signal.mean(dtype=np.float64), atol=1e-9)
        np.testing.assert_allclose(scanned.sumsq_S[i] / n, (with_signal.astype(np.float64) ** 2).mean())
        assert sampled.rows_with_signal[i] == 8
        np.testing.assert_allclose(np.sqrt(sampled.sumsq_S[i] / (8 * SAMPLES_PER_WINDOW)), with_signal.std(),
                                   rtol=0.1)
    assert scanned.not_z_scored(SAMPLES_PER_WINDOW) == sampled.not_z_scored(SAMPLES_PER_WINDOW) == []


@pytest.mark.parametrize("damage, detail", [
    (lambda night: night * 250, r"ppg values z-scored in every night \(sampled rows of each night\) \(1 subjects "
                                r"not as extraction writes them .*: {sid} mean \S+, SD \d\d\d\)"),
    (lambda night: np.full_like(night, -1.5), r"{sid} constant \(SD 0, every value -1.5\)"),
    (lambda night: np.zeros_like(night), r"every subject has non-zero PPG \(sampled rows of each night\) \(1 "
                                         r"subjects whose PPG is all zeros: \['{sid}'\]\)"),
    (lambda night: night + 3, r"{sid} mean 3\.\d+, SD 0\.\d+"),
])
def test_a_reader_is_refused_nights_extraction_cannot_write(tmp_path, damage, detail):
    """require_valid (training's pre-flight) reads a sample of each night's rows and refuses a rescaled,
    constant, all-zero or offset night, naming the subject."""
    paths = write_processed(tmp_path, n_subjects=4, windows_per_subject=W, n_test=1)
    sid = paths["subjects"][2]
    with h5py.File(paths["ppg"], "r+") as f:
        rows = slice(2 * W, 3 * W)
        f["ppg"][rows] = damage(f["ppg"][rows])
    with pytest.raises(ProcessedFilesError, match=detail.format(sid=sid)) as info:
        require_valid(paths["ppg"], None, paths["index"], W)
    assert len(info.value.report.failed) == 1


def test_a_night_without_signal_where_sampled_is_read_in_full(tmp_path):
    """A night whose sampled (scored) rows are zero but which holds signal elsewhere is not called all-zero:
    its other rows are read."""
    from sleepppg.processed_values import sample_values

    paths = write_processed(tmp_path, n_subjects=2, windows_per_subject=W, n_test=1)
    with h5py.File(paths["ppg"], "r+") as f:
        labels, sids = f["labels"][()], f["subject_ids"][()]
        first = slice(0, W)
        scored = np.flatnonzero(labels[first] != -1)
        f["ppg"][scored] = np.zeros((scored.size, SAMPLES_PER_WINDOW), np.float32)  # scored rows silent
        f["ppg"][W - 1] = np.linspace(-1, 1, SAMPLES_PER_WINDOW)  # one unscored row with signal
        labels[W - 1] = -1
        f["labels"][...] = labels
        inverse = np.unique(sids, return_inverse=True)[1]
        values = sample_values(f["ppg"], inverse, 2, labels)
    assert values.silent().tolist() == [] and values.rows_with_signal[0] == 1
