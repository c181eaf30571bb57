"""Tests for sleepppg.cache: a night's cache round-trips, goes stale with its recording or settings, and is
refused when damaged (a flipped byte in the data, a truncated or missing file, a bad meta.json)."""
from __future__ import annotations

import os

import numpy as np
import pytest
from helpers import fake_edf, npy_data_offset

from sleepppg.cache import (
    CACHE_META_FILE,
    CACHE_WINDOWS_FILE,
    NO_CACHE,
    cache_settings,
    load_cache,
    recording_signature,
    windows_checksum,
    write_cache,
)
from sleepppg.constants import SAMPLES_PER_WINDOW
from sleepppg.preprocessing import preprocessing_settings


def test_cache_roundtrip_and_invalidation(tmp_path):
    edf = fake_edf(tmp_path)
    settings = preprocessing_settings("linear", ["Pleth", "ppg"], n_windows=6)
    windows = np.random.default_rng(0).standard_normal((6, SAMPLES_PER_WINDOW)).astype(np.float32)
    cache = tmp_path / "cache" / "0042"
    assert load_cache(cache, recording_signature(edf), settings)[2] == NO_CACHE == "no cache yet"
    write_cache(cache, windows, {"edf": recording_signature(edf), "settings": settings, "n_recorded_windows": 5})
    got, meta, reason = load_cache(cache, recording_signature(edf), settings)
    assert reason == "" and np.array_equal(got, windows) and meta["n_recorded_windows"] == 5
    assert meta["windows_sha256"] == windows_checksum(windows)
    assert sorted(p.name for p in cache.iterdir()) == ["meta.json", "ppg_windows.npy"]  # no temp files left

    # other settings -> stale
    for other in (preprocessing_settings("polyphase", ["pleth", "ppg"], 6),
                  preprocessing_settings("linear", ["pleth"], 6),
                  preprocessing_settings("linear", ["pleth", "ppg"], 7)):
        assert load_cache(cache, recording_signature(edf), other)[0] is None
    # the EDF changes (new mtime) -> stale
    st = edf.stat()
    os.utime(edf, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert "EDF changed" in load_cache(cache, recording_signature(edf), settings)[2]


@pytest.mark.parametrize("damage", ["truncate_npy", "delete_npy", "bad_json", "json_list", "wrong_shape",
                                    "delete_meta"])
def test_corrupt_cache_is_rejected(tmp_path, damage):
    edf = fake_edf(tmp_path)
    sig = recording_signature(edf)
    settings = preprocessing_settings("linear", ["pleth"], n_windows=4)
    cache = tmp_path / "c"
    write_cache(cache, np.ones((4, SAMPLES_PER_WINDOW), np.float32),
                {"edf": sig, "settings": settings, "n_recorded_windows": 4})
    npy, meta = cache / CACHE_WINDOWS_FILE, cache / CACHE_META_FILE
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
    got, _, reason = load_cache(cache, sig, settings)
    assert got is None and reason and reason != "no cache yet"


def test_one_flipped_byte_in_the_data_is_refused(tmp_path):
    """A bit flip in the array data (not the header) keeps size, shape, dtype, mtime and finite values: only
    the checksum written at save tells."""
    edf = fake_edf(tmp_path)
    sig = recording_signature(edf)
    settings = preprocessing_settings("linear", ["pleth"], n_windows=4)
    windows = np.random.default_rng(1).standard_normal((4, SAMPLES_PER_WINDOW)).astype(np.float32)
    cache = tmp_path / "c"
    write_cache(cache, windows, {"edf": sig, "settings": settings, "n_recorded_windows": 4})
    npy = cache / CACHE_WINDOWS_FILE
    offset = npy_data_offset(npy) + 4 * 1000  # the low mantissa byte of one float32 (little-endian)
    data = bytearray(npy.read_bytes())
    data[offset] ^= 0x01
    npy.write_bytes(bytes(data))
    damaged = np.load(npy)
    assert damaged.shape == windows.shape and np.isfinite(damaged).all() and not np.array_equal(damaged, windows)
    got, meta, reason = load_cache(cache, sig, settings)
    assert got is None and meta is None
    assert reason == "corrupt cache (ppg_windows.npy does not match the checksum in meta.json)"


def test_cache_settings_cover_the_ppg_options():
    cfg = {"preprocessing": {"resample_method": "linear", "ppg_channels": ["Pleth"], "max_gap_s": 10.0},
           "inference": {"ppg_file": "", "ppg_fs": 64.0, "ppg_column": "bvp"}}
    assert cache_settings(cfg, 40) == preprocessing_settings("linear", ["pleth"], 40)
    cfg["inference"]["ppg_file"] = "night.csv"
    assert cache_settings(cfg, 40) == {**preprocessing_settings("linear", ["pleth"], 40), "source": "ppg",
                                       "ppg_fs": 64.0, "ppg_column": "bvp", "max_gap_s": 10.0}
