"""The train/val/test split and the night-per-item datasets over the processed MESA HDF5 files.

Inputs (written by extract_mesa_data.py):
    mesa_ppg_with_labels.h5   `ppg` (N_windows, 1024) z-scored PPG at 34.13 Hz, `labels` (N_windows,) in {-1..3}
    mesa_real_ecg.h5          `ecg` (N_windows, 1024), same rows as the PPG file (PPG+ECG model only)
    mesa_subject_index.h5     `subjects/<id>/window_indices` (rows of that night), attrs `n_windows`, `has_ecg`

Split (as the reference): the valid subjects are those whose `n_windows` equals `windows_per_subject`
(1,200 = 10 h). Test = the valid subjects on a fixed test list, in the list's order; the other valid subjects
are split 80/20 into train/val by `sklearn.model_selection.train_test_split` with the seed (42). The list is
the config key `training.test_subjects_file`: by default data/sleepppg_net_test_subjects.txt, the 204 MESA
subjects held out by SleepPPG-Net (Kotzen et al. 2023); for another cohort, any text file of its IDs, one
per line (`#` comments and blank lines ignored). With `use_sleepppg_test_set=False`: a random 80/20
train/test split, then 80/20 train/val, both with the seed, and no list is read.

Items: one night each.
    PPGOnlyDataset          (ppg_1T float32 (1, W*1024), labels_W int64 (W,)) [, index]
    MultiModalSleepDataset  (ppg_1T, ecg_1T, labels_W) [, index]
A night is one contiguous row range, so an item is one HDF5 read per array (a dataset checks the index and the
arrays for that as it is made, with sleepppg.processed, the validator of the processed files). Files are opened
lazily, once per process (keyed by PID), so DataLoader workers (`num_workers > 0`) each get their own handle.

Training on crops (`segment_windows` N > 0, config `training.segment_windows`): each training item is N consecutive
windows of a night (ppg_1T (1, N*1024), labels (N,)). An epoch still covers each night about once, as with whole
nights: every night gives K = W // N crops per epoch (`crops_per_night`), one drawn uniformly from each of K
consecutive strata of the crops that hold at least one scored epoch, anew every epoch, by a seed of (epoch seed,
night index) only (`SegmentSampler`), so a resumed run and any number of workers see the same crops. The K crops
of all nights are shuffled together. Validation and test items stay whole nights.

Usage: `python multimodal_dataset_aligned.py --config configs/config_cloud.yaml` prints the split and which
IDs of the test list are missing from the data.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from sleepppg.cli import file_argument, positive_int, run_entry_point
from sleepppg.config import load_config
from sleepppg.constants import (
    ECG_FILE,
    EXIT_OK,
    EXIT_SETUP,
    INDEX_FILE,
    PPG_FILE,
    REPO_DIR,
    SAMPLES_PER_WINDOW,
    WINDOWS_PER_SUBJECT,
)
from sleepppg.crops import SegmentSampler, crop_candidates, crops_per_night
from sleepppg.errors import ConfigError
from sleepppg.ids import read_id_list, sleepppg_test_subjects
from sleepppg.processed import check_rows, read_night_starts

# ----------------------------------------------------------------------------------------------------------
# Constants (file names and split fractions from the reference)
GENERATED_ECG_FILE_NAME = "mesa_generated_ecg.h5"  # the reference's name; nothing here writes it
VAL_FRACTION = 0.2  # of the non-test subjects
TEST_FRACTION = 0.2  # of the valid subjects, only when the SleepPPG-Net test list is not used
SPLITS = ("train", "val", "test")
MODEL_TYPES = ("ppg_only", "real_ecg", "generated_ecg")
SLEEPPPG_TEST_SUBJECTS = sleepppg_test_subjects()  # the 204 held-out IDs (Kotzen et al. 2023), data/ list

log = logging.getLogger("sleepppg.dataset")


# ----------------------------------------------------------------------------------------------------------
# Paths, index and split (small pure functions)


def resolve_data_paths(data_path: dict | str | os.PathLike, need_ecg: bool = False,
                       use_generated_ecg: bool = False) -> dict:
    """{"ppg", "index"[, "ecg"]} from a dict (keys ppg, index, ecg or real_ecg) or a folder; files must exist."""
    if isinstance(data_path, dict):
        paths = {"ppg": data_path["ppg"], "index": data_path["index"]}
        if need_ecg:
            ecg = data_path.get("ecg", data_path.get("real_ecg"))
            if ecg is None:
                raise ValueError("data_path has no 'ecg' entry, needed by the PPG+ECG model")
            paths["ecg"] = ecg
    else:
        folder = Path(data_path)
        paths = {"ppg": folder / PPG_FILE, "index": folder / INDEX_FILE}
        if need_ecg:
            paths["ecg"] = folder / (GENERATED_ECG_FILE_NAME if use_generated_ecg else ECG_FILE)
    paths = {k: Path(v) for k, v in paths.items()}
    for key, path in paths.items():
        if not path.is_file():
            raise FileNotFoundError(f"{key.upper()} file not found: {path}")
    return paths


def data_paths_from_config(cfg: dict) -> dict:
    """{"ppg", "ecg", "index"} paths from a loaded config's `data` section."""
    data = cfg["data"]
    return {"ppg": data["ppg_file"], "ecg": data["ecg_file"], "index": data["index_file"]}


def read_window_counts(index_file: str | os.PathLike) -> dict[str, int]:
    """{subject ID: n_windows attribute} for every subject in the index file, IDs sorted."""
    with h5py.File(index_file, "r") as f:
        if "subjects" not in f:
            raise ValueError(f"{index_file} has no 'subjects' group; is it a mesa_subject_index.h5?")
        group = f["subjects"]
        return {sid: int(group[sid].attrs["n_windows"]) for sid in sorted(group.keys())}


def select_valid_subjects(window_counts: dict[str, int], windows_per_subject: int) -> list[str]:
    """Sorted IDs whose night has exactly `windows_per_subject` windows (the reference's rule)."""
    return sorted(sid for sid, n in window_counts.items() if n == windows_per_subject)


def read_test_subjects(path: str | os.PathLike) -> list[str]:
    """The subject IDs of a test-list file: one per line, kept as written (MESA's are 4 digits with leading
    zeros, as in data/sleepppg_net_test_subjects.txt); blank lines and `#` comments are ignored, repeats kept
    once. Raises ConfigError naming `training.test_subjects_file` and the path when the file is missing,
    unreadable or lists no ID."""
    key = "training.test_subjects_file"
    path = Path(path)
    try:
        ids = read_id_list(path)  # the one reader of ID lists
    except FileNotFoundError:
        raise ConfigError(f"{key} = {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{key} = {path}: cannot read the test-subject list: {err}") from None
    if not ids:
        raise ConfigError(f"{key} = {path}: the file lists no subject ID (one ID per line expected)")
    return ids


def resolve_test_subjects_file(value: str | os.PathLike) -> Path:
    """The test-list path of `training.test_subjects_file`: relative to the current directory like every
    path in the config, or, when no such file is there, relative to the repository (where the default
    data/sleepppg_net_test_subjects.txt ships), so the default works from any directory."""
    path = Path(value)
    if path.is_absolute() or path.is_file() or not (REPO_DIR / path).is_file():
        return path
    return REPO_DIR / path


def test_subjects_from_config(cfg: dict) -> list[str] | None:
    """The test list of a loaded config (`training.test_subjects_file`), or None when
    `training.use_sleepppg_test_set` is false (random split; no list is read). Raises ConfigError."""
    training = cfg["training"]
    if not training["use_sleepppg_test_set"]:
        return None
    return read_test_subjects(resolve_test_subjects_file(training["test_subjects_file"]))


def missing_test_subjects(valid_subjects: list[str], test_subjects: list[str] | None = None) -> list[str]:
    """IDs of the test list (default: the SleepPPG-Net list) that are not among the valid subjects, in the
    list's order."""
    valid_set = set(valid_subjects)
    listed = SLEEPPPG_TEST_SUBJECTS if test_subjects is None else test_subjects
    return [s for s in listed if s not in valid_set]


def missing_test_message(n_missing: int, n_listed: int, windows_per_subject: int) -> str:
    """The log line for test-list subjects absent from the data, saying when that is expected."""
    return (f"{n_missing} of the {n_listed} subjects of the test list are not in the data (or not "
            f"{windows_per_subject} windows long). Expected on a partial or synthetic cohort (a subset of MESA; "
            f"the commercial-use release lacks 11 of the 204 SleepPPG-Net test subjects; the demo's synthetic "
            f"nights hold only a few): the test set is the listed subjects that are present")


def split_subjects(valid_subjects: list[str], use_sleepppg_test_set: bool = True, seed: int = 42,
                   test_subjects: list[str] | None = None) -> tuple[list[str], list[str], list[str]]:
    """(train, val, test) subject IDs from the sorted valid IDs, as the reference splits them: test = the
    valid IDs on the test list (`test_subjects`, default the SleepPPG-Net list) in the list's order, the rest
    80/20 into train/val with the seed; with `use_sleepppg_test_set=False` a seeded random 80/20 train/test,
    then 80/20 train/val, and `test_subjects` is not used.

    Raises ValueError when there are too few subjects for a non-empty train and val set.
    """
    valid = list(valid_subjects)
    if use_sleepppg_test_set:
        valid_set = set(valid)
        listed = SLEEPPPG_TEST_SUBJECTS if test_subjects is None else test_subjects
        test = [s for s in listed if s in valid_set]
        test_set = set(test)
        rest = [s for s in valid if s not in test_set]
        if len(rest) < 2:
            raise ValueError(f"too few subjects to split: {len(valid)} valid, {len(test)} of them on the "
                             f"test list, {len(rest)} left for train/val (need at least 2)")
        train, val = train_test_split(rest, test_size=VAL_FRACTION, random_state=seed)
    else:
        if len(valid) < 3:
            raise ValueError(f"too few subjects to split: {len(valid)} valid (need at least 3 for train, val "
                             f"and test)")
        train, test = train_test_split(list(valid), test_size=TEST_FRACTION, random_state=seed)
        train, val = train_test_split(train, test_size=VAL_FRACTION, random_state=seed)
    return list(train), list(val), list(test)


def read_night(files: dict[str, h5py.File], start: int, n_windows: int,
               modalities: tuple[str, ...] = ("ppg",)) -> dict[str, np.ndarray]:
    """One night of the processed files: rows start..start+n_windows-1, one slice read per array.

    Args:
        files: open HDF5 files by modality: {"ppg": mesa_ppg_with_labels.h5[, "ecg": mesa_real_ecg.h5]}; the
            PPG file holds `ppg` and `labels`, the ECG file `ecg`.
        start: first row of the night (from `read_night_starts`).
        n_windows: W, windows per night.
        modalities: the signals to read ("ppg", and "ecg" for the PPG+ECG model).
    Returns:
        {"ppg": float32 (W, 1024)[, "ecg": float32 (W, 1024)], "labels": int64 (W,)}
    Raises:
        ValueError: the rows run past the end of an array (naming the file), or an array is missing.
    """
    rows = np.s_[start:start + n_windows]
    night = {}
    for key in modalities:
        if key not in files[key]:
            raise ValueError(f"{files[key].filename} has no '{key}' dataset")
        ds = files[key][key]
        if ds.ndim != 2 or ds.shape[1] != SAMPLES_PER_WINDOW:
            raise ValueError(f"{files[key].filename}: '{key}' rows must hold {SAMPLES_PER_WINDOW} samples, "
                             f"got shape {ds.shape}")
        if start < 0 or start + n_windows > ds.shape[0]:
            raise ValueError(f"{files[key].filename}: rows {start}..{start + n_windows - 1} asked for, but "
                             f"'{key}' has {ds.shape[0]} rows")
        signal_WS = np.empty((n_windows, SAMPLES_PER_WINDOW), dtype=np.float32)
        ds.read_direct(signal_WS, source_sel=rows)  # converts float64 files on the fly
        night[key] = signal_WS
    labels = files["ppg"]["labels"] if "labels" in files["ppg"] else None
    if labels is None or start + n_windows > labels.shape[0]:
        raise ValueError(f"{files['ppg'].filename}: no 'labels' rows {start}..{start + n_windows - 1}")
    night["labels"] = labels[rows].astype(np.int64, copy=False)
    return night


@dataclass
class Split:
    """The subject split of one dataset folder."""

    train: list[str]
    val: list[str]
    test: list[str]
    valid: list[str]  # all subjects with a full-length night
    n_indexed: int  # subjects in the index file
    missing_test: list[str]  # IDs of the test list not among the valid subjects (test-list mode only)


def make_split(index_file: str | os.PathLike, windows_per_subject: int = WINDOWS_PER_SUBJECT,
               use_sleepppg_test_set: bool = True, seed: int = 42,
               test_subjects: list[str] | None = None) -> Split:
    """Read the index file and split its valid subjects (see `split_subjects`; `test_subjects` None = the
    SleepPPG-Net list)."""
    counts = read_window_counts(index_file)
    valid = select_valid_subjects(counts, windows_per_subject)
    train, val, test = split_subjects(valid, use_sleepppg_test_set, seed, test_subjects)
    missing = missing_test_subjects(valid, test_subjects) if use_sleepppg_test_set else []
    return Split(train, val, test, valid, len(counts), missing)


def load_labels(ppg_file: str | os.PathLike, index_file: str | os.PathLike, subjects: list[str],
                windows_per_subject: int = WINDOWS_PER_SUBJECT) -> np.ndarray:
    """Labels of the given subjects' nights, int64 (n_subjects, W), reading only the label array."""
    starts = read_night_starts(index_file, subjects, windows_per_subject)
    with h5py.File(ppg_file, "r") as f:
        labels_N = f["labels"][()].astype(np.int64)  # ~2.3 M int64 for MESA: one read beats 1,900 small ones
    if len(starts) and starts.max() + windows_per_subject > labels_N.size:
        raise ValueError(f"{ppg_file} has {labels_N.size} label rows, fewer than the index file refers to")
    rows_SW = starts[:, None] + np.arange(windows_per_subject)[None, :]
    return labels_N[rows_SW]


# ----------------------------------------------------------------------------------------------------------
# Training on crops of nights (training.segment_windows)


class NightDataset(Dataset):
    """One full night per item from the processed HDF5 files; the shared base of the two datasets below.

    Args:
        data_path: {"ppg", "index"[, "ecg"]} paths or the folder holding the three processed files.
        split: "train", "val" or "test".
        transform: optional callable on the 1-D float32 signals (ppg) or (ppg, ecg), as the reference.
        seed: split seed (42 in the paper's setup).
        use_sleepppg_test_set: test = the IDs on the test list (True) or a random 20% (False).
        test_subjects: the test list (None = the 204 SleepPPG-Net MESA IDs); see `test_subjects_from_config`.
        windows_per_subject: W, windows per night (1,200 for MESA; smaller for synthetic tests).
        return_index: also return the item index (to gather DDP results without duplicates).
        segment_windows: 0 = whole nights; N > 0 = items are crops of N windows, indexed by (night index,
            first window) pairs as `SegmentSampler` yields them (an int index still gives the whole night).
    """

    modalities: tuple[str, ...] = ("ppg",)

    def __init__(self, data_path: dict | str | os.PathLike, split: str = "train",
                 transform: Callable | None = None, seed: int = 42, use_sleepppg_test_set: bool = True,
                 windows_per_subject: int = WINDOWS_PER_SUBJECT, return_index: bool = False,
                 use_generated_ecg: bool = False, test_subjects: list[str] | None = None,
                 segment_windows: int = 0):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.split, self.transform, self.seed = split, transform, seed
        self.use_sleepppg_test_set = use_sleepppg_test_set
        self.windows_per_subject = int(windows_per_subject)
        self.return_index = return_index
        self.paths = resolve_data_paths(data_path, need_ecg="ecg" in self.modalities,
                                        use_generated_ecg=use_generated_ecg)
        self.split_info = make_split(self.paths["index"], self.windows_per_subject, use_sleepppg_test_set, seed,
                                     test_subjects)
        self.subjects: list[str] = getattr(self.split_info, split)
        self.starts = read_night_starts(self.paths["index"], self.subjects, self.windows_per_subject)
        self._check_arrays()
        self.segment_windows = int(segment_windows)
        self.crop_starts: list[np.ndarray] = []  # per night: crop starts with a scored epoch (segment_windows > 0)
        self.crops_per_night = 1  # K: crops per night per epoch (segment_windows > 0)
        if self.segment_windows:
            if not 0 < self.segment_windows <= self.windows_per_subject:
                raise ValueError(f"segment_windows must be in 1..{self.windows_per_subject} (windows per night), "
                                 f"got {self.segment_windows}")
            labels_NW = load_labels(self.paths["ppg"], self.paths["index"], self.subjects, self.windows_per_subject)
            self.crop_starts = [crop_candidates(labels_W, self.segment_windows) for labels_W in labels_NW]
            self.crops_per_night = crops_per_night(self.windows_per_subject, self.segment_windows)
        self._files: dict[str, h5py.File] = {}
        self._pid: int | None = None
        log.debug("%s set: %d subjects", split, len(self.subjects))

    def _check_arrays(self) -> None:
        """Fail now, not inside a worker, if an array is missing or too short for the index."""
        needed_rows = int(self.starts.max()) + self.windows_per_subject if len(self.starts) else 0
        for key in self.modalities:
            check_rows(self.paths[key], (key, "labels") if key == "ppg" else (key,), needed_rows)

    def _open(self) -> dict[str, h5py.File]:
        """The HDF5 handles of this process, opened on first use (after a fork, workers open their own)."""
        if self._pid != os.getpid():
            self._files = {key: h5py.File(self.paths[key], "r") for key in self.modalities}
            self._pid = os.getpid()
        return self._files

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_files"], state["_pid"] = {}, None  # handles cannot be pickled (spawned workers reopen)
        return state

    def close(self) -> None:
        """Close this process's file handles (they reopen on the next item)."""
        if self._pid == os.getpid():
            for f in self._files.values():
                f.close()
        self._files, self._pid = {}, None

    def __len__(self) -> int:
        return len(self.subjects)

    def read_night(self, idx: int, first_window: int = 0, n_windows: int | None = None) -> dict[str, np.ndarray]:
        """{"ppg": float32 (n*1024,), ["ecg": ...,] "labels": int64 (n,)} of windows first_window ..
        first_window + n - 1 of night `idx` (default: the whole night), one slice per array."""
        n_windows = self.windows_per_subject if n_windows is None else n_windows
        night = read_night(self._open(), int(self.starts[idx]) + first_window, n_windows, self.modalities)
        return {key: value.reshape(-1) if key != "labels" else value for key, value in night.items()}

    def __getitem__(self, item: int | tuple[int, int]):
        if isinstance(item, tuple):  # (night, first window of the crop), from SegmentSampler
            idx, first_window = item
            night = self.read_night(idx, first_window, self.segment_windows)
        else:
            idx = item
            night = self.read_night(idx)
        signals = [night[key] for key in self.modalities]
        if self.transform is not None:
            out = self.transform(*signals)
            signals = list(out) if len(signals) > 1 else [out]
        item = [torch.from_numpy(np.ascontiguousarray(s, dtype=np.float32)).unsqueeze(0) for s in signals]
        item.append(torch.from_numpy(night["labels"]))
        if self.return_index:
            item.append(idx)
        return tuple(item)


class PPGOnlyDataset(NightDataset):
    """Items (ppg_1T float32 (1, W*1024), labels_W int64 (W,))[, idx]. Arguments as `NightDataset`."""

    modalities = ("ppg",)

    def __init__(self, data_path, split="train", transform=None, seed=42, use_sleepppg_test_set=True,
                 windows_per_subject=WINDOWS_PER_SUBJECT, return_index=False, test_subjects=None,
                 segment_windows=0):
        super().__init__(data_path, split, transform, seed, use_sleepppg_test_set, windows_per_subject,
                         return_index, test_subjects=test_subjects, segment_windows=segment_windows)


class MultiModalSleepDataset(NightDataset):
    """Items (ppg_1T, ecg_1T, labels_W)[, idx]; the ECG rows align with the PPG rows. Arguments as
    `NightDataset`; `use_generated_ecg` picks mesa_generated_ecg.h5 when `data_path` is a folder."""

    modalities = ("ppg", "ecg")

    def __init__(self, data_path, split="train", use_generated_ecg=False, transform=None, seed=42,
                 use_sleepppg_test_set=True, windows_per_subject=WINDOWS_PER_SUBJECT, return_index=False,
                 test_subjects=None, segment_windows=0):
        self.use_generated_ecg = use_generated_ecg
        super().__init__(data_path, split, transform, seed, use_sleepppg_test_set, windows_per_subject,
                         return_index, use_generated_ecg=use_generated_ecg, test_subjects=test_subjects,
                         segment_windows=segment_windows)


def eval_batch_size(batch_size: int, segment_windows: int, windows_per_subject: int) -> int:
    """Whole nights per validation/test batch: `batch_size` when training on whole nights; with crops of
    `segment_windows` windows, as many nights as fit in the windows of one training batch, at least one."""
    if not segment_windows:
        return batch_size
    return max(1, batch_size * segment_windows // windows_per_subject)


def get_dataloaders(data_path: dict | str | os.PathLike, batch_size: int = 1, num_workers: int = 0,
                    use_generated_ecg: bool = False, model_type: str = "ppg_only",
                    use_sleepppg_test_set: bool = True, windows_per_subject: int = WINDOWS_PER_SUBJECT,
                    seed: int = 42, distributed: bool = False, pin_memory: bool = False,
                    return_index: bool = False, test_subjects: list[str] | None = None,
                    segment_windows: int = 0, multiprocessing_context: str | None = None) -> tuple[Any, ...]:
    """(train_loader, val_loader, test_loader, train_ds, val_ds, test_ds), as the reference returns them.

    `test_subjects` is the test list (None = the SleepPPG-Net MESA IDs; `test_subjects_from_config(cfg)`
    reads `training.test_subjects_file`).

    The training loader shuffles with torch's global RNG (seed it; its state in a checkpoint makes resumed
    runs reproducible). With `distributed=True` each loader gets a DistributedSampler (shuffling only for
    train; call `train_loader.sampler.set_epoch(epoch)` every epoch); it pads the last rank's share with
    repeated nights, so use `return_index=True` to drop duplicates when gathering results.
    With `segment_windows > 0` the training items are crops of that many windows, `crops_per_night` of each
    night per epoch (validation and test stay whole nights): the training loader's sampler is a
    `SegmentSampler`; call its `set_epoch(epoch_seed)` every epoch. Validation and test batches then hold
    `eval_batch_size(batch_size, segment_windows, W)` whole nights: no more windows than a training batch (at
    least one night), so the memory sized for training crops also holds evaluation (a forward pass without
    gradients needs less per window than a training step). `multiprocessing_context` ("forkserver", "spawn")
    starts the workers that way when num_workers > 0 (training passes "forkserver" under torchrun on CUDA).
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    common = dict(seed=seed, use_sleepppg_test_set=use_sleepppg_test_set,
                  windows_per_subject=windows_per_subject, return_index=return_index, test_subjects=test_subjects)
    if model_type == "ppg_only":
        datasets = [PPGOnlyDataset(data_path, split=s, segment_windows=segment_windows if s == "train" else 0,
                                   **common) for s in SPLITS]
    else:
        generated = use_generated_ecg or model_type == "generated_ecg"
        datasets = [MultiModalSleepDataset(data_path, split=s, use_generated_ecg=generated,
                                           segment_windows=segment_windows if s == "train" else 0, **common)
                    for s in SPLITS]
    info = datasets[0].split_info
    log.info("split: %d subjects indexed, %d valid (%d windows); train %d, val %d, test %d",
             info.n_indexed, len(info.valid), windows_per_subject, len(info.train), len(info.val), len(info.test))
    if info.missing_test:
        log.warning("%s; e.g. %s", missing_test_message(len(info.missing_test), len(info.missing_test)
                                                        + len(info.test), windows_per_subject),
                    info.missing_test[:10])
    loaders = []
    for split, ds in zip(SPLITS, datasets):
        shuffle = split == "train"
        items = range(len(ds) * ds.crops_per_night) if ds.segment_windows else ds  # crop slots or nights
        if distributed:
            sampler = DistributedSampler(items, shuffle=shuffle, seed=seed)
        else:  # the shuffle draws from the sampler's own generator (reseeded per epoch by the trainer)
            sampler = RandomSampler(items, generator=torch.Generator()) if shuffle else None
        if ds.segment_windows:
            sampler = SegmentSampler(sampler, ds)
        nights_per_batch = batch_size if shuffle else eval_batch_size(batch_size, segment_windows,
                                                                      windows_per_subject)
        # Each new iterator draws its workers' base seed from the loader's generator, or from the global RNG
        # (dropout's) when it has none. Persistent workers keep their iterator, so a resumed run would draw at
        # another epoch than an uninterrupted one and its dropout would differ from there on: with workers the
        # loader has its own generator. (Without workers every epoch draws alike, and runs stay as they were.)
        own = torch.Generator().manual_seed(seed) if num_workers > 0 else None
        loaders.append(DataLoader(ds, batch_size=nights_per_batch, sampler=sampler, num_workers=num_workers,
                                  pin_memory=pin_memory, persistent_workers=num_workers > 0, generator=own,
                                  multiprocessing_context=multiprocessing_context if num_workers > 0 else None))
    return (*loaders, *datasets)


# ----------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Print the train/val/test split of the processed data.")
    p.add_argument("--config", required=True, type=file_argument, help="YAML config (data.* paths, training.seed, "
                                                   "training.use_sleepppg_test_set, "
                                                   "training.test_subjects_file)")
    p.add_argument("--windows-per-subject", type=positive_int, default=None,
                   help="override data.windows_per_subject")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = {} if args.windows_per_subject is None else {"data.windows_per_subject": args.windows_per_subject}
    try:
        cfg = load_config(args.config, overrides)
        wps = cfg["data"]["windows_per_subject"]
        use_test_set, seed = cfg["training"]["use_sleepppg_test_set"], cfg["training"]["seed"]
        test_subjects = test_subjects_from_config(cfg)
        paths = resolve_data_paths(data_paths_from_config(cfg), need_ecg=False)
        split = make_split(paths["index"], wps, use_test_set, seed, test_subjects)
        for name in SPLITS:  # the same checks the datasets make (contiguous nights)
            read_night_starts(paths["index"], getattr(split, name), wps)
    except (FileNotFoundError, ValueError) as err:  # ConfigError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return EXIT_SETUP
    print(f"index: {paths['index']}")
    print(f"subjects in index: {split.n_indexed}; valid ({wps} windows): {len(split.valid)}; "
          f"excluded: {split.n_indexed - len(split.valid)}")
    mode = "test list" if use_test_set else "random 80/20"
    print(f"split ({mode}, seed {seed}): train {len(split.train)}, val {len(split.val)}, test {len(split.test)}")
    if use_test_set:
        list_file = resolve_test_subjects_file(cfg["training"]["test_subjects_file"])
        print(f"test list {list_file}: {len(split.test)} of {len(test_subjects)} IDs present; "
              f"missing: {len(split.missing_test)}")
        if split.missing_test:  # every one, so a user can check them against the data
            print(f"missing IDs (not in the index, or not {wps} windows long): {', '.join(split.missing_test)}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
