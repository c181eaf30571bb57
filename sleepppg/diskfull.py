"""A full output disk during extraction: recognising it, estimating the space a run needs, and the one line the
user sees ("disk full while writing <file>: free N GB and run the same command again"; exit status 2).

A full disk is bad setup, not bad data: every later subject would fail the same way, so it stops the run
instead of becoming a failed subject. Finished subjects are kept; the rerun goes on from there.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import shutil
from pathlib import Path
from typing import Iterator

from sleepppg.constants import SAMPLES_PER_WINDOW
from sleepppg.paths import is_disk_full

SIGNAL_BYTES_PER_SAMPLE = 4  # float32
INDEX_BYTES_PER_WINDOW = 40  # labels, subject IDs, has_real_ecg, indices: a generous bound


class DiskFullError(OSError):
    """The output disk filled up; `filename` is the file being written, `strerror` the line for the user."""


def bytes_needed(n_parts: int, n_subjects: int, n_windows: int) -> int:
    """Disk space for `n_parts` part files still to write and the HDF5 files of `n_subjects` (uncompressed,
    PPG and ECG at 4 bytes a sample, plus labels, IDs and indices), beside the parts they are built from."""
    signal_bytes = n_windows * SAMPLES_PER_WINDOW * SIGNAL_BYTES_PER_SAMPLE
    return n_parts * 2 * signal_bytes + n_subjects * (2 * signal_bytes + n_windows * INDEX_BYTES_PER_WINDOW)


def disk_full_message(path: str | os.PathLike, needed: int) -> str:
    """The line the user sees: the file being written and how much to free (at least 0.1 GB)."""
    try:
        free = shutil.disk_usage(Path(path).parent).free
    except OSError:
        free = 0
    more_gb = max(0.1, math.ceil((needed - free) / 1e8) / 10)
    return f"disk full while writing {path}: free {more_gb:.1f} GB and run the same command again"


def disk_full_at(path: str | os.PathLike) -> OSError:
    """A plain ENOSPC error naming `path`: what a worker sends back (it pickles; h5py's errors may not)."""
    return OSError(errno.ENOSPC, "No space left on device", str(path))


@contextlib.contextmanager
def naming_a_full_disk(path: str | os.PathLike, needed: int = 0) -> Iterator[None]:
    """Turn a full disk inside the block into DiskFullError with the user's line; `path` is named unless the
    error names its own file."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as err:
        if not is_disk_full(err):
            raise
        path = err.filename or path
        raise DiskFullError(errno.ENOSPC, disk_full_message(path, needed), str(path)) from None
