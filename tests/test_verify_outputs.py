"""Tests for verify_mesa_outputs.py: passes on real extractor output and on the processed fixture; fails,
naming the check, on each kind of corruption."""
from __future__ import annotations

import re

import h5py
import numpy as np
import pytest
from helpers import W, make_cohort, run_cli, write_processed

import verify_mesa_outputs as vo
from sleepppg.processed_values import high_frequency_share


def test_passes_on_extractor_output(tmp_path, capsys):
    edf_dir, xml_dir = make_cohort(tmp_path / "raw", ["0001", "0002"], minutes=8, no_ecg=("0002",))
    out = tmp_path / "out"
    assert run_cli(edf_dir, xml_dir, out) == 0
    capsys.readouterr()
    assert vo.main(["--base", str(out)]) == 0  # windows per subject taken from the files' attrs
    text = capsys.readouterr().out
    assert "all checks passed" in text and "[FAIL]" not in text
    assert "label distribution:" in text and "PPG power above 8 Hz" in text
    assert "WARNING" not in text  # the 8-Hz low-pass leaves (almost) nothing above 8 Hz
    assert vo.main(["--base", str(out), "--windows-per-subject", "1200"]) == 1
    assert "FAILED 1 check(s): 1200 windows per subject" in capsys.readouterr().out


def _corrupt_labels(paths):
    with h5py.File(paths["ppg"], "r+") as f:
        f["labels"][5] = 7


def _corrupt_ecg_labels(paths):
    with h5py.File(paths["ecg"], "r+") as f:
        f["labels"][0] = (f["labels"][0] + 1) % 4


def _nan_ppg(paths):
    with h5py.File(paths["ppg"], "r+") as f:
        f["ppg"][3, 10] = np.nan


def _drop_index_subject(paths):
    with h5py.File(paths["index"], "r+") as f:
        del f["subjects"][paths["subjects"][0]]


def _wrong_fs(paths):
    with h5py.File(paths["ppg"], "r+") as f:
        f.attrs["sampling_rate"] = 34.0


def _wrong_has_ecg(paths):
    with h5py.File(paths["ecg"], "r+") as f:
        f["has_real_ecg"][0] = False


def _missing_file(paths):
    import os

    os.remove(paths["ecg"])


def _row_listed_twice(paths):
    """One subject's last row listed twice in its own window_indices (n_windows updated to match)."""
    with h5py.File(paths["index"], "r+") as f:
        g = f["subjects"][paths["subjects"][0]]
        idx = np.append(g["window_indices"][()], g["window_indices"][-1])
        del g["window_indices"]
        g.create_dataset("window_indices", data=idx)
        g.attrs["n_windows"] = idx.size


@pytest.mark.parametrize("corrupt, failed_check", [
    (_corrupt_labels, "labels within {-1, 0, 1, 2, 3}"),
    (_row_listed_twice, "index covers every row exactly once"),
    (_corrupt_ecg_labels, "ecg labels equal ppg labels"),
    (_nan_ppg, "ppg values finite"),
    (_drop_index_subject, "index subjects = subjects in the data"),
    (_wrong_fs, "sampling_rate x 30 s = 1024"),
    (_wrong_has_ecg, "real_ecg_indices = rows with real ECG"),
    (_missing_file, "mesa_real_ecg.h5 exists"),
])
def test_fails_naming_the_problem(tmp_path, capsys, corrupt, failed_check):
    paths = write_processed(tmp_path, n_subjects=5, windows_per_subject=W, n_test=2)
    assert vo.main(["--base", str(tmp_path), "--windows-per-subject", str(W)]) == 0
    corrupt(paths)
    capsys.readouterr()
    assert vo.main(["--base", str(tmp_path), "--windows-per-subject", str(W)]) == 1
    out = capsys.readouterr().out
    assert f"[FAIL] {failed_check}" in out
    assert out.strip().splitlines()[-1].startswith("FAILED") and failed_check in out.strip().splitlines()[-1]


def test_short_subject_and_missing_folder(tmp_path, capsys):
    paths = write_processed(tmp_path, n_subjects=4, windows_per_subject=W, n_test=1, short_subjects=("9000",))
    assert vo.main(["--base", str(tmp_path), "--windows-per-subject", str(W)]) == 1
    assert "wrong counts (id, windows): [('9000', 39)]" in capsys.readouterr().out
    assert len(paths["subjects"]) == 4 and "9000" in paths["subjects"]  # the short night was written, and caught
    assert vo.main(["--base", str(tmp_path / "nope")]) == 2


def test_high_frequency_share():
    fs = 1024 / 30
    t = np.arange(1024) / fs
    low = np.tile(np.sin(2 * np.pi * 1.0 * t), (4, 1))
    high = np.tile(np.sin(2 * np.pi * 12.0 * t), (4, 1))
    assert high_frequency_share(low, fs) < 0.001
    assert high_frequency_share(high, fs) > 0.99
    assert np.isnan(high_frequency_share(np.zeros((3, 1024)), fs))


# ----------------------------------------------------------------------------------------------------------
# Damaged and suspicious files: each found and reported (exit 1), never a traceback


def _truncate_ppg(paths):
    from pathlib import Path

    path = Path(paths["ppg"])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _not_hdf5(paths):
    from pathlib import Path

    Path(paths["index"]).write_text("this is not an HDF5 file\n")


def _float_labels(paths):
    with h5py.File(paths["ppg"], "r+") as f:
        labels = f["labels"][()].astype(np.float64)
        labels[7] = 1.5
        del f["labels"]
        f["labels"] = labels


def _absurd_value(paths):
    with h5py.File(paths["ppg"], "r+") as f:
        f["ppg"][2, 100] = 1e30


def _inf_ppg(paths):
    with h5py.File(paths["ppg"], "r+") as f:
        f["ppg"][4, 0] = np.inf


def _silent_subject(paths):
    with h5py.File(paths["ppg"], "r+") as f:
        f["ppg"][W:2 * W] = 0  # the second subject's PPG is all zeros


def _index_disagrees(paths):
    with h5py.File(paths["index"], "r+") as f:
        f["subjects"][paths["subjects"][1]].attrs["n_windows"] = W + 3


def _ids_swapped(paths):
    first, second = paths["subjects"][:2]
    with h5py.File(paths["index"], "r+") as f:
        f["subjects"].move(first, "tmp")
        f["subjects"].move(second, first)
        f["subjects"].move("tmp", second)


def _dataset_is_a_group(paths):
    with h5py.File(paths["ecg"], "r+") as f:
        del f["has_real_ecg"]
        f.create_group("has_real_ecg")


def _float_indices(paths):
    with h5py.File(paths["index"], "r+") as f:
        g = f["subjects"][paths["subjects"][0]]
        data = g["window_indices"][()].astype(np.float32)
        del g["window_indices"]
        g["window_indices"] = data


@pytest.mark.parametrize("corrupt, failed_check", [
    (_truncate_ppg, "mesa_ppg_with_labels.h5 is readable"),
    (_not_hdf5, "mesa_subject_index.h5 is readable"),
    (_float_labels, "labels are integers"),
    (_absurd_value, "ppg values within +/-1000"),
    (_inf_ppg, "ppg values finite"),
    (_silent_subject, "every subject has non-zero PPG"),
    (_index_disagrees, "index entries agree with the data"),
    (_ids_swapped, "index entries agree with the data"),
    (_dataset_is_a_group, "mesa_real_ecg.h5 is readable"),
    (_float_indices, "index entries agree with the data"),
])
def test_damaged_or_suspicious_files_fail_without_a_traceback(tmp_path, capsys, corrupt, failed_check):
    paths = write_processed(tmp_path, n_subjects=4, windows_per_subject=W, n_test=1)
    corrupt(paths)
    capsys.readouterr()
    assert vo.main(["--base", str(tmp_path), "--windows-per-subject", str(W)]) == 1
    captured = capsys.readouterr()
    assert f"[FAIL] {failed_check}" in captured.out and "Traceback" not in captured.out + captured.err
    last = captured.out.strip().splitlines()[-1]
    assert last.startswith("FAILED") and failed_check in last
    if corrupt is _silent_subject:
        assert f"['{paths['subjects'][1]}']" in captured.out
    if corrupt is _ids_swapped:
        assert "window_indices point at other subjects' rows" in captured.out


def test_ctrl_c_exits_130(tmp_path, capsys, monkeypatch):
    write_processed(tmp_path, n_subjects=2, windows_per_subject=W, n_test=1)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vo, "verify", interrupted)
    assert vo.main(["--base", str(tmp_path)]) == 130
    assert "interrupted" in capsys.readouterr().err


def _rows_of(paths, i):
    return slice(i * W, (i + 1) * W)


def _scaled_night(paths):
    with h5py.File(paths["ppg"], "r+") as f:
        f["ppg"][_rows_of(paths, 1)] = f["ppg"][_rows_of(paths, 1)] * 250


def _constant_night(paths):
    with h5py.File(paths["ppg"], "r+") as f:
        f["ppg"][_rows_of(paths, 1)] = 0.7


def _scaled_ecg(paths):
    with h5py.File(paths["ecg"], "r+") as f:
        f["ecg"][_rows_of(paths, 1)] = f["ecg"][_rows_of(paths, 1)] * 250


def _unscored_night(paths):
    for key in ("ppg", "ecg"):
        with h5py.File(paths[key], "r+") as f:
            f["labels"][_rows_of(paths, 1)] = -1


def _subjects_descending(paths):
    """The same nights, in descending ID order; the index follows them (readers can still read it)."""
    order = list(range(len(paths["subjects"])))[::-1]
    for key, names in (("ppg", ("ppg", "labels", "subject_ids")), ("ecg", ("ecg", "labels", "subject_ids"))):
        with h5py.File(paths[key], "r+") as f:
            for name in names:
                data = f[name][()]
                f[name][...] = np.concatenate([data[_rows_of(paths, i)] for i in order])
    with h5py.File(paths["index"], "r+") as f:
        for new, old in enumerate(order):
            g = f["subjects"][paths["subjects"][old]]
            del g["window_indices"]
            g["window_indices"] = np.arange(new * W, (new + 1) * W)


def _empty(paths):
    for key, signal in (("ppg", "ppg"), ("ecg", "ecg")):
        with h5py.File(paths[key], "r+") as f:
            for name in list(f):
                data = f[name][()]
                del f[name]
                f[name] = data[:0]
            f.attrs["total_windows"] = f.attrs["total_subjects"] = 0
            if key == "ecg":
                f.attrs["windows_with_real_ecg"] = f.attrs["windows_without_real_ecg"] = 0
    with h5py.File(paths["index"], "r+") as f:
        del f["subjects"]
        f.create_group("subjects")
        f.attrs["total_windows"] = f.attrs["total_subjects"] = 0


@pytest.mark.parametrize("corrupt, failed_check, detail", [
    (_scaled_night, "ppg values z-scored in every night", r"1 subjects not as extraction writes them .*: {s[1]} "
                                                          r"mean \S+, SD \d\d\d$"),
    (_constant_night, "ppg values z-scored in every night", r"{s[1]} constant \(SD 0, every value 0.7\)"),
    (_scaled_ecg, "ecg values z-scored in every night", r"{s[1]} mean \S+, SD \d\d\d$"),
    (_nan_ppg, "ppg values finite", r"1 NaN/inf values in 1 subjects: {s[0]} \(1\)"),
    (_unscored_night, "every subject has a scored epoch", r"1 subjects with every label -1 .*: {s[1]}$"),
    (_subjects_descending, "subjects in sorted ID order", r"{s[3]} follows {s[4]} \(4 out of order\)"),
    (_empty, "the files hold at least one subject", r"0 rows, 0 subjects"),
])
def test_data_that_looks_valid_but_lies_fails_naming_the_subject(tmp_path, capsys, corrupt, failed_check, detail):
    """Values extraction cannot write (rescaled, constant), nights with nothing scored, subjects out of order
    and empty files: the FAIL line names the check, the subject and what is wrong."""
    paths = write_processed(tmp_path, n_subjects=5, windows_per_subject=W, n_test=2)
    corrupt(paths)
    capsys.readouterr()
    assert vo.main(["--base", str(tmp_path), "--windows-per-subject", str(W)]) == 1
    lines = capsys.readouterr().out.splitlines()
    fail = next(line for line in lines if line.startswith(f"[FAIL] {failed_check}"))
    pattern = detail.format(s=paths["subjects"])
    assert re.search(pattern, fail), fail
