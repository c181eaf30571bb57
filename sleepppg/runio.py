"""Run folders named by the time (`_2`, `_3` ... on a clash) and the text and JSON writers. Every file is written
by `atomic_output` of `sleepppg.paths` (imported here too, for the writers that take it from this module): a
temporary name, fsync, then rename, so no half-written file carries a final name and no link planted at the
final name is written through.
"""

from __future__ import annotations

import datetime
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from sleepppg.errors import SetupError
from sleepppg.paths import atomic_output


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically.

    Raises:
        OutputPathError: see `sleepppg.paths.atomic_output`.
    """
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def json_safe(value: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays to python, NaN/inf to None (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_json(path: str | os.PathLike, payload: Any) -> None:
    """Write `payload` as strict, indented JSON, atomically."""
    write_text_atomic(path, json.dumps(json_safe(payload), indent=2) + "\n")


def make_timestamped_dir(parent: str | os.PathLike, prefix: str = "", suffix: str = "") -> Path:
    """Create and return `parent/<prefix><YYYYmmdd_HHMMSS><suffix>`, or `..._2`, `..._3` ... when that name
    is taken (two runs started in the same second). Creates `parent` if needed.

    Raises:
        FileExistsError: when the first 1000 names are all taken.
    """
    parent = Path(parent)
    name = f"{prefix}{datetime.datetime.now().strftime('%Y%m%d_%H%M%S')}{suffix}"
    parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 1001):
        path = parent / (name if attempt == 1 else f"{name}_{attempt}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"{parent / name}: this name and its _2 ... _1000 variants are all taken")


def make_run_dir(parent: str | os.PathLike, prefix: str = "", suffix: str = "") -> Path:
    """Create the run folder `parent/<prefix><YYYYmmdd_HHMMSS><suffix>` (see `make_timestamped_dir`).

    Raises:
        SetupError: naming the problem: `parent` (or a folder above it) is a file, permission denied, a
            read-only or full disk, or every name of that second taken.
    """
    parent = Path(parent)
    for folder in (parent, *parent.parents):
        if folder.exists() and not folder.is_dir():
            raise SetupError(f"cannot create a run folder: {folder} is a file, not a folder")
    try:
        return make_timestamped_dir(parent, prefix, suffix)
    except PermissionError:
        raise SetupError(f"cannot create a run folder under {parent}: permission denied") from None
    except FileExistsError as err:  # the 1000 names of this second are all taken (a race with a file is rarer)
        raise SetupError(f"cannot create a run folder: {err}") from None
    except OSError as err:
        raise SetupError(f"cannot create a run folder under {parent}: {err.strerror or err}") from None
