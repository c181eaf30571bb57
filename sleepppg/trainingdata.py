"""The data side of a training run: what is checked before the first step, the loaders, each epoch's shuffle,
the class weights, and batches onto the device.

The split and the readers belong to `multimodal_dataset_aligned`; this module calls them the way training
needs them:
- `preflight_data`: before any run folder is made, the processed files (`data.ppg_file`, `data.index_file`,
  and `data.ecg_file` for the PPG+ECG model) are readable, no split set is empty, and every night of the
  split has its rows, integer labels in -1..3 and the subject IDs the index says (`check_nights`);
- `build_data`: DataLoaders of nights of `data.windows_per_subject` windows x 1,024 samples (30 s at
  34.13 Hz), whose items carry their index in the dataset;
- `set_loader_epoch`: each epoch's shuffle (and crops) from (run seed, epoch) only, so a resumed run shuffles
  alike;
- `training_class_weights`: inverse frequencies over every training label;
- `batch_on_device`: a batch moved to the device; `nonfinite_inputs`/`nonfinite_error`: its NaN/Inf nights,
  flagged on the device and named in one DataError.
"""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import torch

import multimodal_dataset_aligned as mda
from sleepppg.constants import N_CLASSES, STAGE_NAMES
from sleepppg.crops import SegmentSampler
from sleepppg.distributed import loader_context
from sleepppg.errors import DataError, SetupError
from sleepppg.loss import class_weights_from_labels
from sleepppg.preprocessing import file_signature
from sleepppg.processed import ProcessedFilesError, check_nights, require_valid

log = logging.getLogger("sleepppg.trainingdata")

EPOCH_SEED_STRIDE = 1_000_003  # per-epoch shuffle seed = run seed * stride + epoch (a prime, so runs differ)


def data_file_keys(model_kind: str) -> tuple[str, ...]:
    return ("ppg_file", "index_file", "ecg_file") if model_kind == "real_ecg" else ("ppg_file", "index_file")


def check_data_files(cfg: dict, model_kind: str) -> None:
    """Stop with a clear message when an input HDF5 file is missing."""
    needed = {"data.ppg_file": cfg["data"]["ppg_file"], "data.index_file": cfg["data"]["index_file"]}
    if model_kind == "real_ecg":
        needed["data.ecg_file"] = cfg["data"]["ecg_file"]
    missing = [f"{key} = {path}" for key, path in needed.items() if not Path(path).is_file()]
    if missing:
        raise SetupError("processed HDF5 file(s) not found: " + "; ".join(missing)
                         + " (run extract_mesa_data.py first, or fix the paths in the config)")


def preflight_data(cfg: dict, model_kind: str) -> dict:
    """Stop on bad data setup (missing or unreadable files, too few valid subjects for a split; SetupError)
    or bad data (DataError, see `check_nights`) before any run folder is made, so a failed start leaves
    nothing behind that `--resume` could later pick up.

    Returns:
        the data fingerprint: {"files": {config key: file signature (path, size, mtime)}, "split": {"train",
        "val", "test": subject IDs}}; checkpoints keep it so that `--resume` can tell what changed.
    """
    data = cfg["data"]
    if cfg["training"]["segment_windows"] > data["windows_per_subject"]:
        raise SetupError(f"training.segment_windows = {cfg['training']['segment_windows']} is longer than a night "
                         f"(data.windows_per_subject = {data['windows_per_subject']}); use 0 for whole nights")
    check_data_files(cfg, model_kind)
    for key in data_file_keys(model_kind):
        try:
            h5py.File(data[key], "r").close()
        except OSError as err:
            raise SetupError(f"data.{key} = {data[key]} is not a readable HDF5 file (truncated, or not HDF5): "
                             f"{err}") from None
    test_subjects = mda.test_subjects_from_config(cfg)  # ConfigError (exit 2) when the list is missing or empty
    try:
        split = mda.make_split(data["index_file"], data["windows_per_subject"],
                               cfg["training"]["use_sleepppg_test_set"], cfg["training"]["seed"], test_subjects)
    except (ValueError, OSError, KeyError) as err:
        raise SetupError(f"cannot build the train/val/test split from {data['index_file']}: {err}") from None
    for name, subjects in (("train", split.train), ("validation", split.val), ("test", split.test)):
        if not subjects:
            raise SetupError(f"the {name} set is empty: too few valid subjects with exactly "
                             f"{data['windows_per_subject']} windows in {data['index_file']}")
    check_nights(data, data_file_keys(model_kind), split.train + split.val + split.test, data["windows_per_subject"])
    ecg_file = data["ecg_file"] if model_kind == "real_ecg" else None
    try:  # then the one validator of processed files, as verify_mesa_outputs.py runs it without the value scan
        require_valid(data["ppg_file"], ecg_file, data["index_file"], data["windows_per_subject"])
    except ProcessedFilesError as err:
        raise DataError(f"{err} (python verify_mesa_outputs.py --out-dir <folder> lists every check)") from None
    return {"files": {f"data.{key}": file_signature(data[key]) for key in data_file_keys(model_kind)},
            "split": {"train": list(split.train), "val": list(split.val), "test": list(split.test)}}


def build_data(cfg: dict, model_kind: str, device: torch.device, distributed: bool) -> tuple:
    """(train, val, test loaders, train, val, test datasets) from multimodal_dataset_aligned (the one owner of
    the split and the readers); items carry their index. `preflight_data` has run first: the files exist and
    no split set is empty."""
    data = cfg["data"]
    try:
        return mda.get_dataloaders(
            mda.data_paths_from_config(cfg),
            batch_size=data["batch_size"],
            num_workers=data["num_workers"],
            model_type=model_kind,
            use_sleepppg_test_set=cfg["training"]["use_sleepppg_test_set"],
            windows_per_subject=data["windows_per_subject"],
            seed=cfg["training"]["seed"],
            test_subjects=mda.test_subjects_from_config(cfg),
            distributed=distributed,
            pin_memory=device.type == "cuda",
            return_index=True,
            segment_windows=cfg["training"]["segment_windows"],
            multiprocessing_context=loader_context(device, distributed, data["num_workers"]),
        )
    except ValueError as err:  # e.g. a night whose rows are not contiguous in the files
        raise SetupError(f"cannot build the train/val/test split: {err}") from None


def epoch_seed(run_seed: int, epoch: int) -> int:
    """Shuffle seed of one epoch: a function of (run seed, epoch) only, so a resumed run shuffles alike."""
    return (run_seed * EPOCH_SEED_STRIDE + epoch) % 2**63


def set_loader_epoch(loader, run_seed: int, epoch: int) -> None:
    """Make this epoch's shuffle (and crops) a function of (run seed, epoch) only, so a resumed run shuffles
    alike: DistributedSampler.set_epoch under DDP, else a RandomSampler generator reseeded every epoch; the
    crops of a SegmentSampler are drawn from the same epoch seed."""
    from torch.utils.data import DistributedSampler, RandomSampler

    sampler = loader.sampler
    if isinstance(sampler, SegmentSampler):
        sampler.set_epoch(epoch_seed(run_seed, epoch))
        sampler = sampler.sampler
    if isinstance(sampler, DistributedSampler):  # its permutation is seeded with seed + epoch
        sampler.seed = 0  # (seed = run seed would make run r's epoch e + 1 shuffle as run r + 1's epoch e)
        sampler.set_epoch(epoch_seed(run_seed, epoch))
    elif isinstance(sampler, RandomSampler):
        if sampler.generator is None:
            sampler.generator = torch.Generator()
        sampler.generator.manual_seed(epoch_seed(run_seed, epoch))


def training_class_weights(cfg: dict, train_ds) -> np.ndarray:
    """Inverse-frequency weights (C,) from the labels of every training night (labels only, no signals)."""
    labels = mda.load_labels(cfg["data"]["ppg_file"], cfg["data"]["index_file"], list(train_ds.subjects),
                             cfg["data"]["windows_per_subject"])
    weights = class_weights_from_labels(labels)
    counts = np.bincount(labels[labels >= 0].ravel(), minlength=N_CLASSES)
    log.info("training labels over %d nights: %s; class weights %s", len(train_ds.subjects),
             ", ".join(f"{n} {c}" for n, c in zip(STAGE_NAMES, counts)),
             ", ".join(f"{w:.3f}" for w in weights))
    return weights


INPUT_NAMES = ("PPG", "ECG")  # the order of a batch's inputs


def nonfinite_inputs(inputs: list[torch.Tensor]) -> torch.Tensor:
    """(n_inputs, B) bool on the inputs' device: True where a night's signal holds NaN or Inf. No host sync: it
    is read with the step's own check (train_step) or with the predictions (evaluation)."""
    return torch.stack([~torch.isfinite(x_B1T).flatten(1).all(dim=1) for x_B1T in inputs])


def nonfinite_nights(bad_IB: torch.Tensor, index_B: torch.Tensor, subjects: list[str]) -> list[list[str]]:
    """[subject, input name] of each night flagged in `bad_IB` (from `nonfinite_inputs`), on this rank."""
    bad_IB = bad_IB.cpu()
    return [[subjects[int(index_B[b])], INPUT_NAMES[i]] for i, b in zip(*torch.nonzero(bad_IB, as_tuple=True))]


def nonfinite_error(where: str, bad: list[list[str]]) -> DataError:
    """The DataError naming the nights with NaN/Inf signals ([subject, input name] pairs, from every rank)."""
    names = sorted({name for _, name in bad}, key=INPUT_NAMES.index)
    subjects = ", ".join(dict.fromkeys(sid for sid, _ in bad))
    return DataError(f"{where}: subject {subjects}: NaN or infinite {'/'.join(names)} values in the processed "
                     f"data (re-extract the night, or leave the subject out)")


def batch_on_device(batch: list, n_inputs: int, device: torch.device):
    """(inputs list, labels_BW, index_B) of a loader batch [ppg, (ecg,) labels, idx], the inputs and labels moved
    to `device` (asynchronously on CUDA, from pinned memory); index_B stays on the CPU. The signals are checked
    for NaN/Inf on the device (`nonfinite_inputs`), without a sync of their own."""
    inputs, labels_BW, index_B = tuple(batch[:n_inputs]), batch[n_inputs], batch[n_inputs + 1]
    non_blocking = device.type == "cuda"
    inputs = [x.to(device, non_blocking=non_blocking) for x in inputs]
    return inputs, labels_BW.to(device, non_blocking=non_blocking), index_B
