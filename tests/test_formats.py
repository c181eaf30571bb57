"""Tests for recording_formats.py: the uniform grid (against a slow obvious version), rates, missing data,
each table layout, NumPy, WFDB and DREAMT files written here, and every bad input with its reason."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import recording_formats as rf
from extract_mesa_data import BadRecordingError
from sleepppg_common import IGNORE_INDEX

# ----------------------------------------------------------------------------------------------------------
# Helpers


def pulse(n: int, fs: float, seed: int = 0) -> np.ndarray:
    """A pulse-like PPG: ~1.1-Hz beats with a drifting rate and a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / fs
    phase = 2 * np.pi * np.cumsum(1.1 + 0.1 * np.sin(2 * np.pi * t / 600)) / fs
    return np.sin(phase) + 0.4 * np.sin(2 * phase) + 0.05 * rng.standard_normal(n)


def write_table(path: Path, columns: dict[str, list], delimiter: str = ",", header: bool = True) -> Path:
    names = list(columns)
    rows = zip(*columns.values())
    lines = ([delimiter.join(names)] if header else []) + [delimiter.join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def slow_grid(t: np.ndarray, x: np.ndarray, fs: float, max_gap_s: float) -> np.ndarray:
    """The obvious version of to_uniform_grid: per grid point, find the kept samples around it."""
    keep = ~np.isnan(x)
    pairs = sorted(zip(t[keep].tolist(), x[keep].tolist()))
    merged: dict[float, list[float]] = {}
    for ti, xi in pairs:
        merged.setdefault(ti, []).append(xi)
    tk = np.array(sorted(merged))
    xk = np.array([np.mean(merged[ti]) for ti in tk])
    t0, t_last = t.min(), t.max()
    out = []
    for k in range(int(math.floor((t_last - t0) * fs + 1e-6)) + 1):
        g = t0 + k / fs
        before, after = tk[tk <= g], tk[tk >= g]
        prev = before[-1] if before.size else t0
        nxt = after[0] if after.size else t_last
        if nxt - prev > max_gap_s and g not in merged:
            out.append(np.nan)
        elif not before.size:
            out.append(xk[0])
        elif not after.size:
            out.append(xk[-1])
        elif prev == nxt:
            out.append(xk[tk == prev][0])
        else:
            w = (g - prev) / (nxt - prev)
            out.append((1 - w) * xk[tk == prev][0] + w * xk[tk == nxt][0])
    return np.array(out)


# ----------------------------------------------------------------------------------------------------------
# Grid, rate, missing data


def test_uniform_grid_matches_slow_version_with_jitter_duplicates_and_gaps():
    rng = np.random.default_rng(3)
    fs = 20.0
    t = np.arange(0, 200, 1 / fs) + rng.uniform(-0.01, 0.01, 4000)
    t[100] = t[99]  # a duplicated stamp
    x = np.sin(t) + rng.standard_normal(t.size) * 0.1
    x[1000:1500] = np.nan  # 25 s missing: a gap above 10 s
    x[2000:2050] = np.nan  # 2.5 s missing: interpolated
    t = np.delete(t, np.arange(3000, 3300))  # 15 s without stamps: a gap
    x = np.delete(x, np.arange(3000, 3300))
    x[:5] = np.nan  # missing at the very start (0.25 s): held
    order = rng.permutation(t.size)  # stamps out of order
    fast, gaps = rf.to_uniform_grid(t[order], x[order], fs, max_gap_s=10.0)
    slow = slow_grid(t, x, fs, 10.0)
    assert fast.shape == slow.shape
    assert np.array_equal(np.isnan(fast), np.isnan(slow))
    assert np.allclose(fast[~np.isnan(fast)], slow[~np.isnan(slow)])
    assert len(gaps) == 2
    assert gaps[0][1] == pytest.approx(25.05, abs=0.05) and gaps[1][1] == pytest.approx(15.05, abs=0.05)


def test_uniform_grid_keeps_regular_samples_exactly_and_flags_edges():
    x = np.arange(100.0)
    out, gaps = rf.to_uniform_grid(np.arange(100) / 4.0, x, 4.0)
    assert np.array_equal(out, x) and gaps == []
    y = np.arange(200.0)
    y[:60] = np.nan  # 15 s missing at the start, limit 10 s: a gap
    y[-45:] = np.nan  # 11.25 s missing at the end: a gap
    y[100:130] = np.nan  # 7.5 s inside: interpolated
    out, gaps = rf.to_uniform_grid(np.arange(200) / 4.0, y, 4.0, max_gap_s=10.0)
    assert np.isnan(out[:60]).all() and np.isnan(out[-45:]).all()
    assert np.allclose(out[60:-45], np.arange(60.0, 155.0)) and gaps == [[0.0, 15.0], [38.5, 11.25]]
    with pytest.raises(BadRecordingError) as info:
        rf.to_uniform_grid(np.arange(10.0), np.full(10, np.nan), 1.0)
    assert info.value.kind == "no_signal"


def test_measure_rate_ignores_gaps_and_counts_duplicates():
    rng = np.random.default_rng(0)
    t = np.sort(np.concatenate([np.arange(0, 100, 1 / 64), np.arange(200, 300, 1 / 64)]))
    fs, n_dup = rf.measure_rate(t + rng.uniform(-1e-4, 1e-4, t.size))
    assert fs == 64.0 and n_dup == 0  # snapped: within 0.1% of 64
    fs, n_dup = rf.measure_rate(np.sort(np.concatenate([t, t[:10]])))
    assert fs == 64.0 and n_dup == 10
    assert rf.measure_rate(np.arange(0, 10, 1 / 33.3))[0] == pytest.approx(33.3)
    with pytest.raises(BadRecordingError, match="distinct"):
        rf.measure_rate(np.zeros(5))


def test_integer_rails_and_missing():
    assert rf.integer_rails(np.array([1.5, 2.0])) is None
    assert rf.integer_rails(np.array([0.0, 4095.0, 100.0])) == (0.0, 4095.0)
    assert rf.integer_rails(np.array([-5.0, 300.0])) == (-512.0, 511.0)
    assert rf.integer_rails(np.array([1, 2]), np.dtype(np.int16)) == (-32768.0, 32767.0)
    x = rf.mark_missing(np.array([1.0, np.inf, 4095.0, 7.0, 0.0]), (0.0, 4095.0))
    assert np.isnan(x).tolist() == [False, True, True, False, True]


# ----------------------------------------------------------------------------------------------------------
# Tables


FS = 32.0
N = int(FS * 120)  # two minutes


def test_csv_with_header_and_time_in_seconds(tmp_path):
    x = pulse(N, FS)
    path = write_table(tmp_path / "night.csv", {"time_s": (np.arange(N) / FS).tolist(), "Pleth": x.tolist(),
                                                "spo2": [97] * N})
    rec = rf.read_recording(path)
    assert rec.fs == FS and rec.info["fs_found"] == FS and rec.info["column"] == "Pleth"
    assert rec.info["time_column"] == "time_s" and rec.info["gaps"] == []
    assert np.allclose(rec.signal_T, x, atol=1e-12)


def test_headerless_single_column_needs_fs(tmp_path):
    x = np.round(pulse(N, FS), 6)
    path = write_table(tmp_path / "raw.txt", {"v": x.tolist()}, header=False)
    with pytest.raises(BadRecordingError) as info:
        rf.read_recording(path)
    assert info.value.kind == "needs_fs" and "--fs" in str(info.value) and "raw.txt" in str(info.value)
    rec = rf.read_recording(path, fs=FS)
    assert rec.fs == FS and rec.info["column"] == "column 1" and np.array_equal(rec.signal_T, x)


def test_headerless_two_columns_time_first_in_ms(tmp_path):
    x = np.round(pulse(N, FS), 6)
    path = write_table(tmp_path / "two.tsv", {"t": (np.arange(N) * 1000 / FS).tolist(), "v": x.tolist()},
                       delimiter="\t", header=False)
    rec = rf.read_recording(path)
    assert rec.fs == FS and rec.info["time_column"] == "column 1" and rec.info["column"] == "column 2"
    assert np.allclose(rec.signal_T, x)


def test_ms_stamps_with_jitter_duplicates_and_a_gap(tmp_path):
    rng = np.random.default_rng(1)
    fs = 64.0
    n = int(fs * 300)
    t_ms = np.arange(n) * 1000 / fs + rng.uniform(-2, 2, n)  # +-2 ms jitter
    x = pulse(n, fs)
    keep = np.ones(n, dtype=bool)
    keep[int(fs * 100):int(fs * 160)] = False  # 60 s without samples: above the 30-s limit
    t_ms, x = t_ms[keep], x[keep]
    t_ms = np.insert(t_ms, 50, t_ms[50])  # a duplicated stamp
    x = np.insert(x, 50, x[50])
    path = write_table(tmp_path / "wear.csv", {"timestamp_ms": np.round(t_ms, 3).tolist(),
                                               "ppg": np.round(x, 5).tolist()})
    rec = rf.read_recording(path)
    assert rec.fs == fs and rec.info["duplicated_stamps"] == 1
    assert len(rec.info["gaps"]) == 1 and rec.info["gaps"][0][0] == pytest.approx(100, abs=0.05)
    assert rec.info["gaps"][0][1] == pytest.approx(60, abs=0.05)
    assert rec.signal_T.size == pytest.approx(n, abs=2)
    nan = np.isnan(rec.signal_T)
    assert nan.sum() == pytest.approx(60 * fs, abs=2) and not nan[:int(fs * 99)].any()


def test_iso_datetime_stamps_with_time_zone(tmp_path):
    import datetime as dt

    fs = 25.0
    start = dt.datetime(2024, 3, 1, 23, 59, 50, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    n = int(fs * 90)
    stamps = [(start + dt.timedelta(seconds=i / fs)).isoformat() for i in range(n)]
    x = np.round(pulse(n, fs), 6)
    path = write_table(tmp_path / "clock.csv", {"datetime": stamps, "BVP": x.tolist()}, delimiter=";")
    rec = rf.read_recording(path)
    assert rec.fs == fs and rec.info["time_column"] == "datetime" and rec.info["start_time"].startswith(
        "2024-03-01T22:59:50")  # stored in UTC
    assert np.allclose(rec.signal_T, x)
    naive = write_table(tmp_path / "naive.csv", {"time": [s[:-6].replace("T", " ") for s in stamps],
                                                 "value": x.tolist()})
    rec = rf.read_recording(naive)
    assert rec.fs == fs and rec.info["column"] == "value" and np.allclose(rec.signal_T, x)


def test_saturation_and_nan_are_missing(tmp_path):
    fs = 32.0
    x = np.round(2000 + 800 * pulse(int(fs * 200), fs)).astype(int)
    x[int(fs * 50):int(fs * 95)] = 4095  # 45 s saturated at the 12-bit rail: a gap
    x[int(fs * 150):int(fs * 151)] = 4095  # 1 s: interpolated
    values = x.astype(object)
    values[10] = "NaN"
    values[11] = "NA"
    path = write_table(tmp_path / "adc.csv", {"sample": values.tolist()})
    rec = rf.read_recording(path, fs=fs)
    nan = np.isnan(rec.signal_T)
    assert nan.sum() == 45 * fs and nan[int(fs * 50):int(fs * 95)].all()
    assert rec.info["gaps"] == [[49.96875, 45.03125]]
    assert rec.signal_T[10:12] == pytest.approx(x[9] + (x[12] - x[9]) * np.array([1, 2]) / 3)


def test_column_choice_by_name_number_and_errors(tmp_path):
    x = pulse(N, FS)
    path = write_table(tmp_path / "multi.csv", {"a": x.tolist(), "b": (2 * x).tolist()})
    with pytest.raises(BadRecordingError) as info:
        rf.read_recording(path, fs=FS)
    assert info.value.kind == "no_ppg_column" and "['a', 'b']" in str(info.value)
    assert np.allclose(rf.read_recording(path, fs=FS, column="B").signal_T, 2 * x)
    assert np.allclose(rf.read_recording(path, fs=FS, column="1").signal_T, x)
    with pytest.raises(BadRecordingError, match="no column 'c'"):
        rf.read_recording(path, fs=FS, column="c")
    text = write_table(tmp_path / "text.csv", {"name": ["x"] * 10})
    with pytest.raises(BadRecordingError) as info:
        rf.read_recording(text, fs=FS)
    assert info.value.kind == "no_ppg_column"


@pytest.mark.parametrize("content, kind", [
    ("", "empty_file"),
    ("time,ppg\n", "empty_file"),
    ("# only a comment\n\n", "empty_file"),
    ("time,ppg\n0,1\nabc,2\n0.1,3\n", "bad_timestamps"),
])
def test_bad_tables(tmp_path, content, kind):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(BadRecordingError) as info:
        rf.read_recording(path)
    assert info.value.kind == kind and "bad.csv" in str(info.value)


def test_rate_checks(tmp_path):
    path = write_table(tmp_path / "slow.csv", {"time": (np.arange(600) / 10).tolist(), "ppg": pulse(600, 10).tolist()})
    with pytest.raises(BadRecordingError) as info:
        rf.read_recording(path)
    assert info.value.kind == "low_sampling_rate" and "10 Hz" in str(info.value)
    good = write_table(tmp_path / "ok.csv", {"time": (np.arange(N) / FS).tolist(), "ppg": pulse(N, FS).tolist()})
    with pytest.raises(BadRecordingError) as info:
        rf.read_recording(good, fs=64)
    assert info.value.kind == "rate_mismatch"
    assert rf.read_recording(good, fs=32).fs == 32


# ----------------------------------------------------------------------------------------------------------
# NumPy, WFDB, unknown


def test_npy_float_and_saturated_int16(tmp_path):
    x = pulse(N, FS)
    np.save(tmp_path / "a.npy", x)
    rec = rf.read_recording(tmp_path / "a.npy", fs=FS)
    assert rec.info["source_format"] == "npy" and np.array_equal(rec.signal_T, x)
    with pytest.raises(BadRecordingError) as info:
        rf.read_recording(tmp_path / "a.npy")
    assert info.value.kind == "needs_fs"
    ints = np.round(x * 1000).astype(np.int16)
    ints[100:110] = 32767
    np.save(tmp_path / "b.npy", ints)
    rec = rf.read_recording(tmp_path / "b.npy", fs=FS)
    assert not np.isnan(rec.signal_T).any() and (rec.signal_T[100:110] < 32767).all()
    np.save(tmp_path / "c.npy", np.zeros((3, 4)))
    with pytest.raises(BadRecordingError, match="1-D"):
        rf.read_recording(tmp_path / "c.npy", fs=FS)
    (tmp_path / "d.npy").write_bytes(b"garbage")
    with pytest.raises(BadRecordingError) as info:
        rf.read_recording(tmp_path / "d.npy", fs=FS)
    assert info.value.kind == "unreadable_npy"


def test_wfdb_record_and_missing_data_file(tmp_path):
    import wfdb

    x = np.round(pulse(N, FS) * 1000)
    ecg = np.round(np.sin(np.arange(N)) * 100)
    wfdb.wrsamp("rec1", fs=FS, units=["mV", "NU"], sig_name=["ECG", "PLETH"], p_signal=np.c_[ecg, x],
                fmt=["16", "16"], adc_gain=[1.0, 1.0], baseline=[0, 0], write_dir=str(tmp_path))
    rec = rf.read_recording(tmp_path / "rec1.hea")
    assert rec.info["column"] == "PLETH" and rec.fs == FS and np.array_equal(rec.signal_T, x)
    assert np.array_equal(rf.read_recording(tmp_path / "rec1.hea", column="ecg").signal_T, ecg)
    assert [p.name for p in rf.recording_files(tmp_path / "rec1.hea")] == ["rec1.hea", "rec1.dat"]
    (tmp_path / "rec1.dat").unlink()
    with pytest.raises(BadRecordingError) as info:
        rf.read_recording(tmp_path / "rec1.hea")
    assert info.value.kind == "missing_data_file" and "rec1.dat" in str(info.value)


@pytest.mark.parametrize("name", ["night.xyz", "noext", "rec.dat"])
def test_unknown_extension(tmp_path, name):
    (tmp_path / name).write_text("1\n2\n")
    with pytest.raises(BadRecordingError) as info:
        rf.read_recording(tmp_path / name, fs=FS)
    assert info.value.kind == "unknown_format" and name in str(info.value)


# ----------------------------------------------------------------------------------------------------------
# DREAMT


DREAMT_COLUMNS = ["TIMESTAMP", "BVP", "ACC_X", "ACC_Y", "ACC_Z", "TEMP", "EDA", "HR", "IBI", "Sleep_Stage",
                  "Obstructive_Apnea", "Central_Apnea", "Hypopnea", "Multiple_Events"]


def write_dreamt(path: Path, stages: list[tuple[str, float]], fs: float = 64.0, seed: int = 0,
                 columns: list[str] = DREAMT_COLUMNS, ecg: bool = False) -> Path:
    """A DREAMT-shaped CSV: `stages` = [(stage, seconds), ...] in order, BVP pulse-like, the rest constant."""
    seconds = sum(s for _, s in stages)
    n = int(round(seconds * fs))
    stage = np.concatenate([[name] * int(round(s * fs)) for name, s in stages])[:n]
    bvp = pulse(n, fs, seed) * 50
    names = columns + (["ECG"] if ecg else [])
    with open(path, "w") as fh:
        fh.write(",".join(names) + "\n")
        for i in range(n):
            values = {"TIMESTAMP": f"{i / fs:.6f}", "BVP": f"{bvp[i]:.3f}", "Sleep_Stage": stage[i],
                      "ECG": f"{np.sin(i / 3):.4f}", "IBI": ""}
            fh.write(",".join(values.get(c, "1.0") for c in names) + "\n")
    return path


def test_epoch_labels_majority_matches_slow_version():
    rng = np.random.default_rng(0)
    fs = 4.0
    codes = rng.choice([-2, -1, 0, 1, 2, 3], size=int(fs * 30 * 7.5)).astype(np.int8)
    fast = rf.epoch_labels(codes, fs, n_windows=10)
    slow = []
    for w in range(8):
        seg = codes[w * 120:(w + 1) * 120]
        counts = {c: int(np.sum(seg == c)) for c in range(4)}
        counts[-1] = int(np.sum(seg < 0))
        best = max(counts.values())
        slow.append(next(c for c in (0, 1, 2, 3, -1) if counts[c] == best))
    assert fast.tolist() == slow + [IGNORE_INDEX, IGNORE_INDEX]


def test_dreamt_lights_off_labels_and_ecg(tmp_path):
    # 45 s of P, then W 60 s, N2 45 s, N3 30 s, R 40 s, Missing 20 s: epochs from lights-off (t = 45 s)
    path = write_dreamt(tmp_path / "S002_whole_df.csv",
                        [("P", 45), ("W", 60), ("N2", 45), ("N3", 30), ("R", 40), ("Missing", 20)], ecg=True)
    out = rf.read_dreamt(path, n_windows=10)
    assert out["fs"] == 64.0 and out["info"]["lights_off_s"] == 45.0 and out["info"]["fs_found"] == 64.0
    # epochs: [0,30) W, [30,60) W, [60,90) N2, [90,120) N2 15 s + N3 15 s -> tie: scored, lower class (Light)
    # [120,150) N3 15 + R 15 -> Deep; [150,180) R; [180,210) R 5 s + Missing 20 s -> unscored; then padding
    assert out["labels_W"].tolist() == [0, 0, 1, 1, 2, 3, -1, -1, -1, -1]
    assert out["ppg"].size == pytest.approx(195 * 64, abs=1) and out["ecg"].size == out["ppg"].size
    assert rf.dreamt_subject_id(path) == "S002"


@pytest.mark.parametrize("case, kind", [
    ("no_stage_column", "missing_column"),
    ("no_bvp", "missing_column"),
    ("only_p", "no_stages"),
    ("bad_time", "bad_timestamps"),
    ("empty", "empty_file"),
    ("rate", "rate_mismatch"),
    ("gap", "gap_in_recording"),
])
def test_dreamt_bad_inputs(tmp_path, case, kind):
    path = tmp_path / "S009_whole_df.csv"
    stages = [("P", 10), ("W", 60), ("N2", 60)]
    if case == "no_stage_column":
        write_dreamt(path, stages, columns=[c for c in DREAMT_COLUMNS if c != "Sleep_Stage"])
    elif case == "no_bvp":
        write_dreamt(path, stages, columns=[c for c in DREAMT_COLUMNS if c != "BVP"])
    elif case == "only_p":
        write_dreamt(path, [("P", 30), ("Missing", 60)])
    elif case == "bad_time":
        write_dreamt(path, stages)
        lines = path.read_text().splitlines()
        lines[100] = "noon" + lines[100][lines[100].index(","):]
        path.write_text("\n".join(lines) + "\n")
    elif case == "empty":
        path.write_text(",".join(DREAMT_COLUMNS) + "\n")
    elif case == "rate":
        write_dreamt(path, stages, fs=32.0)
    elif case == "gap":
        write_dreamt(path, [("P", 10), ("W", 60), ("N2", 120)])
        lines = path.read_text().splitlines()
        path.write_text("\n".join(lines[:64 * 80] + lines[64 * 120:]) + "\n")  # 40 s missing after lights-off
    with pytest.raises(BadRecordingError) as info:
        rf.read_dreamt(path, n_windows=10)
    assert info.value.kind == kind and "S009_whole_df.csv" in str(info.value)


def test_find_dreamt_files(tmp_path):
    for name in ("S002_whole_df.csv", "S003_whole_df.csv", "S003_PSG_df.csv", "notes.txt"):
        (tmp_path / name).write_text("x\n")
    files, duplicates = rf.find_dreamt_files(tmp_path)
    assert sorted(files) == ["S002", "S003"] and list(duplicates) == ["S003"]
