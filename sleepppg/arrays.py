"""PPG recordings stored as named arrays: NumPy archives (.npz) and MATLAB files (.mat: v4-v7 through
scipy.io.loadmat, v7.3 through h5py, as it is HDF5). pyPPG and the MIMIC PERform sets ship `Data` and `Fs`.

The signal is the array named by --column (any case), else the only numeric array of more than one sample,
else the first whose name contains one of the PPG patterns (pleth, ppg, bvp); it must be one signal (1-D, or
2-D with one row or column). The rate is a scalar stored under a key like `fs` (RATE_KEYS, any case), else
--fs. Structs, cells and text are not signals.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from sleepppg.channels import PPG_PATTERNS, find_ppg_channel
from sleepppg.errors import BadRecordingError

RATE_KEYS = ("fs", "fs_hz", "sfreq", "srate", "sr", "sampling_rate", "sample_rate", "samplerate",
             "sampling_frequency")  # a scalar under one of these names (any case) is the rate in Hz
MAGIC = {b"\x93NUMPY": "npy", b"PK\x03\x04": "npz", b"MATLAB 5.0 MAT-file": "mat", b"MATLAB 7.3 MAT-file": "mat",
         b"\x89HDF\r\n\x1a\n": "mat"}  # first bytes (HDF5's also at 512, after MATLAB 7.3's text header)
FORMAT_NAMES = {"npy": "a NumPy .npy array", "npz": "a NumPy .npz archive", "mat": "a MATLAB .mat file"}


def content_format(path: Path) -> str | None:
    """'npy', 'npz' or 'mat' from a file's first bytes (an HDF5 file counts as a MATLAB v7.3 file), else None."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(520)
    except OSError:
        return None
    for magic, kind in MAGIC.items():
        if head.startswith(magic) or (kind == "mat" and head[512:].startswith(magic)):
            return kind
    return None


def _is_signal(arr: np.ndarray) -> bool:
    return (isinstance(arr, np.ndarray) and arr.dtype.kind in "iuf" and arr.size > 1
            and (arr.ndim == 1 or (arr.ndim == 2 and 1 in arr.shape)))


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a .npz archive by name (no pickled objects).

    Raises:
        BadRecordingError 'unreadable_npz'.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, KeyError) as err:
        raise BadRecordingError(f"{path.name}: not a readable .npz archive: {err}", kind="unreadable_npz") from None


def load_mat(path: Path) -> dict[str, np.ndarray]:
    """The variables of a MATLAB file by name: v4-v7 through scipy.io.loadmat, v7.3 (HDF5) through h5py (its
    top-level numeric datasets).

    Raises:
        BadRecordingError 'unreadable_mat'.
    """
    from scipy.io import loadmat

    try:
        return {k: v for k, v in loadmat(path).items() if not k.startswith("__")}
    except NotImplementedError:  # MATLAB v7.3: an HDF5 file
        return _load_mat_hdf5(path)
    except (ValueError, OSError, TypeError, IndexError, EOFError) as err:
        import h5py

        if h5py.is_hdf5(path):  # an HDF5 file without MATLAB's header
            return _load_mat_hdf5(path)
        raise BadRecordingError(f"{path.name}: not a readable MATLAB file: {err}", kind="unreadable_mat") from None


def _load_mat_hdf5(path: Path) -> dict[str, np.ndarray]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return {name: np.asarray(item) for name, item in f.items()
                    if isinstance(item, h5py.Dataset) and item.dtype.kind in "iuf"
                    and item.attrs.get("MATLAB_class", b"double") not in (b"char", b"logical")}
    except (OSError, ValueError, TypeError) as err:
        raise BadRecordingError(f"{path.name}: not a readable MATLAB v7.3 (HDF5) file: {err}",
                                kind="unreadable_mat") from None


def pick_array(arrays: dict[str, np.ndarray], column: str | None, patterns: Sequence[str],
               path: Path) -> tuple[str, np.ndarray]:
    """(name, 1-D signal) of the PPG among named arrays (see the module docstring).

    Raises:
        BadRecordingError 'no_ppg_column' listing the arrays when none (or a named one that is no signal).
    """
    listing = ", ".join(f"{k} {getattr(v, 'dtype', type(v).__name__)} {getattr(v, 'shape', '')}"
                        for k, v in arrays.items()) or "none"
    signals = [k for k, v in arrays.items() if _is_signal(v)]
    if column:
        match = [k for k in arrays if k.lower() == column.lower()]
        if not match or match[0] not in signals:
            what = "is not one numeric signal" if match else "does not exist"
            raise BadRecordingError(f"{path.name}: array {column!r} {what}; arrays: {listing}",
                                    kind="no_ppg_column")
        name = match[0]
    elif len(signals) == 1:
        name = signals[0]
    else:
        name = find_ppg_channel(signals, [1.0] * len(signals), patterns) if signals else None
        if name is None:
            raise BadRecordingError(f"{path.name}: no PPG array (not exactly one numeric signal, none named like "
                                    f"{list(patterns)}); arrays: {listing}; pass --column with its name",
                                    kind="no_ppg_column")
    return name, np.asarray(arrays[name]).reshape(-1)


def stored_rate(arrays: dict[str, np.ndarray], path: Path) -> tuple[str | None, float | None]:
    """(key, rate in Hz) of the rate stored beside the signal, or (None, None) when there is none.

    Raises:
        BadRecordingError 'bad_rate' when a rate key holds no single positive finite number.
    """
    for key, value in arrays.items():
        if key.lower() not in RATE_KEYS:
            continue
        value = np.asarray(value)
        fs = float(value.reshape(-1)[0]) if value.size == 1 and value.dtype.kind in "iuf" else math.nan
        if not (math.isfinite(fs) and fs > 0):
            raise BadRecordingError(f"{path.name}: {key!r} is not a sampling rate in Hz (a single positive "
                                    f"number): {value.dtype} {value.shape}", kind="bad_rate")
        return key, fs
    return None, None


def read_arrays(path: Path, kind: str, column: str | None = None,
                patterns: Sequence[str] = PPG_PATTERNS) -> tuple[str, np.ndarray, str | None, float | None]:
    """A .npz (`kind` 'npz') or .mat ('mat') file -> (array name, 1-D signal, rate key or None, rate or None)."""
    arrays = load_npz(path) if kind == "npz" else load_mat(path)
    name, signal = pick_array(arrays, column, patterns, path)
    key, fs = stored_rate(arrays, path)
    return name, signal, key, fs
