"""Assembly: the part files of the subjects done, in sorted ID order, into the three processed HDF5 files and
data_stats (their format: sleepppg.processed), one subject in memory at a time.

`write_processed` writes the files from any source of subjects under temporary names renamed when all are
complete, so no final name ever holds a half-written file; `assemble` feeds it the part files (sleepppg.parts);
`assemble_isolated` runs that in a forked child, so that a failed HDF5 write (a full disk) cannot crash the main
process, and hands back its outcome. `files_record` describes the files written (size, mtime, every dataset's
shape) for extraction's manifest; `files_changed` says why the files on disk are no longer those (a truncated or
rewritten file), so a rerun never calls damaged outputs up to date.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Callable

import numpy as np

from sleepppg.constants import (
    ECG_FILE,
    IGNORE_INDEX,
    INDEX_FILE,
    PPG_FILE,
    SAMPLES_PER_WINDOW,
    STAGE_NAMES,
    TARGET_FS,
    WINDOW_SECONDS,
)
from sleepppg.errors import SetupError
from sleepppg.parts import BadPartError, part_path, read_part
from sleepppg.paths import is_disk_full
from sleepppg.processed import ECG_KEYS, INDEX_LAYOUT, PPG_KEYS, READ_ERRORS, STATS_NPY, STATS_TXT
from sleepppg.runio import atomic_output, write_text_atomic

FINAL_FILES = (PPG_FILE, ECG_FILE, INDEX_FILE)

# one subject for the writer: (meta with has_ecg and n_recorded_windows, {"ppg", "labels"[, "ecg"]})
SubjectReader = Callable[[str], tuple[dict, dict]]


def _compression_args(compression: str) -> dict:
    return {} if compression == "none" else {"compression": compression}


def write_processed(out_dir: Path, subjects: list[str], read_subject: SubjectReader, n_windows: int,
                    resample_method: str, chunk_windows: int, compression: str = "none") -> dict:
    """Write the three HDF5 files from `subjects` (sorted), one subject in memory at a time, under temporary
    names renamed when all are complete; return the statistics for `write_stats`.

    Args:
        read_subject: sid -> (meta, arrays), e.g. a part file (`sleepppg.parts.read_part`).
        n_windows: W, windows per subject.
        chunk_windows: rows per HDF5 chunk of the signals (one night per chunk reads fastest).
        compression: "none", "lzf" or "gzip".
    Raises:
        whatever `read_subject` raises; OSError from h5py (a full disk). No final name then holds a half file.
    """
    import h5py

    total = len(subjects) * n_windows
    sid_dtype = f"S{max(4, max(len(s) for s in subjects))}"
    signal_args = dict(shape=(total, SAMPLES_PER_WINDOW), dtype=np.float32, fillvalue=np.float32(0),
                       chunks=(min(chunk_windows, total), SAMPLES_PER_WINDOW), **_compression_args(compression))
    with contextlib.ExitStack() as stack:
        tmp_ppg, tmp_ecg, tmp_index = (stack.enter_context(atomic_output(out_dir / name))
                                       for name in (PPG_FILE, ECG_FILE, INDEX_FILE))
        f_ppg = stack.enter_context(h5py.File(tmp_ppg, "w"))
        f_ecg = stack.enter_context(h5py.File(tmp_ecg, "w"))
        f_index = stack.enter_context(h5py.File(tmp_index, "w"))
        d_ppg = f_ppg.create_dataset("ppg", **signal_args)
        d_ecg = f_ecg.create_dataset("ecg", **signal_args)
        labels_all = np.empty(total, dtype=np.int64)
        has_ecg_all = np.empty(total, dtype=bool)
        subjects_group = f_index.create_group("subjects")
        for i, sid in enumerate(subjects):
            rows = slice(i * n_windows, (i + 1) * n_windows)
            meta, arrays = read_subject(sid)
            d_ppg[rows] = arrays["ppg"]
            if meta["has_ecg"]:
                d_ecg[rows] = arrays["ecg"]  # without ECG the rows keep the fill value 0
            labels_all[rows] = arrays["labels"]
            has_ecg_all[rows] = meta["has_ecg"]
            g = subjects_group.create_group(sid)
            g.create_dataset("window_indices", data=np.arange(rows.start, rows.stop, dtype=np.int64))
            g.attrs["n_windows"] = n_windows
            g.attrs["has_ecg"] = bool(meta["has_ecg"])
            g.attrs["n_recorded_windows"] = int(meta["n_recorded_windows"])
        subject_ids = np.repeat(np.array(subjects, dtype=sid_dtype), n_windows)
        for f in (f_ppg, f_ecg):
            f.create_dataset("labels", data=labels_all)
            f.create_dataset("subject_ids", data=subject_ids)
        f_ecg.create_dataset("has_real_ecg", data=has_ecg_all)
        f_ecg.create_dataset("real_ecg_indices", data=np.flatnonzero(has_ecg_all).astype(np.int64))
        settings_attrs = {"windows_per_subject": n_windows, "resample_method": resample_method}
        f_ppg.attrs.update(sampling_rate=TARGET_FS, window_duration=WINDOW_SECONDS,
                           samples_per_window=SAMPLES_PER_WINDOW, total_windows=total,
                           total_subjects=len(subjects), **settings_attrs)
        n_ecg = int(has_ecg_all.sum())
        f_ecg.attrs.update(windows_with_real_ecg=n_ecg, windows_without_real_ecg=total - n_ecg)
        f_index.attrs.update(total_subjects=len(subjects), total_windows=total, **settings_attrs)
        valid = labels_all[labels_all != IGNORE_INDEX]
        label_counts = {int(k): int(v) for k, v in zip(*np.unique(valid, return_counts=True))}
    return {
        "total_windows": total, "total_subjects": len(subjects), "windows_with_real_ecg": n_ecg,
        "windows_without_real_ecg": total - n_ecg, "ppg_shape": (total, SAMPLES_PER_WINDOW),
        "ecg_shape": (total, SAMPLES_PER_WINDOW), "valid_labels": int(valid.size),
        "label_distribution": label_counts, "sampling_rate": TARGET_FS,
        "window_duration": WINDOW_SECONDS, "samples_per_window": SAMPLES_PER_WINDOW,
        "windows_per_subject": n_windows, "resample_method": resample_method,
        "file_structure": {PPG_FILE: list(PPG_KEYS), ECG_FILE: list(ECG_KEYS), INDEX_FILE: [INDEX_LAYOUT]},
    }


def write_stats(out_dir: Path, stats: dict) -> None:
    """data_stats.npy (a pickled dict, as the reference: np.load(..., allow_pickle=True).item()) and .txt."""
    with atomic_output(out_dir / STATS_NPY) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.array(stats, dtype=object), allow_pickle=True)
    lines = ["MESA sleep data processing statistics", "=" * 50, "",
             f"Total windows: {stats['total_windows']}", f"Total subjects: {stats['total_subjects']}",
             f"Windows with real ECG: {stats['windows_with_real_ecg']}",
             f"Windows without real ECG: {stats['windows_without_real_ecg']}",
             f"Valid labels: {stats['valid_labels']}", "", "Label distribution:"]
    lines += [f"  {STAGE_NAMES[k]}: {v}" for k, v in stats["label_distribution"].items()]
    lines += ["", f"Sampling rate: {stats['sampling_rate']} Hz",
              f"Window duration: {stats['window_duration']} seconds",
              f"Samples per window: {stats['samples_per_window']}",
              f"Windows per subject: {stats['windows_per_subject']}",
              f"Resample method: {stats['resample_method']}", ""]
    write_text_atomic(out_dir / STATS_TXT, "\n".join(lines))



def _dataset_shapes(path: Path) -> dict[str, list[int]]:
    """{dataset name: shape} of every dataset in one HDF5 file (raises what h5py raises on a damaged file)."""
    import h5py

    shapes: dict[str, list[int]] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: shapes.__setitem__(name, list(obj.shape))
                     if isinstance(obj, h5py.Dataset) else None)
    return shapes


def files_record(out_dir: Path) -> dict:
    """What identifies the three written files cheaply, for extraction's manifest: per file its size (bytes),
    mtime (ns) and every dataset's shape. Reading it costs the metadata only, not the 100-GB signals."""
    record = {}
    for name in FINAL_FILES:
        st = (out_dir / name).stat()
        record[name] = {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns),
                        "shapes": _dataset_shapes(out_dir / name)}
    return record


def files_changed(out_dir: Path, record: dict | None, n_rows: int) -> str | None:
    """Why the three files in `out_dir` are not those extraction wrote, or None when they are.

    Args:
        record: `files_record` at the end of the writing run (None from a manifest without one: then only
            readability and `n_rows` are checked).
        n_rows: rows the signal arrays must hold (subjects x windows per subject).
    """
    for name in FINAL_FILES:
        path, expected = out_dir / name, (record or {}).get(name)
        try:
            st = path.stat()
            if expected is not None and st.st_size != expected.get("size"):
                return f"{name} holds {st.st_size} bytes but extraction wrote {expected.get('size')} (truncated?)"
            if expected is not None and st.st_mtime_ns != expected.get("mtime_ns"):
                return f"{name} was modified after extraction wrote it"
            shapes = _dataset_shapes(path)
        except READ_ERRORS as err:
            return f"{name} cannot be read ({type(err).__name__}: {err})"
        if expected is not None and shapes != expected.get("shapes"):
            differ = sorted(k for k in set(shapes) | set(expected.get("shapes", {}))
                            if shapes.get(k) != expected.get("shapes", {}).get(k))
            return f"{name}: datasets {', '.join(differ[:3])} differ in shape from what extraction wrote"
        signal = {PPG_FILE: "ppg", ECG_FILE: "ecg"}.get(name)
        if signal is not None and shapes.get(signal, [None])[0] != n_rows:
            return f"{name}: '{signal}' holds {shapes.get(signal, ['no'])[0]} rows, the manifest's subjects {n_rows}"
    return None


def assemble(out_dir: Path, subjects: list[str], parts_dir: Path, settings: dict) -> dict:
    """Stream the part files of `subjects` (sorted) into the three HDF5 files; return statistics.

    Raises:
        BadPartError: a part file fails its checks (`read_part`); OSError from h5py (a full disk).
    """
    n_windows = settings["windows_per_subject"]
    return write_processed(out_dir, subjects, lambda sid: read_part(part_path(parts_dir, sid), n_windows),
                           n_windows, settings["resample_method"], settings["chunk_windows"],
                           settings["compression"])


def _assembly_child(send, out_dir: Path, subjects: list[str], parts_dir: Path, settings: dict) -> None:
    """Runs `assemble` in a child process and sends back ('ok', stats) or (kind, message)."""
    status = 0
    try:
        send.send(("ok", assemble(out_dir, subjects, parts_dir, settings)))
    except KeyboardInterrupt:
        send.send(("interrupted", ""))
    except BadPartError as err:
        send.send(("bad_part", (str(err), err.part)))
    except BaseException as err:
        if is_disk_full(err):
            send.send(("disk_full", "No space left on device"))
        elif isinstance(err, SetupError):  # an output path refused (a planted link, a folder at a file's name)
            send.send(("setup", str(err)))
        elif isinstance(err, OSError):
            send.send(("os_error", f"{err.strerror or err}"))
        else:  # a bug: its traceback goes to the main process, which raises it
            import traceback

            send.send(("bug", traceback.format_exc()))
            status = 1
    finally:
        send.close()
        # No interpreter teardown: after a failed write (a full disk) the HDF5 library can crash while it
        # closes its files at exit. Everything this process wrote is closed or removed by now.
        os._exit(status)


def assemble_isolated(out_dir: Path, subjects: list[str], parts_dir: Path, settings: dict) -> dict:
    """`assemble` in a forked child process, so that a failed HDF5 write (a full disk) cannot crash this
    process; its outcome comes back as statistics or as the matching exception.

    Raises:
        BadPartError, KeyboardInterrupt, OSError (ENOSPC: a full disk), SetupError (the child was killed);
        RuntimeError for a bug (with its traceback).
    """
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_assembly_child, args=(send, out_dir, subjects, parts_dir, settings))
    child.start()
    send.close()
    try:
        kind, payload = receive.recv()
    except EOFError:
        kind, payload = "died", ""
    finally:
        child.join()
    if kind == "died":
        raise SetupError(f"the process writing the HDF5 files in {out_dir} was killed (exit status "
                         f"{child.exitcode}; out of memory?): run the same command again")
    if kind == "ok":
        return payload
    if kind == "interrupted":
        raise KeyboardInterrupt
    if kind == "bad_part":
        raise BadPartError(*payload)
    if kind == "disk_full":
        raise OSError(errno.ENOSPC, payload, str(out_dir / PPG_FILE))
    if kind == "setup":
        raise SetupError(payload)
    if kind == "os_error":
        raise OSError(f"writing the HDF5 files in {out_dir} failed: {payload}")
    raise RuntimeError(f"assembly failed: {payload}")
