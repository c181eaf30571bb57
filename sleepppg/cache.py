"""The per-night cache of inference: a night's preprocessed PPG windows, reused while its recording and the
preprocessing settings are unchanged and its bytes are intact.

Layout: `<cache_root>/<subject_id>/ppg_windows.npy` (float32, n_windows x 1024: z-scored PPG at 34.13 Hz,
zero-padded past the recording) and `meta.json` (the recording's signature, the settings, the night's facts
and the sha256 of the windows), written last. A cache is used only when meta.json matches the recording
(absolute path, size, mtime_ns; for a WFDB record also its data files) and the settings (`cache_settings`:
method, channel patterns, n_windows, PREPROCESSING_VERSION; in --ppg mode also rate, column and gap limit),
the array has the expected header, its bytes match the checksum and every value is finite. Anything else is
a reason to rebuild, which `load_cache` returns as text for the log.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from sleepppg.constants import SAMPLES_PER_WINDOW

# one owner of the preprocessing version and of what a preprocessed night depends on: sleepppg.preprocessing
from sleepppg.preprocessing import file_signature, preprocessing_settings
from sleepppg.runio import atomic_output, json_safe, write_text_atomic

CACHE_WINDOWS_FILE = "ppg_windows.npy"  # float32 (n_windows, 1024), z-scored PPG at 34.13 Hz, zero-padded
CACHE_META_FILE = "meta.json"  # recording signature + settings + night facts + windows_sha256; written last
NO_CACHE = "no cache yet"  # load_cache's reason when there is nothing to reuse (not worth a log line)


def cache_settings(cfg: dict, n_windows: int) -> dict:
    """Every setting a cached night depends on: `preprocessing_settings`, and with inference.ppg_file (--ppg:
    any format, read by sleepppg.formats) also the rate, the column and the gap limit."""
    pre_cfg, inf_cfg = cfg["preprocessing"], cfg["inference"]
    settings = preprocessing_settings(pre_cfg["resample_method"], pre_cfg["ppg_channels"], n_windows)
    if inf_cfg["ppg_file"]:
        settings.update({"source": "ppg", "ppg_fs": inf_cfg["ppg_fs"], "ppg_column": inf_cfg["ppg_column"],
                         "max_gap_s": pre_cfg["max_gap_s"]})
    return settings


def recording_signature(path: str | os.PathLike, any_format: bool = False) -> dict | None:
    """`file_signature` of a recording (None when it is absent); with `any_format` (--ppg mode) also of the
    data files a WFDB header names.

    Raises:
        BadRecordingError: with `any_format`, an extension sleepppg.formats does not read.
    """
    signature = file_signature(path)
    if signature is None or not any_format:
        return signature
    from sleepppg import formats

    formats.recording_format(path)  # an unknown extension fails before any cache is read
    signature["data_files"] = [file_signature(p) for p in formats.recording_files(path)[1:]]
    return signature


def windows_checksum(windows_WS: np.ndarray) -> str:
    """sha256 of the cached array's bytes (float32, C order): catches damage that leaves size and shape intact."""
    return hashlib.sha256(np.ascontiguousarray(windows_WS, dtype=np.float32).tobytes()).hexdigest()


def _npy_header(path: Path) -> tuple[tuple, np.dtype]:
    """(shape, dtype) from a .npy header, read before the data so a damaged header cannot ask for a huge array."""
    with open(path, "rb") as fh:
        major, _ = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(fh)
    return shape, dtype


def load_cache(cache_dir: Path, signature: dict, settings: dict) -> tuple[np.ndarray | None, dict | None, str]:
    """Read a cached night if it is valid for this recording and these settings.

    Checks, in order: meta.json is a JSON object written for this recording (path, size, mtime) and these
    settings; its n_recorded_windows is 1..n_windows; it holds a windows_sha256; the .npy header says float32
    (n_windows, 1024); the data's sha256 equals meta.json's `windows_sha256`; every value is finite.

    Returns:
        (ppg_windows_WS, meta, "") when valid; (None, None, reason) when missing (reason NO_CACHE), stale or
        damaged.
    """
    meta_path, npy_path = cache_dir / CACHE_META_FILE, cache_dir / CACHE_WINDOWS_FILE
    if not meta_path.exists() and not npy_path.exists():
        return None, None, NO_CACHE
    n_windows = settings["n_windows"]
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict):
            return None, None, f"corrupt cache (meta.json holds a JSON {type(meta).__name__}, not an object)"
        if meta.get("edf") != signature:
            return None, None, "the EDF changed (path, size or mtime differ)"
        if meta.get("settings") != settings:
            return None, None, "the preprocessing settings changed"
        n_recorded = meta.get("n_recorded_windows")
        if isinstance(n_recorded, bool) or not isinstance(n_recorded, int) or not 0 < n_recorded <= n_windows:
            return None, None, f"corrupt cache (n_recorded_windows {n_recorded!r} in meta.json)"
        if not isinstance(meta.get("windows_sha256"), str):
            return None, None, "corrupt cache (no windows_sha256 in meta.json: written by an older version)"
        shape, dtype = _npy_header(npy_path)
        if dtype != np.float32 or tuple(shape) != (n_windows, SAMPLES_PER_WINDOW):
            return None, None, f"corrupt cache (array {dtype} {tuple(shape)}, expected float32 " \
                               f"{(n_windows, SAMPLES_PER_WINDOW)})"
        windows_WS = np.load(npy_path, allow_pickle=False)
    except FileNotFoundError as err:
        return None, None, f"incomplete cache ({Path(err.filename).name} missing)"
    except Exception as err:  # noqa: BLE001 - the cache boundary: any damage means "rebuild", with the reason
        # (bad JSON, a truncated .npy, a garbled header that numpy's parser fails on in its own ways ...)
        return None, None, f"corrupt cache ({type(err).__name__}: {err})"
    if windows_checksum(windows_WS) != meta["windows_sha256"]:
        return None, None, f"corrupt cache ({CACHE_WINDOWS_FILE} does not match the checksum in {CACHE_META_FILE})"
    if not np.isfinite(windows_WS).all():
        return None, None, "corrupt cache (non-finite values)"
    return windows_WS, meta, ""


def write_cache(cache_dir: Path, windows_WS: np.ndarray, meta: dict) -> None:
    """Write a night's cache atomically: drop the old meta.json, write the .npy, then meta.json (with the
    array's checksum) last, so a crash at any point leaves either a complete valid cache or one that
    `load_cache` rejects.

    Raises:
        OSError: the folder or a file cannot be written.
    """
    windows_WS = np.ascontiguousarray(windows_WS, dtype=np.float32)
    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / CACHE_META_FILE).unlink(missing_ok=True)
    with atomic_output(cache_dir / CACHE_WINDOWS_FILE) as tmp:
        with open(tmp, "wb") as fh:  # a file handle: np.save on a path would append ".npy" to the temp name
            np.save(fh, windows_WS, allow_pickle=False)
    meta = {**meta, "windows_sha256": windows_checksum(windows_WS)}
    write_text_atomic(cache_dir / CACHE_META_FILE, json.dumps(json_safe(meta), indent=2))
