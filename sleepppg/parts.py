"""Part files: one preprocessed subject on disk, `<out>/.parts/<id>.npz`, between its worker and assembly.

A part holds `ppg` float32 (W, 1024), `labels` int64 (W,), `ecg` float32 (W, 1024) when the subject has an ECG,
and `meta`, a JSON string: id, signature (`sleepppg.preprocessing.input_signature`: settings and source
files), has_ecg, n_recorded_windows, ppg_channel, ppg_fs, warnings. It is written under a temporary name and
renamed, so a run killed at any moment leaves whole parts only, which the next run reuses. np.savez stores
each array as a zip member with its CRC-32: reading an array in full checks it, so a damaged part is found
(and rebuilt) instead of being assembled.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from sleepppg import paths
from sleepppg.constants import SAMPLES_PER_WINDOW
from sleepppg.runio import atomic_output

PARTS_DIR = ".parts"  # under the output folder
# what np.load raises on a truncated, corrupted or foreign file
READ_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error)


class BadPartError(RuntimeError):
    """A part file is damaged (truncated, bad CRC, wrong arrays); `part` is its path. It is rebuilt."""

    def __init__(self, message: str, part: str | os.PathLike):
        super().__init__(message)
        self.part = str(part)


def part_path(parts_dir: Path, sid: str) -> Path:
    return parts_dir / f"{sid}.npz"


def write_part(part: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write one part atomically.

    Args:
        arrays: ppg_WS, labels_W[, ecg_WS] under the names "ppg", "labels"[, "ecg"].
        meta: JSON-serialisable; "has_ecg" says whether "ecg" is there.
    Raises:
        OSError: the part cannot be written (a full disk); no partial file is left.
    """
    with atomic_output(part) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays, meta=np.array(json.dumps(meta)))


def read_part(part: Path, n_windows: int) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, arrays) of one part file, checked: every array is read in full, which checks its CRC-32,
    and shapes and dtypes must match the meta.

    Raises:
        BadPartError: naming the file and the problem.
    """
    try:
        with np.load(part, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
            arrays = {name: npz[name] for name in npz.files if name != "meta"}
    except FileNotFoundError:
        raise BadPartError(f"part file {part} is missing", part) from None
    except READ_ERRORS as err:
        raise BadPartError(f"part file {part} is damaged ({type(err).__name__}: {err})", part) from None
    expected = {"ppg": ((n_windows, SAMPLES_PER_WINDOW), np.float32), "labels": ((n_windows,), np.int64)}
    if isinstance(meta, dict) and meta.get("has_ecg"):
        expected["ecg"] = ((n_windows, SAMPLES_PER_WINDOW), np.float32)
    if not isinstance(meta, dict) or sorted(arrays) != sorted(expected) or any(
            arrays[k].shape != shape or arrays[k].dtype != dtype for k, (shape, dtype) in expected.items()):
        raise BadPartError(f"part file {part} holds unexpected arrays "
                           f"{ {k: (v.shape, str(v.dtype)) for k, v in arrays.items()} }", part)
    return meta, arrays


def read_part_meta(part: Path) -> dict | None:
    """The meta of a part file, or None when it cannot be read (cheap: the arrays are not read)."""
    try:
        with np.load(part, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
    except READ_ERRORS:
        return None
    return meta if isinstance(meta, dict) else None


def remove_stale_temporaries(out_dir: Path) -> list[Path]:
    """Temporaries a killed run left in the output folder and its parts folder: only our own (the prefix of
    sleepppg.paths), never a user's file."""
    return paths.remove_stale_temporaries(out_dir) + paths.remove_stale_temporaries(out_dir / PARTS_DIR)
