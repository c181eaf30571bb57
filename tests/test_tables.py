"""Recordings as people export them, through read_recording and inference_ppg_only.py --ppg: European tables
(semicolons, decimal commas, clock times past midnight), quoted thousands separators, time columns in minutes
or hours, unit mistakes refused by name, .npz and MATLAB .mat files (v5 and v7.3), whole epochs only, counted
interpolation, and --fs against a rate the file states."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from helpers import write_tiny_checkpoint
from test_formats import pulse, stage, write_edf, write_table

import sleepppg.formats as rf
from sleepppg.errors import BadRecordingError
from sleepppg.grid import filled_points, to_uniform_grid
from sleepppg.preprocessing import preprocess_signals

FS = 32.0
N = int(FS * 90)  # 90 s


def values(seed: int = 0) -> np.ndarray:
    return np.round(2000 + 800 * pulse(N, FS, seed), 3)


def read_kind(path: Path, **kw) -> BadRecordingError:
    with pytest.raises(BadRecordingError) as info:
        rf.read_recording(path, **kw)
    assert path.name in str(info.value)
    return info.value


# ----------------------------------------------------------------------------------------------------------
# Tables


def test_semicolons_decimal_commas_and_clock_times_past_midnight(tmp_path):
    x = values()
    start = dt.datetime(2024, 3, 1, 23, 59, 30)
    clock = [(start + dt.timedelta(seconds=i / FS)).strftime("%H:%M:%S.%f").replace(".", ",") for i in range(N)]
    commas = [f"{v:.3f}".replace(".", ",") for v in x]
    path = write_table(tmp_path / "europe.csv", {"Zeit": clock, "Pleth": commas}, delimiter=";")
    rec = rf.read_recording(path)
    assert rec.fs == FS and rec.signal_T.size == N and rec.info["time_column"] == "Zeit"
    np.testing.assert_allclose(rec.signal_T, x, atol=1e-9)
    headerless = write_table(tmp_path / "plain.txt", {"t": [f"{i / FS:.5f}".replace(".", ",") for i in range(N)],
                                                      "v": commas}, delimiter=";", header=False)
    rec = rf.read_recording(headerless)  # 0,03125;512,5
    assert rec.fs == FS and rec.signal_T.size == N
    np.testing.assert_allclose(rec.signal_T, x, atol=1e-9)
    grouped = write_table(tmp_path / "grouped.csv", {"ppg": [f"{v:,.2f}".replace(",", " ").replace(".", ",")
                                                             .replace(" ", ".") for v in x]}, delimiter=";")
    rec = rf.read_recording(grouped, fs=FS)  # 2.345,67: a point groups thousands, a comma is the decimal mark
    np.testing.assert_allclose(rec.signal_T, [float(f"{v:.2f}") for v in x], atol=1e-9)


def test_quoted_thousands_separators_are_read_not_missing(tmp_path):
    x = values() + 1000  # every value over 1,000
    path = write_table(tmp_path / "export.csv", {"time": [f"{i / FS:.5f}" for i in range(N)],
                                                 "ppg": [f'"{v:,.2f}"' for v in x]})
    assert '"2,' in path.read_text() or '"1,' in path.read_text()
    rec = rf.read_recording(path)
    assert rec.info["filled_samples"] == 0 and rec.info["warnings"] == []
    np.testing.assert_allclose(rec.signal_T, [float(f"{v:.2f}") for v in x], atol=1e-9)


@pytest.mark.parametrize("name, factor", [("time_min", 1 / 60), ("minutes", 1 / 60), ("time (min)", 1 / 60),
                                          ("time_h", 1 / 3600), ("hours", 1 / 3600), ("t [h]", 1 / 3600),
                                          ("time (ms)", 1000.0), ("Time [s]", 1.0)])
def test_time_column_units(tmp_path, name, factor):
    path = write_table(tmp_path / "units.csv", {name: [f"{i / FS * factor:.12g}" for i in range(N)],
                                                "pleth": values().tolist()})
    rec = rf.read_recording(path)
    assert rec.fs == FS and abs(rec.signal_T.size - N) <= 1 and rec.info["time_column"] == name


@pytest.mark.parametrize("name, factor, says", [
    ("time", 1 / 60, ["'time'", "3840 Hz", "minutes (64 Hz)"]),  # minutes read as seconds: 3,840 Hz
    ("time_s", 1000.0, ["'time_s'", "0.064 Hz", "milliseconds (64 Hz)"]),  # ms in a column named seconds
    ("time_ms", 1.0, ["'time_ms'", "6.4e+04 Hz"]),  # seconds named ms: 64 kHz, nothing fits
    ("t", 1 / 60, ["'t'", "states no unit", "960 Hz", "minutes (16 Hz)"]),  # 16 Hz in minutes, 960 Hz in s
])
def test_unit_mistakes_are_refused_naming_the_column(tmp_path, name, factor, says):
    fs = 16.0 if name == "t" else 64.0
    n = int(fs * 60)
    path = write_table(tmp_path / "unit.csv", {name: [f"{i / fs * factor:.12g}" for i in range(n)],
                                               "pleth": pulse(n, fs).tolist()})
    err = read_kind(path, fs=fs)
    assert err.kind == "time_unit" and all(text in str(err) for text in says), str(err)


def test_text_in_the_ppg_column_is_counted_or_refused(tmp_path):
    x = values().astype(object)
    x[[10, 500, 1000]] = "ERR"
    path = write_table(tmp_path / "few.csv", {"time": [i / FS for i in range(N)], "pleth": x.tolist()})
    rec = rf.read_recording(path)
    assert rec.info["filled_samples"] == 3 and "3 values of column 'pleth' are not numbers" in rec.info["warnings"][0]
    x[::20] = "ERR"  # 5%
    path = write_table(tmp_path / "many.csv", {"time": [i / FS for i in range(N)], "pleth": x.tolist()})
    err = read_kind(path)
    assert err.kind == "unreadable_table" and "'pleth'" in str(err) and "'ERR'" in str(err)


# ----------------------------------------------------------------------------------------------------------
# NumPy archives and MATLAB files


def test_npz_one_array_named_key_stored_rate(tmp_path):
    x = values()
    np.savez(tmp_path / "one.npz", signal=x)
    err = read_kind(tmp_path / "one.npz")
    assert err.kind == "needs_fs" and "--fs" in str(err)
    rec = rf.read_recording(tmp_path / "one.npz", fs=FS)
    assert rec.info["source_format"] == "npz" and rec.info["column"] == "signal" and np.array_equal(rec.signal_T, x)
    np.savez(tmp_path / "named.npz", acc=pulse(N, FS, 3), ppg_green=x, Fs=np.array(FS))
    rec = rf.read_recording(tmp_path / "named.npz")
    assert rec.fs == FS and rec.info["column"] == "ppg_green" and rec.info["fs_source"] == "key 'Fs'"
    np.savez(tmp_path / "two.npz", a=x, b=x)
    assert read_kind(tmp_path / "two.npz", fs=FS).kind == "no_ppg_column"
    assert rf.read_recording(tmp_path / "two.npz", fs=FS, column="B").info["column"] == "b"
    np.savez(tmp_path / "badfs.npz", ppg=x, fs=np.array([32.0, 64.0]))
    err = read_kind(tmp_path / "badfs.npz")
    assert err.kind == "bad_rate" and "'fs'" in str(err)


def test_matlab_v5_and_v73_and_wfdb_mat_stays_wfdb(tmp_path):
    import h5py
    from scipy.io import savemat

    x = values()
    savemat(tmp_path / "pyppg.mat", {"Data": x[None, :], "Fs": FS})  # as pyPPG ships its samples: 1 x n
    rec = rf.read_recording(tmp_path / "pyppg.mat")
    assert rec.info["source_format"] == "mat" and rec.fs == FS and rec.info["column"] == "Data"
    np.testing.assert_array_equal(rec.signal_T, x)
    with h5py.File(tmp_path / "v73.mat", "w", userblock_size=512) as f:  # MATLAB v7.3: HDF5 after a text header
        f["Data"] = x[:, None]
        f["Fs"] = np.array([[FS]])
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116) + b"\x00" * 8 + b"\x00\x02IM"
    with open(tmp_path / "v73.mat", "r+b") as fh:
        fh.write(header)
    rec = rf.read_recording(tmp_path / "v73.mat")
    assert rec.fs == FS and np.array_equal(rec.signal_T, x)
    (tmp_path / "rec.hea").write_text("rec 1 32 10\nrec.mat 16 1 0 0 0 0 0 PLETH\n")
    savemat(tmp_path / "rec.mat", {"val": x[None, :10]})
    err = read_kind(tmp_path / "rec.mat")
    assert err.kind == "unknown_format" and "rec.hea" in str(err)
    assert not rf.is_recording_file(tmp_path / "rec.mat") and rf.is_recording_file(tmp_path / "pyppg.mat")
    np.savez(tmp_path / "misnamed.npy", ppg=x, fs=FS)  # np.savez on a path ending .npy keeps the name
    (tmp_path / "misnamed.npy.npz").rename(tmp_path / "misnamed.npy")
    rec = rf.read_recording(tmp_path / "misnamed.npy")
    assert rec.info["source_format"] == "npz" and "NumPy .npz archive" in rec.info["warnings"][0]


# ----------------------------------------------------------------------------------------------------------
# Whole epochs, interpolated samples


def test_a_partial_last_epoch_is_not_an_epoch():
    x = pulse(int(128.2 * 64), 64.0)  # 128.2 s: 4 whole epochs and 8.2 s
    out = preprocess_signals(x, 64.0, n_windows=10, nan_is_gap=True)
    assert out["n_whole_windows"] == 4 and out["n_recorded_windows"] == 5  # extraction's labels stop at 5


def test_filled_points_match_the_grid():
    rng = np.random.default_rng(1)
    t = np.arange(2000) / FS + rng.uniform(-0.004, 0.004, 2000)
    x = pulse(2000, FS)
    x[[5, 6, 7, 400]] = np.nan  # 4 missing samples
    keep = (t < 20) | (t > 22)  # a 2-s hole: bridged
    keep &= (t < 40) | (t > 45) & (t < 45.5) | (t > 47)  # two holes around one sample
    t, x = t[keep], x[keep]
    grid, gaps = to_uniform_grid(t, x, FS, max_gap_s=30.0)
    assert gaps == []
    # the slow version: grid points farther than 1.5 steps from the kept samples on both sides
    g = t.min() + np.arange(grid.size) / FS
    t_k = np.sort(t[~np.isnan(x)])
    right = t_k[np.minimum(np.searchsorted(t_k, g), t_k.size - 1)]
    left = t_k[np.maximum(np.searchsorted(t_k, g, side="right") - 1, 0)]
    slow = int(np.sum((right - left > 1.5 / FS) & (g > left) & (g < right)))
    assert filled_points(t, x, FS, 30.0) == slow and slow > 4 * 32


# ----------------------------------------------------------------------------------------------------------
# End to end: inference_ppg_only.py --ppg on a folder of mixed formats


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "best_model.pth", 12)  # 6-min nights


def test_mixed_folder_with_fs_partial_epochs_and_filled_samples(tmp_path, checkpoint):
    import wfdb
    from scipy.io import savemat

    fs = 64.0
    n = int(fs * (2 * 60 + 12.5))  # 2 min 12.5 s: 4 whole epochs
    x = np.round(pulse(n, fs, 4) * 3000)
    rec = tmp_path / "rec"
    rec.mkdir()
    write_table(rec / "a_stamps.csv", {"time": (np.arange(n) / fs).tolist(), "pleth": x.astype(int).tolist()})
    wfdb.wrsamp("b_wfdb", fs=fs, units=["NU"], sig_name=["PLETH"], p_signal=x[:, None], fmt=["16"],
                adc_gain=[1.0], baseline=[0], write_dir=str(rec))
    write_edf(rec / "c_edf.edf", x[:int(fs * 132)], fs, "Pleth")  # whole seconds only
    savemat(rec / "d_matlab.mat", {"Data": x[None, :], "Fs": fs})
    gappy = x.copy()
    gappy[1000:1000 + int(fs * 2)] = np.nan  # 2 s missing: 1.5% of the night
    np.save(rec / "e_nofs.npy", gappy)  # states no rate: read at --fs
    code, result, run_dir = stage(tmp_path, checkpoint, "--ppg", str(rec), "--fs", "32")
    assert code == 0, result.get("failed")
    items = {i["subject_id"]: i for i in result["nights"]}
    assert sorted(items) == ["a_stamps", "b_wfdb", "c_edf", "d_matlab", "e_nofs"]
    for sid in ("a_stamps", "b_wfdb", "c_edf", "d_matlab"):  # a stated rate wins; one warning names both
        item = items[sid]
        assert item["ppg_fs"] == fs and item["n_epochs_staged"] == 4, (sid, item)
        conflict = [w for w in item["warnings"] if "--fs" in w]
        assert len(conflict) == 1 and "64 Hz" in conflict[0] and "32 Hz" in conflict[0], item["warnings"]
        assert item["filled_samples"] == 0
    nofs = items["e_nofs"]  # at 32 Hz the same samples last twice as long: 8 whole epochs
    assert nofs["ppg_fs"] == 32 and nofs["n_epochs_staged"] == 8 and not any("--fs" in w for w in nofs["warnings"])
    assert nofs["filled_samples"] == int(fs * 2) and nofs["filled_s"] == pytest.approx(4.0)
    assert any("interpolated" in w and "128 missing samples" in w for w in nofs["warnings"])
    names = (run_dir / "csv" / "a_stamps" / "a_stamps.csv").read_text().splitlines()[1:]
    assert len(names) == 4  # the trailing 12.5 s are not an epoch
