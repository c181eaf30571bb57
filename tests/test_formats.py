"""Tests for formats.py: the uniform grid (against a slow obvious version), rates, missing data,
each table layout, NumPy, WFDB and DREAMT files written here, and every bad input with its reason."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import write_raw_edf, write_tiny_checkpoint

import sleepppg.formats as rf
from sleepppg.constants import IGNORE_INDEX
from sleepppg.dreamt import dreamt_subject_id, epoch_labels, find_dreamt_files, read_dreamt
from sleepppg.errors import BadRecordingError
from sleepppg.grid import integer_rails, mark_missing, measure_rate, to_uniform_grid

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
    fast, gaps = to_uniform_grid(t[order], x[order], fs, max_gap_s=10.0)
    slow = slow_grid(t, x, fs, 10.0)
    assert fast.shape == slow.shape
    assert np.array_equal(np.isnan(fast), np.isnan(slow))
    assert np.allclose(fast[~np.isnan(fast)], slow[~np.isnan(slow)])
    assert len(gaps) == 2
    assert gaps[0][1] == pytest.approx(25.05, abs=0.05) and gaps[1][1] == pytest.approx(15.05, abs=0.05)


def test_uniform_grid_keeps_regular_samples_exactly_and_flags_edges():
    x = np.arange(100.0)
    out, gaps = to_uniform_grid(np.arange(100) / 4.0, x, 4.0)
    assert np.array_equal(out, x) and gaps == []
    y = np.arange(200.0)
    y[:60] = np.nan  # 15 s missing at the start, limit 10 s: a gap
    y[-45:] = np.nan  # 11.25 s missing at the end: a gap
    y[100:130] = np.nan  # 7.5 s inside: interpolated
    out, gaps = to_uniform_grid(np.arange(200) / 4.0, y, 4.0, max_gap_s=10.0)
    assert np.isnan(out[:60]).all() and np.isnan(out[-45:]).all()
    assert np.allclose(out[60:-45], np.arange(60.0, 155.0)) and gaps == [[0.0, 15.0], [38.5, 11.25]]
    with pytest.raises(BadRecordingError) as info:
        to_uniform_grid(np.arange(10.0), np.full(10, np.nan), 1.0)
    assert info.value.kind == "no_signal"


def test_measure_rate_ignores_gaps_and_counts_duplicates():
    rng = np.random.default_rng(0)
    t = np.sort(np.concatenate([np.arange(0, 100, 1 / 64), np.arange(200, 300, 1 / 64)]))
    fs, n_dup = measure_rate(t + rng.uniform(-1e-4, 1e-4, t.size))
    assert fs == 64.0 and n_dup == 0  # snapped: within 0.1% of 64
    fs, n_dup = measure_rate(np.sort(np.concatenate([t, t[:10]])))
    assert fs == 64.0 and n_dup == 10
    assert measure_rate(np.arange(0, 10, 1 / 33.3))[0] == pytest.approx(33.3)
    with pytest.raises(BadRecordingError, match="distinct"):
        measure_rate(np.zeros(5))


def test_integer_rails_and_missing():
    assert integer_rails(np.array([1.5, 2.0])) is None
    assert integer_rails(np.array([0.0, 4095.0, 100.0])) == (0.0, 4095.0)
    assert integer_rails(np.array([-5.0, 300.0])) == (-512.0, 511.0)
    assert integer_rails(np.array([1, 2]), np.dtype(np.int16)) == (-32768.0, 32767.0)
    x = mark_missing(np.array([1.0, np.inf, 4095.0, 7.0, 0.0]), (0.0, 4095.0))
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


def test_headerless_table_whose_first_sample_is_missing(tmp_path):
    """An empty first PPG field must not make the time column look like the only signal."""
    x = np.round(pulse(N, FS), 6)
    path = write_table(tmp_path / "gap_first.csv", {"t": (np.arange(N) / FS).tolist(), "v": x.tolist()},
                       header=False)
    lines = path.read_text().splitlines()
    lines[0] = lines[0].split(",")[0] + ","
    path.write_text("\n".join(lines) + "\n")
    rec = rf.read_recording(path)
    assert rec.info["time_column"] == "column 1" and rec.info["column"] == "column 2"
    assert np.allclose(rec.signal_T[1:], x[1:])


def test_headerless_two_signals_need_column(tmp_path):
    x = np.round(pulse(N, FS), 6)
    path = write_table(tmp_path / "two.csv", {"a": (-x).tolist(), "b": x.tolist()}, header=False)
    with pytest.raises(BadRecordingError) as info:
        rf.read_recording(path, fs=FS)
    assert info.value.kind == "no_ppg_column" and "--column" in str(info.value)
    assert np.allclose(rf.read_recording(path, fs=FS, column="2").signal_T, x)


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


def test_column_on_an_edf_is_the_exact_label(tmp_path):
    """--column PPG must not give a faster channel whose label only contains 'PPG' (PPG_ambient)."""
    seconds = 60
    wave = np.round(1000 * np.sin(2 * np.pi * np.arange(64 * seconds) / 64)).astype(np.int64)
    common = dict(pmin=-32768, pmax=32767, dmin=-32768, dmax=32767, dim="")
    path = write_raw_edf(tmp_path / "two.edf", [dict(label="PPG", spr=64, digital=wave, **common),
                                                dict(label="PPG_ambient", spr=128,
                                                     digital=np.full(128 * seconds, 5), **common)])
    rec = rf.read_recording(path, column="ppg")
    assert rec.info["column"] == "PPG" and rec.fs == 64 and np.allclose(rec.signal_T, wave)
    assert rf.read_recording(path).info["column"] == "PPG_ambient"  # without --column the rate decides


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
    rec = rf.read_recording(good, fs=64)  # the stamps state the rate: --fs is for files that state none
    assert rec.fs == FS and len(rec.info["warnings"]) == 1
    assert "64 Hz" in rec.info["warnings"][0] and f"{FS:g} Hz" in rec.info["warnings"][0]
    rec = rf.read_recording(good, fs=FS)
    assert rec.fs == FS and rec.info["warnings"] == []


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


def test_wfdb_data_file_named_in_the_header(tmp_path):
    """A header may name any data file (signals.dat): the cache signature covers it, and a glob over the
    folder does not take it for a recording of its own."""
    import wfdb

    from sleepppg.nights import resolve_edf_inputs

    wfdb.wrsamp("night", fs=FS, units=["NU"], sig_name=["PLETH"], p_signal=np.round(pulse(N, FS) * 1000)[:, None],
                fmt=["16"], adc_gain=[1.0], baseline=[0], write_dir=str(tmp_path))
    (tmp_path / "night.dat").rename(tmp_path / "signals.dat")
    header = tmp_path / "night.hea"
    header.write_text(header.read_text().replace("night.dat", "signals.dat"))
    assert [p.name for p in rf.recording_files(header)] == ["night.hea", "signals.dat"]
    assert resolve_edf_inputs(str(tmp_path / "*"), ppg=True) == [header]
    assert rf.read_recording(header).info["column"] == "PLETH"


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
    fields = {"TIMESTAMP": "{0:.6f}", "BVP": "{1:.3f}", "Sleep_Stage": "{2}", "ECG": "{3:.4f}", "IBI": ""}
    row = ",".join(fields.get(c, "1.0") for c in names)
    ecg_T = np.sin(np.arange(n) / 3)
    lines = [row.format(i / fs, b, st, e) for i, (b, st, e) in enumerate(zip(bvp.tolist(), stage.tolist(),
                                                                            ecg_T.tolist()))]
    path.write_text(",".join(names) + "\n" + "\n".join(lines) + "\n")
    return path


def test_epoch_labels_majority_matches_slow_version():
    rng = np.random.default_rng(0)
    fs = 4.0
    codes = rng.choice([-2, -1, 0, 1, 2, 3], size=int(fs * 30 * 7.5)).astype(np.int8)
    fast = epoch_labels(codes, fs, n_windows=10)
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
    out = read_dreamt(path, n_windows=10)
    assert out["fs"] == 64.0 and out["info"]["lights_off_s"] == 45.0 and out["info"]["fs_found"] == 64.0
    # epochs: [0,30) W, [30,60) W, [60,90) N2, [90,120) N2 15 s + N3 15 s -> tie: scored, lower class (Light)
    # [120,150) N3 15 + R 15 -> Deep; [150,180) R; [180,210) R 5 s + Missing 20 s -> unscored; then padding
    assert out["labels_W"].tolist() == [0, 0, 1, 1, 2, 3, -1, -1, -1, -1]
    assert out["ppg"].size == pytest.approx(195 * 64, abs=1) and out["ecg"].size == out["ppg"].size
    assert dreamt_subject_id(path) == "S002"


def test_dreamt_stage_spellings_and_unknown_values(tmp_path):
    """Wake, REM and N4 map by the one table (sleepppg.stages); an unknown value is unscored and named with its
    share, a majority of unknown values refuses the participant by value."""
    path = write_dreamt(tmp_path / "S004_whole_df.csv",
                        [("P", 10), ("Wake", 30), ("N4", 30), ("REM", 30), ("Stg9", 30), ("wake", 30)])
    out = read_dreamt(path, n_windows=6)
    assert out["labels_W"].tolist() == [0, 2, 3, -1, 0, -1]
    assert out["info"]["warnings"] == ["S004_whole_df.csv: unknown stage 'Stg9' in 1,920 samples: left unscored"]
    mostly = write_dreamt(tmp_path / "S005_whole_df.csv", [("P", 10), ("W", 30), ("2", 30), ("Stg9", 30)])
    with pytest.raises(BadRecordingError, match=r"3,840 of 5,760 samples .*'2' in 1,920 samples") as err:
        read_dreamt(mostly, n_windows=4)  # a digit is no DREAMT stage name: unknown, not guessed
    assert err.value.kind == "unknown_stages"


@pytest.mark.parametrize("case, kind", [
    ("no_stage_column", "missing_column"),
    ("no_bvp", "missing_column"),
    ("only_p", "no_stages"),
    ("bad_time", "bad_timestamps"),
    ("stray_time", "bad_timestamps"),
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
    elif case == "stray_time":  # one corrupt stamp far in the future: a grid of petabytes, were it built
        write_dreamt(path, stages)
        lines = path.read_text().splitlines()
        lines[-1] = "1e13" + lines[-1][lines[-1].index(","):]
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
        read_dreamt(path, n_windows=10)
    assert info.value.kind == kind and "S009_whole_df.csv" in str(info.value)


def test_find_dreamt_files(tmp_path):
    for name in ("S002_whole_df.csv", "S003_whole_df.csv", "S003_PSG_df.csv", "notes.txt"):
        (tmp_path / name).write_text("x\n")
    files, duplicates = find_dreamt_files(tmp_path)
    assert sorted(files) == ["S002", "S003"] and list(duplicates) == ["S003"]


# ----------------------------------------------------------------------------------------------------------
# DREAMT extraction: CSV -> the three HDF5 files -> the dataset


def test_dreamt_extraction_to_hdf5_and_dataset(tmp_path, capsys):
    import h5py

    import extract_mesa_data
    from multimodal_dataset_aligned import MultiModalSleepDataset, PPGOnlyDataset
    from sleepppg.constants import ECG_FILE, INDEX_FILE, PPG_FILE

    csv_dir, out = tmp_path / "data_64Hz", tmp_path / "dreamt-x"
    csv_dir.mkdir()
    stages = [("P", 20), ("W", 90), ("N1", 30), ("N2", 60), ("N3", 60), ("R", 60)]  # 300 s after lights-off
    for i, sid in enumerate(("S002", "S003", "S004")):
        write_dreamt(csv_dir / f"{sid}_whole_df.csv", stages, seed=i, ecg=sid == "S003")
    write_dreamt(csv_dir / "S005_whole_df.csv", [("P", 30), ("Missing", 90)])  # no stages
    write_dreamt(csv_dir / "S006_whole_df.csv", stages, columns=[c for c in DREAMT_COLUMNS if c != "BVP"])
    (csv_dir / "S007_whole_df.csv").write_text("")  # empty
    args = ["--format", "dreamt", "--csv-dir", str(csv_dir), "--out-dir", str(out), "--workers", "1",
            "--windows-per-subject", "12"]
    assert extract_mesa_data.main(args) == 1  # three bad subjects
    failed = {f["id"]: f["kind"] for f in json.loads((out / "failed_subjects.json").read_text())}
    assert failed == {"S005": "no_stages", "S006": "missing_column", "S007": "empty_file"}
    with h5py.File(out / PPG_FILE) as f:
        assert f["ppg"].shape == (36, 1024) and f["subject_ids"][:].tolist() == [b"S002"] * 12 + [b"S003"] * 12 \
            + [b"S004"] * 12
        labels = f["labels"][:12].tolist()
    assert labels == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3, -1, -1]  # 10 epochs from lights-off, then padding
    with h5py.File(out / ECG_FILE) as f:
        assert f["has_real_ecg"][:].tolist() == [False] * 12 + [True] * 12 + [False] * 12
    with h5py.File(out / INDEX_FILE) as f:
        assert f["subjects/S003"].attrs["has_ecg"] and f["subjects/S002"].attrs["n_recorded_windows"] == 10

    # the dataset reads it (random 80/20 split: DREAMT IDs are not on the SleepPPG-Net test list)
    kwargs = dict(windows_per_subject=12, use_sleepppg_test_set=False)
    items = [PPGOnlyDataset(out, split=s, **kwargs) for s in ("train", "val", "test")]
    assert sorted(sid for d in items for sid in d.subjects) == ["S002", "S003", "S004"]
    ppg, lab = next(d for d in items if len(d))[0]
    assert ppg.shape == (1, 12 * 1024) and lab.tolist() == labels  # every participant has the same stages
    assert len(MultiModalSleepDataset(out, split="train", **kwargs)) == len(items[0])

    # a rerun with nothing new is up to date (nothing rewritten); the failures are reported again
    written = (out / PPG_FILE).stat().st_mtime_ns
    capsys.readouterr()
    assert extract_mesa_data.main(args) == 1
    assert "up to date" in capsys.readouterr().out and (out / PPG_FILE).stat().st_mtime_ns == written


def test_dreamt_bad_participant_from_the_command_line(tmp_path):
    """`python extract_mesa_data.py` (the module runs as __main__): a
    bad participant is counted with its own reason and the good one is written."""
    import subprocess
    import sys

    from helpers import REPO

    csv_dir = tmp_path / "data_64Hz"
    csv_dir.mkdir()
    stages = [("P", 20), ("W", 90), ("N2", 90)]
    write_dreamt(csv_dir / "S002_whole_df.csv", stages)
    write_dreamt(csv_dir / "S003_whole_df.csv", [("P", 30), ("Missing", 90)])  # no stages
    proc = subprocess.run([sys.executable, str(REPO / "extract_mesa_data.py"), "--format", "dreamt", "--csv-dir",
                           str(csv_dir), "--out-dir", str(tmp_path / "out"), "--workers", "1",
                           "--windows-per-subject", "8"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    failed = json.loads((tmp_path / "out" / "failed_subjects.json").read_text())
    assert [(f["id"], f["kind"]) for f in failed] == [("S003", "no_stages")]
    assert (tmp_path / "out" / "mesa_ppg_with_labels.h5").is_file()


def test_dreamt_extraction_setup_errors(tmp_path, capsys):
    import extract_mesa_data

    out = tmp_path / "x"
    code = extract_mesa_data.main(["--format", "dreamt", "--csv-dir", str(tmp_path / "none"), "--out-dir", str(out)])
    assert code == 2 and "csv dir" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    code = extract_mesa_data.main(["--format", "dreamt", "--csv-dir", str(tmp_path / "empty"), "--out-dir", str(out)])
    assert code == 2 and "no CSV files" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------
# Staging any recording: inference_ppg_only.py --ppg

N_WIN = 40  # model span in these tests: 40 x 30 s = 20 min
STAGE_FS = 64.0
STAGE_MIN = 12  # recordings of 12 min = 24 epochs


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "best_model.pth", N_WIN)


def stage(tmp_path: Path, checkpoint: Path, *extra: str) -> tuple[int, dict, Path]:
    """inference main() on a config with paths under tmp_path; returns (exit status, result.json, run folder)."""
    import yaml

    import inference_ppg_only as inf
    from sleepppg.config import load_config

    repo = Path(inf.__file__).resolve().parent
    cfg = load_config(repo / "configs" / "config_demo.yaml", {
        "inference.cache_root": str(tmp_path / "cache"), "inference.batch_size": 2,
        "inference.best_model": str(checkpoint), "gpu.mixed_precision": False, "preprocessing.workers": 1})
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
    code = inf.main(["--config", str(cfg_path), "--out", str(out), "--device", "cpu", *extra])
    runs = sorted(out.iterdir()) if out.exists() else []
    if not runs:
        return code, {}, out
    return code, json.loads((runs[-1] / "result.json").read_text()), runs[-1]


def read_predictions(run_dir: Path, sid: str) -> tuple[list[str], np.ndarray]:
    """(pred_name per row, probabilities (rows, 4), NaN where empty) of one night's CSV."""
    rows = [line.split(",") for line in (run_dir / "csv" / sid / f"{sid}.csv").read_text().splitlines()[1:]]
    probs = np.array([[float(v) if v else np.nan for v in r[7:11]] for r in rows])
    return [r[3] for r in rows], probs


def write_edf(path: Path, x: np.ndarray, fs: float, label: str) -> Path:
    """An EDF whose physical values equal `x` exactly (integers, gain 1), plus a 1-Hz SpO2 channel."""
    from edfio import Edf, EdfSignal

    spo2 = np.full(int(x.size / fs), 96.0)
    Edf([EdfSignal(x, fs, label=label, physical_range=(-32768, 32767), digital_range=(-32768, 32767)),
         EdfSignal(spo2, 1, label="SpO2", physical_range=(0, 100))], data_record_duration=1).write(path)
    return path


def test_every_format_gives_the_edf_predictions(tmp_path, checkpoint):
    import datetime as dt

    import wfdb

    n = int(STAGE_MIN * 60 * STAGE_FS)
    x = np.round(pulse(n, STAGE_FS, seed=5) * 3000)  # integer-valued: stored exactly by EDF, WFDB and text
    rec = tmp_path / "rec"
    rec.mkdir()
    write_edf(rec / "a_edf.edf", x, STAGE_FS, "Pleth")
    t = np.arange(n) / STAGE_FS
    write_table(rec / "b_header.csv", {"time": t.tolist(), "Pleth": x.astype(int).tolist()})
    write_table(rec / "c_noheader.txt", {"v": x.astype(int).tolist()}, header=False)
    write_table(rec / "d_ms.tsv", {"timestamp_ms": (t * 1000).tolist(), "ppg": x.tolist()}, delimiter="\t")
    start = dt.datetime(2024, 5, 1, 23, 0, 0)
    write_table(rec / "e_datetime.csv", {"datetime": [(start + dt.timedelta(seconds=s)).isoformat() for s in t],
                                         "bvp": x.tolist()})
    np.save(rec / "f_npy.npy", x)
    wfdb.wrsamp("g_wfdb", fs=STAGE_FS, units=["NU"], sig_name=["PLETH"], p_signal=x[:, None], fmt=["16"],
                adc_gain=[1.0], baseline=[0], write_dir=str(rec))
    code, result, run_dir = stage(tmp_path, checkpoint, "--ppg", str(rec), "--fs", "64")
    assert code == 0, result.get("failed")
    items = {i["subject_id"]: i for i in result["nights"]}
    assert sorted(items) == ["a_edf", "b_header", "c_noheader", "d_ms", "e_datetime", "f_npy", "g_wfdb"]
    formats = {sid: i["source_format"] for sid, i in items.items()}
    assert formats == {"a_edf": "edf", "b_header": "table", "c_noheader": "table", "d_ms": "table",
                       "e_datetime": "table", "f_npy": "npy", "g_wfdb": "wfdb"}
    assert items["d_ms"]["ppg_channel"] == "ppg" and items["g_wfdb"]["ppg_channel"] == "PLETH"
    assert result["mode"] == "PPG"
    ref_names, ref_probs = read_predictions(run_dir, "a_edf")
    assert len(ref_names) == STAGE_MIN * 2
    for sid, item in items.items():
        assert item["n_epochs_staged"] == STAGE_MIN * 2 and not item["truncated"] and item["gap_epochs"] == []
        assert item["ppg_fs_found"] == STAGE_FS and item["ppg_fs"] == STAGE_FS
        names, probs = read_predictions(run_dir, sid)
        assert names == ref_names and np.allclose(probs, ref_probs, atol=1e-5), sid
        assert (run_dir / "graph" / sid / f"{sid}.png").stat().st_size > 1000
        assert item["sleep_report"]["TIB"] == STAGE_MIN

    # the same signal in the EDF path (--edf), and an EDF with an unusual label picked by --column
    code, edf_result, edf_run = stage(tmp_path, checkpoint, "--edf", str(rec / "a_edf.edf"))
    assert code == 0 and np.allclose(read_predictions(edf_run, "a_edf")[1], ref_probs, atol=1e-5)
    odd_edf = write_edf(tmp_path / "h_odd.edf", x, STAGE_FS, "Finger pulse")
    code, odd, odd_run = stage(tmp_path, checkpoint, "--ppg", str(odd_edf))
    assert code == 1 and odd["failed"][0]["kind"] == "no_ppg_channel"  # no label like pleth, ppg, bvp
    code, odd, odd_run = stage(tmp_path, checkpoint, "--ppg", str(odd_edf), "--column", "finger PULSE")
    assert code == 0 and odd["nights"][0]["ppg_channel"] == "Finger pulse"
    assert np.allclose(read_predictions(odd_run, "h_odd")[1], ref_probs, atol=1e-5)

    # a second run reuses the caches (a_edf's was rebuilt by the --edf run: other settings), same predictions
    code, again, again_run = stage(tmp_path, checkpoint, "--ppg", str(rec / "*"), "--fs", "64")
    assert code == 0 and {i["subject_id"]: i["cache_used"] for i in again["nights"]} == {
        sid: sid != "a_edf" for sid in items}
    for sid in items:  # probabilities, not stage names: the tiny test model stages every epoch alike
        assert np.allclose(read_predictions(again_run, sid)[1], ref_probs, atol=1e-5), sid


def test_a_bdf_night_is_staged_like_the_same_night_in_edf(tmp_path, checkpoint):
    """--ppg on a 24-bit BDF: the same physical values as a 16-bit EDF (digital values and range x 256) give the
    same stages through the whole pipeline (reader, preprocessing, cache, model, CSV)."""
    rng = np.random.default_rng(5)
    n = int(STAGE_MIN * 60 * STAGE_FS)
    t = np.arange(n) / STAGE_FS
    digital = (12000 * np.sin(2 * np.pi * 1.1 * t) + 1500 * rng.standard_normal(n)).astype(np.int64)
    fs = int(STAGE_FS)
    edf = write_raw_edf(tmp_path / "night_edf.edf", [dict(label="Pleth", spr=fs, digital=digital, pmin=-100,
                                                           pmax=100, dmin=-32768, dmax=32767, dim="")])
    bdf = write_raw_edf(tmp_path / "night_bdf.bdf", [dict(label="Pleth", spr=fs, digital=digital * 256, pmin=-100,
                                                           pmax=100, dmin=-32768 * 256, dmax=32767 * 256, dim="")],
                        bdf=True)
    code_e, result_e, run_e = stage(tmp_path, checkpoint, "--ppg", str(edf))
    code_b, result_b, run_b = stage(tmp_path, checkpoint, "--ppg", str(bdf))
    assert code_e == 0 == code_b and result_b["n_nights_failed"] == 0
    assert result_b["nights"][0]["ppg_channel"] == "Pleth"
    names_e, probs_e = read_predictions(run_e, "night_edf")
    names_b, probs_b = read_predictions(run_b, "night_bdf")
    assert len(names_b) == STAGE_MIN * 2 and names_b == names_e
    np.testing.assert_allclose(probs_b, probs_e, atol=1e-5)


def test_gaps_are_not_staged_and_are_marked(tmp_path, checkpoint):
    import datetime as dt

    rng = np.random.default_rng(2)
    n = int(STAGE_MIN * 60 * STAGE_FS)
    t = np.arange(n) / STAGE_FS + rng.uniform(-0.003, 0.003, n)  # jittered clock
    keep = (t < 200) | (t >= 290)  # 90 s without samples (epochs 6..9 touched)
    start = dt.datetime(2024, 5, 1, 23, 0, 0)
    stamps = [(start + dt.timedelta(seconds=float(s))).isoformat(timespec="microseconds") for s in t[keep]]
    path = write_table(tmp_path / "gappy.csv",
                       {"time": stamps, "pleth": np.round(pulse(n, STAGE_FS)[keep], 5).tolist()})
    code, result, run_dir = stage(tmp_path, checkpoint, "--ppg", str(path))
    assert code == 0
    item = result["nights"][0]
    assert item["gap_epochs"] == [6, 7, 8, 9] and item["n_epochs_staged"] == STAGE_MIN * 2
    assert len(item["gaps"]) == 1 and item["gaps"][0][1] == pytest.approx(90, abs=0.1)
    names, probs = read_predictions(run_dir, "gappy")
    assert [i for i, name in enumerate(names) if name == "Gap"] == [6, 7, 8, 9]
    assert np.isnan(probs[6:10]).all() and np.allclose(np.delete(probs, [6, 7, 8, 9], axis=0).sum(1), 1, atol=1e-5)
    header = (run_dir / "csv" / "gappy" / "gappy.csv").read_text().splitlines()
    assert all(line.count(",") == header[0].count(",") for line in header)
    report = item["sleep_report"]
    # the gap's epochs keep their place in time: in the time in bed (yasa's "UNS"), in no stage
    assert report["TIB"] == STAGE_MIN and report["n_epochs_with_stage"] == STAGE_MIN * 2 - 4
    assert report["WAKE"] + report["TST"] == pytest.approx(STAGE_MIN - 2)


def test_rates_lengths_and_truncation(tmp_path, checkpoint):
    rec = tmp_path / "rec"
    rec.mkdir()
    np.save(rec / "r16.npy", pulse(16 * 60 * 5, 16.0))  # 5 min at 16 Hz
    np.save(rec / "r1000.npy", pulse(1000 * 60 * 5, 1000.0))  # 5 min at 1 kHz
    np.save(rec / "long.npy", pulse(64 * 60 * 25, 64.0))  # 25 min: longer than the 20-min span
    for name, fs in (("r16", 16), ("r1000", 1000), ("long", 64)):
        code, result, _ = stage(tmp_path, checkpoint, "--ppg", str(rec / f"{name}.npy"), "--fs", str(fs))
        assert code == 0, result
        item = result["nights"][0]
        assert item["ppg_fs"] == fs
        if name == "long":
            assert item["truncated"] is True and item["n_epochs_staged"] == N_WIN
            assert item["recording_hours"] == pytest.approx(25 / 60)
        else:
            assert item["n_epochs_staged"] == 10 and not item["truncated"]


def test_bad_recordings_each_fail_with_one_line(tmp_path, checkpoint, capsys):
    import wfdb

    rec = tmp_path / "rec"
    rec.mkdir()
    n = int(6 * 60 * 32)
    np.save(rec / "good.npy", pulse(n, 32.0))
    (rec / "notes.xyz").write_text("hello\n")
    write_table(rec / "nocolumn.csv", {"a": pulse(n, 32).tolist(), "b": pulse(n, 32).tolist()})
    write_table(rec / "slow.csv", {"time": (np.arange(3000) / 10).tolist(), "pleth": pulse(3000, 10).tolist()})
    write_table(rec / "allnan.csv", {"pleth": ["nan"] * n})
    write_table(rec / "constant.csv", {"pleth": [5.0] * n})
    write_table(rec / "short.csv", {"pleth": pulse(32 * 20, 32).tolist()})  # 20 s
    wfdb.wrsamp("nodata", fs=32, units=["NU"], sig_name=["PLETH"], p_signal=pulse(n, 32)[:, None], fmt=["16"],
                write_dir=str(rec))
    (rec / "nodata.dat").unlink()
    (tmp_path / "nofs").mkdir()
    np.save(tmp_path / "nofs" / "nofs.npy", pulse(n, 32.0))
    capsys.readouterr()
    code, result, _ = stage(tmp_path, checkpoint, "--ppg", str(rec / "*"), "--fs", "32")
    assert code == 1 and [i["subject_id"] for i in result["nights"]] == ["good"]
    kinds = {f["subject_id"]: f["kind"] for f in result["failed"]}
    assert kinds == {"notes": "unknown_format", "nocolumn": "no_ppg_column", "slow": "low_sampling_rate",
                     "allnan": "no_signal", "constant": "flat_ppg", "short": "too_short",
                     "nodata": "missing_data_file"}
    out = capsys.readouterr().out
    failed_lines = [line for line in out.splitlines() if line.startswith("FAILED")]
    assert len(failed_lines) == 7
    for f in result["failed"]:
        line = next(line for line in failed_lines if line.startswith(f"FAILED {f['subject_id']} ("))
        assert Path(f["file"]).name in line  # names the file
    assert "10 Hz" in next(line for line in failed_lines if "slow" in line)
    code, result, _ = stage(tmp_path, checkpoint, "--ppg", str(tmp_path / "nofs"))
    assert code == 1 and result["failed"][0]["kind"] == "needs_fs" and "--fs" in result["failed"][0]["reason"]


def test_bad_setup_exits_2(tmp_path, checkpoint):
    assert stage(tmp_path, checkpoint, "--ppg", str(tmp_path / "missing.csv"))[0] == 2
    (tmp_path / "empty").mkdir()
    assert stage(tmp_path, checkpoint, "--ppg", str(tmp_path / "empty"))[0] == 2
    assert stage(tmp_path, checkpoint, "--ppg", str(tmp_path / "x.csv"), "--edf", str(tmp_path / "y.edf"))[0] == 2


def test_synthetic_dreamt_cohort_extracts(tmp_path):
    """make_synthetic_mesa.py --format dreamt (the DREAMT-shaped synthetic cohort) -> HDF5 with its stages."""
    import h5py

    import extract_mesa_data
    import make_synthetic_mesa
    from sleepppg.constants import PPG_FILE
    from sleepppg.synthetic.dreamt import dreamt_path

    assert make_synthetic_mesa.main(["--format", "dreamt", "--out", str(tmp_path / "dreamt"), "--n-subjects", "2",
                                     "--hours", "0.4"]) == 0
    csv_dir = dreamt_path(tmp_path / "dreamt", "x").parent
    ids = sorted(find_dreamt_files(csv_dir)[0])
    out = tmp_path / "x"
    assert extract_mesa_data.main(["--format", "dreamt", "--csv-dir", str(csv_dir), "--out-dir", str(out),
                                   "--workers", "1", "--windows-per-subject", "60"]) == 0
    with h5py.File(out / PPG_FILE) as f:
        assert f["ppg"].shape == (60 * len(ids), 1024)
        for i, sid in enumerate(ids):
            expected = read_dreamt(csv_dir / f"{sid}_whole_df.csv", n_windows=60)["labels_W"]
            assert np.array_equal(f["labels"][i * 60:(i + 1) * 60], expected) and (expected >= 0).sum() > 20
