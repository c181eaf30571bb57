"""Checkpoint files: writing ours with a checksum of their tensors, reading ours and the reference's.

Two formats are read, always with `torch.load(weights_only=True)`, so nothing in a file runs:
  - "sleepppg" (ours): a dict with model_kind, model_args (`checkpoint_model_fields`) and model_state_dict,
    plus whatever training adds (config, epoch, metrics, optimizer, scheduler, RNG states ...), and, when
    written by `save_checkpoint`, an "integrity" record: the sha256 of its tensor data at save;
  - "reference": the reference implementation's best_model.pth / checkpoint_epoch_N.pth or a bare state dict
    with its module names, from either published version (REFERENCE_VERSIONS), converted in memory.

Integrity record, under the key "integrity" of a checkpoint written by `save_checkpoint`:

    {"algorithm": "sha256", "covers": ["model_state_dict", "optimizer_state_dict"], "tensors": "<64 hex>"}

`tensors` is the sha256 over every tensor under the covered keys (those the payload has), in their mapping
order (nested optimizer state included): for each, its path ("model_state_dict/head.dense.weight",
"optimizer_state_dict/state/0/exp_avg"), dtype, shape and raw bytes. Reading a file that has the record
recomputes it; a changed byte in any covered tensor is refused with a CheckpointError naming the file. The
zip container's own CRC-32 is not checked by torch.load, so without this record a flipped bit in the weights
loads silently. Plain values (config, metrics, learning rates) are not covered.

Usage: `save_checkpoint(path, payload)`; `model, ckpt = load_model_from_checkpoint(path)`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn

from multimodal_sleep_model import MODEL_CLASSES, build_model, unwrap_model
from sleepppg.constants import WINDOWS_PER_SUBJECT
from sleepppg.runio import atomic_output

CHECKPOINT_FORMATS = ("sleepppg", "reference")  # values of checkpoint_dict["checkpoint_format"]
INTEGRITY_KEY = "integrity"
INTEGRITY_ALGORITHM = "sha256"
INTEGRITY_COVERS = ("model_state_dict", "optimizer_state_dict")  # the payload keys whose tensors are hashed
NO_CHECKSUM = "none (saved without a checksum)"  # ckpt["integrity"] of one of ours written by torch.save
REFERENCE_NO_CHECKSUM = "none (reference checkpoint)"  # ckpt["integrity"] of a reference checkpoint
REFERENCE_N_WINDOWS = 1200  # the reference's forward() reshapes to exactly 1,200 windows (10 h)
REFERENCE_DROPOUT = 0.2  # the reference's TCN dropout (not stored in its checkpoints; no effect in eval mode)

# Plain values a reference checkpoint holds besides tensors: numpy float64 scalars (its kappa, accuracy and
# F1 from numpy/scikit-learn, in `best_overall_kappa` and `training_history`). Unpickling them needs numpy's
# scalar constructor, numpy.dtype and the float64 dtype class (numpy.dtypes.Float64DType); they only rebuild a
# float64 number from its bytes, no code runs. Other numpy types stay refused.
# Files written with numpy 1.x name the constructor numpy.core.multiarray.scalar, with numpy 2.x
# numpy._core.multiarray.scalar. (torch.serialization.safe_globals needs torch >= 2.5.)
_NUMPY_SCALAR = (getattr(np, "_core", None) or np.core).multiarray.scalar  # numpy 2 renamed numpy.core to _core
NUMPY_SAFE_GLOBALS = [np.dtype, type(np.dtype("float64")), (_NUMPY_SCALAR, "numpy._core.multiarray.scalar"),
                      (_NUMPY_SCALAR, "numpy.core.multiarray.scalar")]

log = logging.getLogger("sleepppg.checkpoints")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the one-line message names the file and the problem."""


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file's bytes, read 1 MB at a time: how runs and reports name the checkpoint they used."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_model_fields(model: nn.Module) -> dict:
    """{"model_kind", "model_args"}: what a checkpoint needs to rebuild `model` (wrappers are unwrapped)."""
    model = unwrap_model(model)
    if not hasattr(model, "model_kind") or not hasattr(model, "model_args"):
        raise ValueError(f"{type(model).__name__} is not a model of this module (no model_kind/model_args)")
    return {"model_kind": model.model_kind, "model_args": dict(model.model_args)}


# ----------------------------------------------------------------------------------------------------------
# Integrity: a checksum of the tensor data


def _tensors(value: Any, path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(path, tensor) for every tensor in nested dicts, lists and tuples, in their order."""
    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _tensors(item, f"{path}/{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _tensors(item, f"{path}/{i}")


def tensor_checksum(payload: dict, covers: tuple[str, ...] | list[str] = INTEGRITY_COVERS) -> str:
    """sha256 (hex) over the tensors under the `covers` keys of `payload`: path, dtype, shape and bytes of each."""
    digest = hashlib.sha256()
    for key in covers:
        if key not in payload:
            continue
        for path, tensor in _tensors(payload[key], key):
            data = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{path}\0{data.dtype}\0{tuple(tensor.shape)}\0{data.numel()}\0".encode())
            digest.update(data.view(torch.uint8).numpy())
    return digest.hexdigest()


def save_checkpoint(path: str | os.PathLike, payload: dict) -> dict:
    """Write `payload` to `path` atomically (torch.save), with the checksum of its tensors recorded in it.

    The file holds `payload` plus the key "integrity" (see the module docstring); `payload` itself is not
    changed. Until the rename at the end the old file at `path`, if any, stays whole; a failed write raises
    the OSError (errno ENOSPC on a full disk) and leaves no temporary file.

    Args:
        path: the .pth file to write; its folder is made if missing.
        payload: a dict with at least model_state_dict (tensors and plain values only: it is read back with
            weights_only=True).
    Returns:
        The integrity record written.
    """
    if not isinstance(payload, dict) or "model_state_dict" not in payload:
        raise ValueError("a checkpoint payload must be a dict with a model_state_dict")
    record = {"algorithm": INTEGRITY_ALGORITHM, "covers": [k for k in INTEGRITY_COVERS if k in payload],
              "tensors": tensor_checksum(payload)}
    # through a Python file object, so that a failed write (a full disk) is an OSError with its errno; torch's
    # own file writer reports a RuntimeError that does not say why
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        torch.save({**payload, INTEGRITY_KEY: record}, f)
    return record


def verify_integrity(path: str | os.PathLike, ckpt: Any) -> bool:
    """Check the tensor checksum recorded in a loaded checkpoint; True if checked, False if it has none.

    Raises:
        CheckpointError naming `path` when the tensors differ from the recorded checksum, or when the record
        is not one this module writes.
    """
    record = ckpt.get(INTEGRITY_KEY) if isinstance(ckpt, dict) else None
    if not isinstance(record, dict):  # none, or the note a loaded checkpoint dict carries
        return False
    covers = record.get("covers")
    if (record.get("algorithm") != INTEGRITY_ALGORITHM or not isinstance(record.get("tensors"), str)
            or not isinstance(covers, list) or not all(isinstance(k, str) for k in covers)):
        raise CheckpointError(f"{path} has an integrity record that cannot be checked: {_one_line(record)}")
    if tensor_checksum(ckpt, covers) != record["tensors"].lower():
        raise CheckpointError(f"{path} fails its integrity check: the tensor data changed since it was saved "
                              f"(a damaged disk, copy or download?); use another copy")
    return True


# ----------------------------------------------------------------------------------------------------------
# Checkpoints of the reference implementation

# The reference's module names -> ours. Its ResConvBlock names its layers conv1, bn1, conv2, bn2, conv3, bn3
# and residual_conv (ours: main.0, main.1, main.3, main.4, main.6, main.7 and skip). Its TemporalBlock names
# the two weight-normed convs conv1/conv2 and registers them again inside its `net` Sequential as net.0/net.4
# (the same tensors under two names); ours are net.0.conv/net.3.conv. The head is `dense`,
# `tcnblock1/2.network.N` and `final_conv`, the attention fusion `fusion_layer.{query,key,value,out}_proj`, the
# gated fusion `ppg_gate.0`/`ecg_gate.0`. Two published versions name the encoders differently (an
# nn.Sequential or an nn.ModuleList of the 8 blocks: the same keys apart from the encoder's name):
REFERENCE_VERSIONS = {
    # version -> {model kind: {its encoder name: ours}}
    "sleep-staging-models (resconv_blocks / ppg_encoder, ecg_encoder)": {
        "ppg_only": {"resconv_blocks": "encoder"},
        "real_ecg": {"ppg_encoder": "ppg_encoder", "ecg_encoder": "ecg_encoder"}},
    "the user guide's version (blocks / ppg_blocks, ecg_blocks)": {
        "ppg_only": {"blocks": "encoder"},
        "real_ecg": {"ppg_blocks": "ppg_encoder", "ecg_blocks": "ecg_encoder"}},
}
_REFERENCE_BLOCK_LAYERS = {"conv1": "main.0", "bn1": "main.1", "conv2": "main.3", "bn2": "main.4",
                           "conv3": "main.6", "bn3": "main.7", "residual_conv": "skip"}
_REFERENCE_TCN_CONVS = {"conv1": "net.0", "conv2": "net.3"}
_REFERENCE_TCN_ALIASES = {"0": "conv1", "4": "conv2"}  # net.0 is conv1, net.4 is conv2
# torch.nn.utils.weight_norm (old style, dim 0) stores g (out, 1, 1) and v (out, in, k) with w = g v / ||v||,
# the norm over the in and k dims; the parametrization our convs use stores the same g and v as original0 and
# original1 and computes the same w, so the pair is copied as is and training can go on from it.
_WEIGHT_NORM_NAMES = {"weight_g": "parametrizations.weight.original0",
                      "weight_v": "parametrizations.weight.original1", "bias": "bias"}
_REFERENCE_MARKERS = ("tcnblock1.", "tcnblock2.", "final_conv.") + tuple(
    f"{name}." for kinds in REFERENCE_VERSIONS.values() for encoders in kinds.values() for name in encoders)
_REFERENCE_TCN_CONV = r"tcnblock([12])\.network\.(\d+)\.(conv[12])\.(weight_g|weight_v|bias)"


def _our_tcn_key(match: re.Match) -> str:
    """Our name of a reference TCN conv tensor matched by _REFERENCE_TCN_CONV (stack, level, conv, tensor)."""
    stack, level, conv, tensor = match.groups()
    return f"head.tcn.{int(stack) - 1}.{level}.{_REFERENCE_TCN_CONVS[conv]}.conv.{_WEIGHT_NORM_NAMES[tensor]}"


def _strip_wrapper_prefixes(state: dict) -> dict:
    """A copy of `state` without the prefixes torch.compile ("_orig_mod.") and DDP/DataParallel ("module.")
    add, in either order and nesting (compile(DDP(m)) gives "_orig_mod.module.", DDP(compile(m)) the reverse)."""
    state = dict(state)
    while True:
        keys = list(state)
        for prefix in ("_orig_mod.", "module."):
            nn.modules.utils.consume_prefix_in_state_dict_if_present(state, prefix)
        if list(state) == keys:
            return state


def is_reference_state_dict(state: Any) -> bool:
    """True if `state` is a state dict with the reference implementation's module names."""
    return (isinstance(state, dict) and bool(state) and all(isinstance(k, str) for k in state)
            and any(k.startswith(_REFERENCE_MARKERS) for k in _strip_wrapper_prefixes(state)))


def reference_version(state: dict) -> tuple[str, str, dict]:
    """(version, model kind, {its encoder name: ours}) of a reference state dict, told by its encoder names
    (REFERENCE_VERSIONS); ValueError naming the names looked for when no version's encoders are all there."""
    prefixes = {k.split(".", 1)[0] for k in state}
    for version, kinds in REFERENCE_VERSIONS.items():
        for kind, encoders in kinds.items():
            if prefixes >= set(encoders):
                return version, kind, encoders
    wanted = " or ".join(" and ".join(f"{name}.*" for name in encoders)
                         for kinds in REFERENCE_VERSIONS.values() for encoders in kinds.values())
    raise ValueError(f"no encoder weights of the reference ({wanted})")


def convert_reference_state_dict(state: dict) -> tuple[str, str, dict, dict]:
    """Convert a state dict of the reference's SleepPPGNet / MultiModalSleepNet to the model module's names.

    Both published versions are read (REFERENCE_VERSIONS; reference_version tells them apart). The kind and
    the arguments are inferred: "ppg_only" if the one encoder is there (`resconv_blocks` or `blocks`),
    "real_ecg" if both are (`ppg_encoder`/`ecg_encoder` or `ppg_blocks`/`ecg_blocks`); fusion "attention" if
    `fusion_layer` weights exist, "gated" if `ppg_gate` weights exist, else "concat"; num_classes from
    `final_conv`. The rest are the reference's fixed settings, not stored in its files: n_windows 1,200,
    dropout 0.2, a causal TCN. The reference's final softmax has no parameters; our model returns the logits
    before it.

    Returns:
        (version, model_kind, model_args, state dict for build_model(model_kind, **model_args))
    Raises:
        ValueError naming the first keys that have no place in the inferred model.
    """
    state = _strip_wrapper_prefixes(state)
    version, kind, encoders = reference_version(state)
    ours: dict[str, torch.Tensor] = {}
    aliases: dict[str, tuple[str, torch.Tensor]] = {}
    unexpected: list[str] = []
    for key, tensor in state.items():
        if (m := re.fullmatch(r"(\w+)\.(\d+)\.(conv[123]|bn[123]|residual_conv)\.(\w+)", key)) and m[1] in encoders:
            ours[f"{encoders[m[1]]}.{m[2]}.{_REFERENCE_BLOCK_LAYERS[m[3]]}.{m[4]}"] = tensor
        elif m := re.fullmatch(_REFERENCE_TCN_CONV, key):
            ours[_our_tcn_key(m)] = tensor
        elif m := re.fullmatch(r"tcnblock([12])\.network\.(\d+)\.net\.([04])\.(weight_g|weight_v|bias)", key):
            aliases[f"tcnblock{m[1]}.network.{m[2]}.{_REFERENCE_TCN_ALIASES[m[3]]}.{m[4]}"] = (key, tensor)
        elif m := re.fullmatch(r"(dense|final_conv)\.(weight|bias)", key):
            ours[f"head.{'dense' if m[1] == 'dense' else 'classifier'}.{m[2]}"] = tensor
        elif kind == "real_ecg" and (m := re.fullmatch(r"fusion_layer\.(query|key|value|out)_proj\.(weight|bias)",
                                                       key)):
            ours[f"attention.{m[1]}.{m[2]}"] = tensor
        elif kind == "real_ecg" and re.fullmatch(r"(ppg|ecg)_gate\.0\.(weight|bias)", key):
            ours[key] = tensor
        else:
            unexpected.append(key)
    if unexpected:
        raise ValueError(f"{len(unexpected)} weight(s) with no place in the reference's {kind} model: "
                         f"{', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}")
    for canonical, (alias, tensor) in aliases.items():
        if canonical not in state:  # only the alias was saved: it is the same convolution
            ours[_our_tcn_key(re.fullmatch(_REFERENCE_TCN_CONV, canonical))] = tensor
        elif not torch.equal(state[canonical], tensor):
            raise ValueError(f"{alias} and {canonical} are one convolution in the reference but hold different values")
    if "final_conv.weight" not in state:
        raise ValueError("no final_conv.weight (the reference's output layer)")
    model_args: dict[str, Any] = {"n_windows": REFERENCE_N_WINDOWS,
                                  "num_classes": int(state["final_conv.weight"].shape[0]),
                                  "dropout": REFERENCE_DROPOUT, "tcn_causal": True}
    if kind == "real_ecg":
        fusion = ("attention" if any(k.startswith("fusion_layer.") for k in state)
                  else "gated" if "ppg_gate.0.weight" in state else "concat")
        model_args = {"fusion_strategy": fusion, **model_args}
    return version, kind, model_args, ours


# ----------------------------------------------------------------------------------------------------------
# Reading


def _one_line(text: Any, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _looks_like_text(path: Path) -> bool:
    """True if the file starts with UTF-8 text (no NUL bytes)."""
    with path.open("rb") as f:
        head = f.read(4096)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:  # not just a character cut at the 4096-byte boundary
            return False
    return b"\x00" not in head


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"  # the first 8 bytes of an HDF5 file (e.g. the processed data)


def _file_kind(path: Path) -> str:
    """What a file that torch cannot load looks like from its first bytes: "an HDF5 file", "a text file", or ""
    (unknown: random bytes, a damaged archive, another binary format)."""
    with path.open("rb") as f:
        head = f.read(8)
    if head == HDF5_SIGNATURE:
        return "an HDF5 file (processed data?)"
    return "a text file" if _looks_like_text(path) else ""


def _refused_globals(path: Path, err: Exception) -> list[str]:
    """The Python globals a weights-only load refused: read from the archive, else from torch's message."""
    if zipfile.is_zipfile(path):
        try:
            with torch.serialization.safe_globals(NUMPY_SAFE_GLOBALS):
                names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            allowed = {"numpy.dtype", "numpy.dtypes.Float64DType", "numpy._core.multiarray.scalar",
                       "numpy.core.multiarray.scalar"}
            names = [n for n in names if n not in allowed]
            if names:
                return names
        except (RuntimeError, ValueError):  # not a readable archive: fall back to the message
            pass
    return sorted({a or b for a, b in re.findall(r"GLOBAL ([\w.]+)|got <class '([\w.]+)'>", str(err))})


def read_checkpoint_file(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """torch.load(path, weights_only=True), with numpy scalars allowed; any failure is one CheckpointError line.

    Only tensors, plain Python values and the numpy scalar types in NUMPY_SAFE_GLOBALS are read: a file
    holding other objects is refused and nothing in it runs. A file with an integrity record (written by
    save_checkpoint) is verified (verify_integrity); one without is read as it is.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes), not a checkpoint (an interrupted save or copy?)")
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(NUMPY_SAFE_GLOBALS):
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # plain pickles: refused below
            raw = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch.load raises EOFError, KeyError, IndexError, UnpicklingError,
        # RuntimeError... for a file it cannot parse; each means "not a usable checkpoint" and is reported as one
        # line here (the cause stays chained). torch's own text advises weights_only=False, which we never do.
        weights_only_refusal = "weights only" in str(err).lower()
        refused = _refused_globals(path, err) if weights_only_refusal else []
        kind = _file_kind(path)
        if not refused and kind:
            raise CheckpointError(f"{path} is {kind}, not a PyTorch checkpoint") from err
        if refused:
            what = f" ({', '.join(refused[:5])})" if refused else ""
            raise CheckpointError(
                f"{path} holds Python objects other than tensors and plain values{what}; it is refused so that "
                f"no code from it runs (a checkpoint of this project or of the reference holds only weights and "
                f"plain values)") from err
        # torch's weights-only text advises weights_only=False, which we never do: only its reason is kept
        reason = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:Check the documentation|$)", str(err), re.S)
        detail = _one_line(reason.group(1)) if reason else f"{type(err).__name__}: {_one_line(err) or 'no details'}"
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (damaged, truncated or another kind of file): "
                              f"{detail}") from err
    verify_integrity(path, raw)
    return raw


def _first_non_finite(state: dict) -> tuple[str, int, int] | None:
    """(name, bad count, size) of the first floating-point tensor holding NaN or Inf, else None."""
    for name, tensor in state.items():
        if tensor.is_floating_point() or tensor.is_complex():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                return name, bad, tensor.numel()
    return None


def _fit_report(model: nn.Module, state: dict) -> str:
    """One line: which keys are missing, unexpected or of another shape when `state` is loaded into `model`."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", shapes)):
        if keys:
            parts.append(f"{len(keys)} {label} ({', '.join(keys[:2])}{' ...' if len(keys) > 2 else ''})")
    return "; ".join(parts)


def load_model_from_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", expected_kind: str | None = None,
                               n_windows: int | None = None) -> tuple[nn.Module, dict]:
    """Rebuild a model from a checkpoint of this project or of the reference implementation.

    Two formats are read (always with torch.load(weights_only=True), see read_checkpoint_file):
      - "sleepppg": a dict with model_kind, model_args and model_state_dict, as save_checkpoint writes it
        (model_args left out take the model class's defaults). Its integrity record is verified; a file
        without one (written by torch.save directly) loads with a logged note that it carries no checksum;
      - "reference": the reference's best_model.pth / checkpoint_epoch_N.pth (a dict whose model_state_dict
        uses its module names; also its epoch, optimizer state, numpy-float metrics and config dict), or a bare
        state dict of that form, from either published version of the reference (REFERENCE_VERSIONS: encoder
        `resconv_blocks` or `blocks`; `ppg_encoder`/`ecg_encoder` or `ppg_blocks`/`ecg_blocks`). It carries no
        checksum (logged) and no model kind or arguments: the kind, fusion and num_classes are inferred from
        the weights, the rest are the reference's fixed settings (1,200 windows, dropout 0.2, causal TCN); see
        convert_reference_state_dict. Outputs equal the reference's before its final softmax.
    A weight holding NaN or Inf is refused (the model cannot be right), naming the first such tensor.

    Args:
        path: the .pth file.
        map_location: passed to torch.load; the model is moved there if it is a device or device string.
        expected_kind: if given ("ppg_only" or "real_ecg"), a checkpoint of another kind is an error.
        n_windows: build the model for nights of this many windows instead of the stored count (same weights;
            see multimodal_sleep_model.with_n_windows).
    Returns:
        (model in eval mode, checkpoint dict). The dict is the file's dict (or {"model_state_dict": ...} for a
        bare state dict) with these keys set: "checkpoint_format" ("sleepppg" or "reference"), "model_kind",
        "model_args" (the arguments the returned model was built with, defaults filled in), "trained_n_windows"
        (the window count stored in or implied by the file), "integrity" (the verified record, or NO_CHECKSUM
        or REFERENCE_NO_CHECKSUM), and for a reference file "model_fields_inferred" (a sentence saying what
        was inferred and how) and "reference_version" (a key of REFERENCE_VERSIONS).
    Raises:
        FileNotFoundError if the file is missing; CheckpointError (a ValueError, one line naming the file) for
        a file that is empty, not a checkpoint, holds arbitrary objects, fails its integrity check, holds
        NaN/Inf weights, is of another kind than expected_kind, or whose weights do not fit the model;
        ValueError for a bad n_windows.
    """
    if n_windows is not None and (not isinstance(n_windows, int) or isinstance(n_windows, bool) or n_windows < 1):
        raise ValueError(f"n_windows must be a positive int, got {n_windows!r}")
    path = Path(path)
    raw = read_checkpoint_file(path, map_location)
    if isinstance(raw, dict) and ("model_kind" in raw or "model_args" in raw):
        fmt = "sleepppg"
        missing = [k for k in ("model_kind", "model_args", "model_state_dict") if k not in raw]
        if missing:
            raise CheckpointError(f"{path} is not a checkpoint of this project: missing {missing} (it must be "
                                  f"written by train_ppg_only.py with model_kind, model_args and model_state_dict)")
        ckpt, state = dict(raw), raw["model_state_dict"]
    elif isinstance(raw, dict) and is_reference_state_dict(raw.get("model_state_dict")):
        fmt, ckpt, state = "reference", dict(raw), raw["model_state_dict"]
    elif is_reference_state_dict(raw):
        fmt, ckpt, state = "reference", {"model_state_dict": raw}, raw
    else:
        raise CheckpointError(f"{path} is not a checkpoint of this project: missing ['model_kind', 'model_args', "
                              f"'model_state_dict'] (it must be written by train_ppg_only.py), nor one of the "
                              f"reference implementation (a model_state_dict with its module names)")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise CheckpointError(f"{path}: model_state_dict is not a mapping of names to tensors")
    bad = _first_non_finite(state)
    if bad:
        raise CheckpointError(f"{path}: weight {bad[0]} holds NaN or Inf values ({bad[1]} of {bad[2]}); a model "
                              f"with them cannot give valid stages (did training diverge?)")

    if fmt == "reference":
        try:
            version, kind, model_args, state = convert_reference_state_dict(state)
        except ValueError as err:
            raise CheckpointError(f"{path}: a reference-style state dict that cannot be converted: {err}") from err
        ckpt["model_fields_inferred"] = (
            f"model kind {kind!r}{' and fusion ' + repr(model_args['fusion_strategy']) if kind == 'real_ecg' else ''}"
            f" inferred from the weight names, num_classes from the output layer; n_windows "
            f"{REFERENCE_N_WINDOWS}, dropout {REFERENCE_DROPOUT} and a causal TCN are the reference's fixed "
            f"settings (a reference checkpoint stores no model arguments)")
        ckpt["reference_version"] = version
        if isinstance(ckpt.get(INTEGRITY_KEY), dict):  # written by save_checkpoint: verified on reading
            log.info("%s: reference checkpoint of %s; %s", path, version, ckpt["model_fields_inferred"])
        else:
            ckpt[INTEGRITY_KEY] = REFERENCE_NO_CHECKSUM
            log.info("%s: reference checkpoint of %s (it carries no checksum); %s", path, version,
                     ckpt["model_fields_inferred"])
    else:
        kind, model_args = ckpt["model_kind"], ckpt["model_args"]
        if kind not in MODEL_CLASSES:
            raise CheckpointError(f"{path}: unknown model_kind {kind!r}; expected one of {sorted(MODEL_CLASSES)}")
        if not isinstance(model_args, dict):
            raise CheckpointError(f"{path}: model_args must be a mapping, got {type(model_args).__name__}")
        if not isinstance(ckpt.get(INTEGRITY_KEY), dict):  # a record there was verified by read_checkpoint_file
            ckpt[INTEGRITY_KEY] = NO_CHECKSUM
            log.info("%s carries no checksum (not written by save_checkpoint): its tensor data is not verified",
                     path)
        state = _strip_wrapper_prefixes(state)
    if expected_kind is not None and kind != expected_kind:
        raise CheckpointError(f"{path} holds a {kind!r} model but a {expected_kind!r} model was asked for")
    trained_n_windows = model_args.get("n_windows", WINDOWS_PER_SUBJECT)
    build_args = dict(model_args) if n_windows is None else {**model_args, "n_windows": n_windows}
    try:
        model = build_model(kind, **build_args)
    except (TypeError, ValueError) as err:  # an argument this version does not know, or a bad value
        raise CheckpointError(f"{path}: cannot build a {kind!r} model from model_args {model_args}: "
                              f"{_one_line(err)}") from err
    mismatch = _fit_report(model, state)
    if mismatch:
        raise CheckpointError(f"{path}: the weights do not fit a {kind!r} model with {model_args}: {mismatch}")
    model.load_state_dict(state)
    model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu")
    model.eval()
    ckpt.update(checkpoint_format=fmt, model_kind=kind, model_args=dict(model.model_args),
                trained_n_windows=trained_n_windows)
    return model, ckpt
