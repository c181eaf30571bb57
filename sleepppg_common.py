"""Shared constants, the one YAML config loader, metrics and small I/O helpers.

Every script of the pipeline imports what it shares from here, so each concept exists once:

- constants of the processed format (docs/DESIGN.md §2-3): 30-s epochs of 1,024 samples at 34.133 Hz, 1,200 per night;
- the 4-class stage map and names (Wake 0, Light 1, Deep 2, REM 3; -1 ignored);
- `load_config(path, overrides)`: reads one YAML file, rejects unknown/missing keys, wrong types and
  non-booleans such as the reference's `flase`, and returns a plain nested dict;
- `compute_metrics(...)`: pooled accuracy, Cohen's kappa, weighted F1, per-class report, confusion matrix and
  per-subject kappa, the paper's definitions (Kotzen et al., IEEE JBHI 2023);
- `atomic_output(path)`: write to a temporary name, fsync, then rename, so no half-written file carries a
  final name;
- `make_timestamped_dir(parent, prefix, suffix)`: a new run folder named by the time, `_2`, `_3` ... on a clash;
  `make_run_dir(...)` is the same for the scripts, with one clear `SetupError` when the parent cannot hold one;
- `SetupError`, the bad-setup error every script turns into exit status 2 (`EXIT_SETUP`);
- `resolve_device(requested, device_id, local_rank)`: auto / cpu / cuda / cuda:N, the same rules for training
  and inference;
- `log_to_file(path)`: attach a log file for a block and always detach it;
- figures: `hypnogram_figure(...)` (predicted, or scored vs predicted with mistakes marked; stage levels in
  `HYPNOGRAM_LEVEL`), `confusion_figure(...)` and `save_figure(...)`;
- `subject_id_from_filename(name, pattern)`: the subject ID in a file name (default `MESA_ID_PATTERN`), or
  None; `compile_id_pattern(pattern)` checks a pattern (a regex with exactly one group);
- `setup_logging(...)`: one console handler plus an optional file handler.

Nothing heavy runs on import; this module needs only numpy and PyYAML (scikit-learn inside `compute_metrics`).

Usage: `cfg = load_config("configs/config_demo.yaml", {"training.num_epochs": 2})`
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import logging
import math
import os
import re
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import yaml

# ----------------------------------------------------------------------------------------------------------
# Constants (data, preprocessing and file facts: docs/DESIGN.md)
REPO_DIR = Path(__file__).resolve().parent
DATA_DIR = REPO_DIR / "data"
WINDOW_SECONDS = 30  # one scoring epoch, AASM
SAMPLES_PER_WINDOW = 1024  # 30 s at 34.133 Hz (SleepPPG-Net input rate)
TARGET_FS = SAMPLES_PER_WINDOW / WINDOW_SECONDS  # 34.1333... Hz = 256 Hz x 2/15
WINDOWS_PER_SUBJECT = 1200  # the first 10 h of each night (SleepPPG-Net)
N_CLASSES = 4
PPG_FILE = "mesa_ppg_with_labels.h5"  # processed-file names kept from the reference
ECG_FILE = "mesa_real_ecg.h5"
INDEX_FILE = "mesa_subject_index.h5"
IGNORE_INDEX = -1  # unscored / movement / padding: ignored by loss and metrics
STAGE_NAMES = ("Wake", "Light", "Deep", "REM")
# class -> height in a hypnogram, top to bottom Wake, REM, Light, Deep (the clinical order: REM drawn near Wake,
# the deeper the sleep the lower the line)
HYPNOGRAM_LEVEL = {0: 3, 3: 2, 1: 1, 2: 0}
REM_CLASS = 3

# NSRR EventConcept (the part before '|' is the name, after it the code) -> 4-class label.
# Stage 1/2 are "Light", Stage 3/4 "Deep" (R&K Stage 4 is N3 in AASM terms).
CONCEPT_TO_CLASS = {
    "Wake|0": 0,
    "Stage 1 sleep|1": 1,
    "Stage 2 sleep|2": 1,
    "Stage 3 sleep|3": 2,
    "Stage 4 sleep|4": 2,
    "REM sleep|5": 3,
    "Movement|6": IGNORE_INDEX,
    "Unscored|9": IGNORE_INDEX,
}

MESA_ID_PATTERN = r"mesa[-_]?sleep[-_]?(\d+)"  # file name -> subject ID (the reference's pattern)
GLIBC_M_TRIM_THRESHOLD, GLIBC_M_MMAP_THRESHOLD = -1, -3  # mallopt() parameter codes (glibc malloc.h)
KEEP_FREED_BYTES = 2**31 - 1  # largest value mallopt takes (an int): blocks below 2 GiB come from the heap

LOG_FORMAT, LOG_DATE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"

log = logging.getLogger("sleepppg")


def _number_argument(text: str, kind: type, minimum: float, inclusive: bool) -> int | float:
    """`text` as `kind` (int or float), finite and at least (inclusive) or above `minimum`; else the
    argparse.ArgumentTypeError that argparse prints as one line naming the flag."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a {'whole number' if kind is int else 'number'}, "
                                         f"got {text!r}") from None
    if not (math.isfinite(value) and (value >= minimum if inclusive else value > minimum)):
        raise argparse.ArgumentTypeError(f"must be {'>=' if inclusive else '>'} {minimum:g}"
                                         f"{' and finite' if kind is float else ''}, got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (a count of epochs, subjects, ...)."""
    return _number_argument(text, int, 1, inclusive=True)


def non_negative_int(text: str) -> int:
    """argparse type: a whole number >= 0 (a seed)."""
    return _number_argument(text, int, 0, inclusive=True)


def positive_number(text: str) -> float:
    """argparse type: a finite number > 0 (hours, a rate)."""
    return _number_argument(text, float, 0, inclusive=False)


def compile_id_pattern(pattern: str | re.Pattern) -> re.Pattern:
    """The subject-ID pattern as a case-insensitive regex with exactly one capturing group (the ID).

    Raises:
        ValueError: `pattern` is not a valid regex, or has no or several capturing groups.
    """
    if isinstance(pattern, re.Pattern):
        compiled = pattern
    else:
        try:
            compiled = re.compile(pattern, re.IGNORECASE)
        except re.error as err:
            raise ValueError(f"{pattern!r} is not a valid regular expression: {err}") from None
    if compiled.groups != 1:
        raise ValueError(f"{compiled.pattern!r} has {compiled.groups} capturing groups; it needs exactly one, "
                         "around the subject ID (e.g. 'mesa-sleep-(\\d+)'; use (?:...) for other groups)")
    return compiled


def subject_id_from_filename(name: str, pattern: str | re.Pattern = MESA_ID_PATTERN) -> str | None:
    """The subject ID in a file name: the text of the pattern's one group at its first match, any case
    ('mesa-sleep-0001-nsrr.xml' -> '0001' with the MESA pattern; 'cfs-visit5-800002.edf' -> '800002' with
    'cfs-visit5-(\\d+)'). The ID keeps its text: leading zeros, letters, any length. None when the name
    carries none."""
    match = compile_id_pattern(pattern).search(name)
    return match.group(1) if match else None


def read_id_list(path: str | os.PathLike) -> list[str]:
    """Read one subject ID per line (4 digits, leading zeros kept); blank lines and '#' comments ignored."""
    ids = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            ids.append(line.zfill(4))
    return ids


def sleepppg_test_subjects() -> list[str]:
    """The 204 held-out MESA subject IDs of SleepPPG-Net (Kotzen et al. 2023), from data/."""
    return read_id_list(DATA_DIR / "sleepppg_net_test_subjects.txt")


def mesa_commercial_ids() -> list[str]:
    """The 1,900 subject IDs of the NSRR MESA commercial-use release, from data/."""
    return read_id_list(DATA_DIR / "mesa_commercial_use_ids.txt")


# ----------------------------------------------------------------------------------------------------------
# Config: one schema, one loader. Every key is required (the shipped YAMLs list them all), so a typo
# cannot silently fall back to a default.


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the file and the key."""


class SetupError(RuntimeError):
    """Bad setup (a device that does not exist, a run folder that cannot be made, a missing checkpoint or
    input...): the script stops at once with this one-line message and exit status 2 (EXIT_SETUP)."""


class Choice:
    """A string restricted to a fixed set of values."""

    def __init__(self, *values: str):
        self.values = values

    def __repr__(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


OptionalStr = (str, type(None))
OptionalNumber = (float, type(None))  # a finite number (not a boolean) or null


class Default:
    """A key that may be left out of the YAML: `expected` is checked as for any key, `value` is used when the
    key is absent. Keys added after the reference's config exist get one, so older config files keep working."""

    def __init__(self, expected: Any, value: Any):
        self.expected = expected
        self.value = value

    def __repr__(self) -> str:
        return f"{self.expected!r} (default {self.value!r})"

CONFIG_SCHEMA: dict[str, dict[str, Any]] = {
    "data": {
        "ppg_file": str,
        "ecg_file": str,
        "index_file": str,
        "batch_size": int,
        "num_workers": int,
        "windows_per_subject": int,
    },
    "preprocessing": {
        "edf_dir": str,
        "xml_dir": str,
        "out_dir": str,
        "workers": int,
        "resample_method": Choice("linear", "polyphase"),
        "ppg_channels": list,
        "compression": Choice("none", "lzf", "gzip"),
        "chunk_windows": int,
        "id_pattern": Default(str, MESA_ID_PATTERN),  # file name -> subject ID: a regex with one group
        "format": Default(Choice("edf", "dreamt"), "edf"),  # extraction input: MESA EDF + XML, or DREAMT CSVs
        "csv_dir": Default(str, "./DREAMT/data_64Hz"),  # DREAMT: one <id>_whole_df.csv per participant
        "ppg_column": Default(str, "BVP"),  # DREAMT: the PPG column (Empatica E4 BVP)
        "nominal_fs": Default(float, 64.0),  # DREAMT: expected rate (Hz); stamps more than 5% off -> bad subject
        "max_gap_s": Default(float, 30.0),  # missing data up to this (s) is interpolated; longer is a gap
    },
    "training": {
        "num_epochs": int,
        "learning_rate": float,
        "weight_decay": float,
        "patience": int,
        "use_sleepppg_test_set": bool,
        "num_runs": int,
        "seed": int,
        "grad_clip": float,
        "lr_factor": float,
        "lr_patience": int,
        "test_subjects_file": Default(str, "data/sleepppg_net_test_subjects.txt"),  # test IDs, one per line
        "select_best_by": Default(Choice("val_loss", "val_kappa", "val_median_kappa"), "val_loss"),
        "segment_windows": Default(int, 0),  # train on random crops of this many windows; 0 = whole nights
        "activation_checkpointing": Default(bool, False),
        "init_from": Default(str, ""),  # a trained checkpoint to start from ("" = random weights)
        "init_from_sha256": Default(str, ""),  # filled in by the run; when set, the parent must have this hash
        "freeze_encoder_epochs": Default(int, 0),  # 0 never, N the first N epochs, -1 every epoch
    },
    "model": {
        "ppg_only": {"enabled": bool},
        "real_ecg": {"enabled": bool, "fusion_strategy": Choice("concat", "attention", "gated")},
        "generated_ecg": {"enabled": bool},
        "tcn_causal": Default(bool, True),
    },
    "output": {
        "save_dir": str,
        "save_frequency": int,
        "save_intermediate": bool,
    },
    "gpu": {
        "device_id": int,
        "mixed_precision": bool,
        "mixed_precision_on_cpu": Default(bool, False),  # bf16 autocast on the CPU too (tests the GPU path)
        "compile": bool,
    },
    "inference": {
        "only_inference": bool,
        "random_seed": int,
        "save_dir": str,
        "best_model": str,
        "cache_root": str,
        "save_csv": bool,
        "save_graph": bool,
        "save_json": bool,
        "edf_file": str,
        "n_subjects": int,
        "batch_size": int,
        "ppg_file": Default(str, ""),  # --ppg: PPG recordings of any format (file, folder or glob)
        "ppg_fs": Default(OptionalNumber, None),  # --fs: rate (Hz) where the file does not say it
        "ppg_column": Default(OptionalStr, None),  # --column: PPG column / signal name (null: ppg_channels)
    },
}

# Values that must be positive (> 0) or non-negative (>= 0); checked after types.
_POSITIVE = {
    "data.batch_size", "data.windows_per_subject", "preprocessing.chunk_windows", "training.num_epochs",
    "training.learning_rate", "training.num_runs", "training.grad_clip", "training.lr_factor",
    "output.save_frequency", "inference.n_subjects", "inference.batch_size",
    "preprocessing.nominal_fs", "preprocessing.max_gap_s", "inference.ppg_fs",
}
_ID_PATTERNS = {"preprocessing.id_pattern"}  # must compile, with exactly one capturing group
_NON_NEGATIVE = {
    "data.num_workers", "preprocessing.workers", "training.weight_decay", "training.patience",
    "training.lr_patience", "gpu.device_id", "training.segment_windows",
}


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (the reference's sample config has
    `random_seed` and `save_dir` twice under `inference`; YAML silently keeps the last one)."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: the keys written here override those
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            if key in seen:
                raise ConfigError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
        except TypeError:  # a list or mapping used as a key
            raise ConfigError(f"line {key_node.start_mark.line + 1}: a list or mapping cannot be a key (a key "
                              "is a name)") from None
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)
# PyYAML follows YAML 1.1, where a float needs a dot: `1e-5` would load as the string "1e-5" (and so would the
# `1e-05` that json.dumps writes into a run's config.json). Numbers in exponent form load as floats here, as in
# YAML 1.2 and JSON.
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def _check_value(key: str, value: Any, expected: Any) -> Any:
    """Return `value` if it matches `expected` (a type, a Choice or a tuple of types), else raise."""
    if isinstance(expected, Choice):
        if value not in expected.values:
            raise ConfigError(f"key '{key}': got {value!r}, expected {expected!r}")
        return value
    if expected is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"key '{key}': got {value!r}, expected a boolean (true or false)")
        return value
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"key '{key}': got {value!r}, expected an integer")
        return value
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"key '{key}': got {value!r}, expected a number")
        return float(value)
    if expected is list:
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"key '{key}': got {value!r}, expected a non-empty list of strings")
        return value
    if expected == OptionalNumber:
        return None if value is None else _check_value(key, value, float)
    if not isinstance(value, expected):
        raise ConfigError(f"key '{key}': got {value!r}, expected {getattr(expected, '__name__', expected)}")
    return value


def validate_config(raw: Any, schema: dict = CONFIG_SCHEMA, prefix: str = "") -> dict:
    """Check `raw` against `schema`; return a validated deep copy. Raises ConfigError naming the key."""
    where = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"'{where}' must be a mapping of keys, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(schema), key=str)  # YAML 1.1 reads `on:` as True: keys of mixed types
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(prefix + str(k) for k in unknown)} "
                          f"(allowed in {where}: {', '.join(schema)})")
    missing = [prefix + k for k, v in schema.items() if k not in raw and not isinstance(v, Default)]
    if missing:
        raise ConfigError(f"missing key(s): {', '.join(missing)}")
    out = {}
    for key, expected in schema.items():
        full = prefix + key
        if isinstance(expected, dict):
            out[key] = validate_config(raw[key], expected, full + ".")
            continue
        if isinstance(expected, Default):
            if key not in raw:
                out[key] = copy.deepcopy(expected.value)
                continue
            expected = expected.expected
        value = _check_value(full, raw[key], expected)
        if full in _POSITIVE and value is not None and value <= 0:
            raise ConfigError(f"key '{full}': must be > 0, got {value!r}")
        if full in _NON_NEGATIVE and value < 0:
            raise ConfigError(f"key '{full}': must be >= 0, got {value!r}")
        if full in _ID_PATTERNS:
            try:
                compile_id_pattern(value)
            except ValueError as err:
                raise ConfigError(f"key '{full}': {err}") from None
        out[key] = copy.deepcopy(value)
    return out


def _set_dotted(cfg: dict, dotted: str, value: Any, schema: dict = CONFIG_SCHEMA) -> None:
    """Set `a.b.c` in `cfg`; the key must exist in the schema (a key with a Default may be absent from the file)."""
    node, spec = cfg, schema
    parts = dotted.split(".")
    for part in parts[:-1]:
        if not isinstance(spec.get(part), dict):
            raise ConfigError(f"override '{dotted}': no such section '{part}'")
        if not isinstance(node.get(part), dict):  # the file lacks the section: validation names that
            return
        node, spec = node[part], spec[part]
    if parts[-1] not in spec or isinstance(spec[parts[-1]], dict):
        raise ConfigError(f"override '{dotted}': no such key")
    node[parts[-1]] = value


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> dict:
    """Load and validate a YAML config.

    Args:
        path: the YAML file. Relative paths inside it are relative to the current directory, as in the reference.
        overrides: dotted keys -> values (from command-line flags), applied before validation. The YAML
            file itself is never rewritten.
    Returns:
        The validated config as a nested dict.
    Raises:
        ConfigError: naming the file and the offending key.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (not UTF-8); a config is a YAML text file") from None
    if "\x00" in text:
        raise ConfigError(f"{path}: not a text file (holds NUL bytes); a config is a YAML text file")
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
        if raw is None:
            raise ConfigError("the file is empty; copy configs/config_cloud.yaml and edit it")
        if not isinstance(raw, dict):
            raise ConfigError(f"the top level must be a mapping of sections (data:, training:, ...), "
                              f"got a YAML {type(raw).__name__}")
        for dotted, value in (overrides or {}).items():
            _set_dotted(raw, dotted, value)
        return validate_config(raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None


# ----------------------------------------------------------------------------------------------------------
# Command lines: one exit-status convention and help that shows real defaults

EXIT_OK = 0  # everything asked for was done
EXIT_FAILED = 1  # some subjects or nights failed (the rest were done), or a verification found problems
EXIT_SETUP = 2  # bad setup or arguments: nothing was done
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it; finished work is kept
SHIPPED_CONFIG = REPO_DIR / "configs" / "config_cloud.yaml"  # the defaults a script uses without --config


def config_default(dotted: str, path: str | os.PathLike = SHIPPED_CONFIG) -> Any:
    """The value of `dotted` (e.g. "preprocessing.workers") in a config file, for help texts; None if unreadable."""
    try:
        node = load_config(path)
        for part in dotted.split("."):
            node = node[part]
        return node
    except (ConfigError, KeyError, TypeError):
        return None


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and appends "(default: X)" to a flag's help when it has a real
    default: never "(default: None)" on a required flag or a flag whose default comes from the config."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or "default" in text or default is None or default is False
                or default is argparse.SUPPRESS or action.required or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


# ----------------------------------------------------------------------------------------------------------
# Metrics (paper definitions: pooled over all scored epochs, and per subject)


def compute_metrics(y_true: np.ndarray, y_pred: np.ndarray, subject_ids: np.ndarray | None = None) -> dict:
    """Sleep-staging metrics over scored epochs (labels != -1).

    Args:
        y_true: true 4-class labels, any shape; -1 entries are ignored.
        y_pred: predicted labels, same shape.
        subject_ids: subject of each entry, same shape; enables per-subject kappa.
    Returns:
        dict with `n_epochs`, `accuracy`, `kappa` (pooled Cohen's kappa), `f1_weighted`,
        `classification_report` (scikit-learn's dict), `confusion_matrix` (4x4 list, rows = true),
        and when `subject_ids` is given `per_subject_kappa` ({id: kappa}) and `per_subject_kappa_stats`
        (n, min, max, mean, std, median, q1, q3; subjects whose kappa is undefined - a single class in both
        truth and prediction - are listed in `undefined_kappa_subjects` and left out of the statistics).
    """
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

    y_true = np.asarray(y_true).reshape(-1)
    y_pred = np.asarray(y_pred).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} entries but y_pred has {y_pred.size}")
    mask = y_true != IGNORE_INDEX
    t, p = y_true[mask], y_pred[mask]
    labels = list(range(N_CLASSES))
    out: dict[str, Any] = {"n_epochs": int(mask.sum())}
    if t.size == 0:
        raise ValueError("no scored epochs (every label is -1): nothing to evaluate")
    out["accuracy"] = float(accuracy_score(t, p))
    out["kappa"] = _kappa(t, p)
    out["f1_weighted"] = float(f1_score(t, p, labels=labels, average="weighted", zero_division=0))
    out["classification_report"] = classification_report(
        t, p, labels=labels, target_names=list(STAGE_NAMES), output_dict=True, zero_division=0)
    out["confusion_matrix"] = confusion_matrix(t, p, labels=labels).tolist()
    if subject_ids is not None:
        sids = np.asarray(subject_ids).reshape(-1)
        if sids.shape != y_true.shape:
            raise ValueError("subject_ids must have one entry per label")
        sids = sids[mask]
        per_subject, undefined = {}, []
        for sid in sorted(set(sids.tolist())):
            sel = sids == sid
            k = _kappa(t[sel], p[sel])
            if math.isnan(k):
                undefined.append(_as_str(sid))
            else:
                per_subject[_as_str(sid)] = k
        out["per_subject_kappa"] = per_subject
        out["undefined_kappa_subjects"] = undefined
        out["per_subject_kappa_stats"] = summary_stats(list(per_subject.values()))
    return out


def _kappa(t: np.ndarray, p: np.ndarray) -> float:
    """Cohen's kappa; NaN when undefined (truth and prediction a single identical class)."""
    from sklearn.metrics import cohen_kappa_score

    if t.size == 0:
        return float("nan")
    if np.unique(np.concatenate([t, p])).size == 1:
        return float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(cohen_kappa_score(t, p, labels=list(range(N_CLASSES))))


def _as_str(sid: Any) -> str:
    return sid.decode() if isinstance(sid, bytes) else str(sid)


def summary_stats(values: list[float]) -> dict:
    """n, min, max, mean, std, median and quartiles of a list (NaN-free); all NaN when empty."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return {k: float("nan") for k in ("min", "max", "mean", "std", "median", "q1", "q3")} | {"n": 0}
    return {
        "n": int(arr.size), "min": float(arr.min()), "max": float(arr.max()), "mean": float(arr.mean()),
        "std": float(arr.std()), "median": float(np.median(arr)),
        "q1": float(np.percentile(arr, 25)), "q3": float(np.percentile(arr, 75)),
    }


# ----------------------------------------------------------------------------------------------------------
# I/O helpers


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it to `path`.

    On any exception (or KeyboardInterrupt) the temporary file is removed and `path` is untouched, so a
    final name never holds a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _current_umask() -> int:
    """The process umask, read from /proc on Linux: os.umask can only read it by setting it, and for that
    instant another thread's new files (a figure written by a writer thread) would get no umask at all."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _UMASK_LOCK:
        mask = os.umask(0o077)  # the strictest mask meanwhile, never a looser one
        os.umask(mask)
    return mask


_UMASK_LOCK = threading.Lock()


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically (see `atomic_output`)."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def adopt_recorded_parent_hash(training: dict, recorded: dict) -> None:
    """A fine-tuning run writes its parent's sha256 into its config (training.init_from_sha256) where the
    user's YAML has "": copy it into `training` (a config loaded from that YAML) when both name the same
    parent, so the two compare equal. `recorded` is the run's saved `training` section."""
    if not training.get("init_from_sha256") and training.get("init_from") == recorded.get("init_from"):
        training["init_from_sha256"] = recorded.get("init_from_sha256", "")


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


def resolve_device(requested: str | None, device_id: int = 0, local_rank: int | None = None):
    """The torch device for `--device`, with the same rules in training and inference.

    Args:
        requested: "auto" or None (CUDA when present, else the CPU with a warning), "cpu", "cuda" (the GPU
            below) or "cuda:N" (GPU N).
        device_id: the GPU that "auto" and "cuda" take (`gpu.device_id`).
        local_rank: under torchrun, this process's LOCAL_RANK: "auto" and "cuda" take that GPU instead.
    Returns:
        torch.device
    Raises:
        SetupError: an unknown name, CUDA asked for on a machine without it, or a GPU index that does not exist.
    """
    import torch

    name = "auto" if requested is None else str(requested).strip().lower()
    if name == "cpu":
        return torch.device("cpu")
    has_cuda = torch.cuda.is_available()
    if name == "auto":
        if not has_cuda:
            log.warning("no CUDA device found: running on the CPU (slow for full 10-h nights)")
            return torch.device("cpu")
        name = "cuda"
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise SetupError(f"--device must be auto, cpu, cuda or cuda:N (N = GPU number), got {requested!r}")
    if not has_cuda:
        raise SetupError(f"--device {requested}: CUDA was asked for but this machine has none usable "
                         f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); use --device cpu")
    if match.group(1) is not None:
        index, source = int(match.group(1)), f"--device {requested}"
    elif local_rank is not None:
        index, source = int(local_rank), f"LOCAL_RANK={local_rank} (torchrun)"
    else:
        index, source = int(device_id), f"gpu.device_id={device_id}"
    count = torch.cuda.device_count()
    if index >= count:
        raise SetupError(f"{source} asks for cuda:{index} but this machine has {count} CUDA device(s) "
                         f"(cuda:0 to cuda:{count - 1})")
    return torch.device(f"cuda:{index}")


def setup_logging(log_file: str | os.PathLike | None = None, level: int = logging.INFO) -> None:
    """Log to stderr (and to `log_file` when given) with one fixed format. Safe to call more than once."""
    fmt = logging.Formatter(LOG_FORMAT, LOG_DATE_FORMAT)
    root = logging.getLogger()
    root.setLevel(level)
    if not any(getattr(h, "_sleepppg_console", False) for h in root.handlers):
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(fmt)
        console._sleepppg_console = True  # type: ignore[attr-defined]
        root.addHandler(console)
    if log_file is not None:
        log_file = Path(log_file)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == log_file.resolve()
                   for h in root.handlers):
            handler = logging.FileHandler(log_file)
            handler.setFormatter(fmt)
            root.addHandler(handler)


@contextlib.contextmanager
def log_to_file(path: str | os.PathLike) -> Iterator[Path]:
    """Copy every log record to `path` (created with its folder) for the duration of the block, then detach
    and close the file handler, also on an error or Ctrl-C (so a second run in the same process, e.g. from
    tests, does not keep writing into the first run's log). Uses the format of `setup_logging`.

    When a handler for `path` is already attached, it is left as it is (and left attached afterwards).
    """
    path = Path(path)
    root = logging.getLogger()
    if any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path.resolve() for h in root.handlers):
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATE_FORMAT))
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()


# ----------------------------------------------------------------------------------------------------------
# Figures: matplotlib's object API on the Agg canvas (no pyplot state), so figures can be drawn in a writer
# thread and passed to TensorBoard's add_figure. matplotlib is imported only when a figure is drawn.

FIGURE_DPI = 110  # enough to read 1,200 epochs on a 12-inch-wide figure; higher only slows saving
MISTAKE_COLOR = "tab:orange"  # epochs where prediction and scoring disagree (REM is drawn in red)


def _hypnogram_levels(stages_W: np.ndarray) -> np.ndarray:
    """Plot level of each epoch (HYPNOGRAM_LEVEL), NaN where there is no stage (-1)."""
    lookup = np.full(N_CLASSES + 1, np.nan)  # the extra last slot (NaN) serves -1 and anything out of range
    for stage, level in HYPNOGRAM_LEVEL.items():
        lookup[stage] = level
    stages_W = np.asarray(stages_W, dtype=np.int64).reshape(-1)
    return lookup[np.where((stages_W >= 0) & (stages_W < N_CLASSES), stages_W, N_CLASSES)]


def _draw_hypnogram(ax, stages_W: np.ndarray, epoch_s: float, label: str) -> None:
    """A post-step hypnogram line on `ax` (black; REM epochs over it as a thick red line)."""
    levels = _hypnogram_levels(stages_W)
    x = np.arange(levels.size + 1) * epoch_s / 3600  # epoch edges, hours
    y = np.append(levels, levels[-1] if levels.size else np.nan)
    ax.step(x, y, where="post", color="black", linewidth=1.0, label=label)
    rem_y = np.where(y == HYPNOGRAM_LEVEL[REM_CLASS], y, np.nan)
    ax.step(x, rem_y, where="post", color="tab:red", linewidth=3.0, label="REM")
    order = sorted(HYPNOGRAM_LEVEL, key=HYPNOGRAM_LEVEL.get)
    ax.set_yticks([HYPNOGRAM_LEVEL[c] for c in order], [STAGE_NAMES[c] for c in order])
    ax.set_ylim(-0.5, 3.5)
    ax.set_xlim(0, max(x[-1], epoch_s / 3600))
    ax.grid(alpha=0.3, linestyle="--")


def hypnogram_figure(pred_W: np.ndarray, title: str, true_W: np.ndarray | None = None,
                     epoch_s: float = WINDOW_SECONDS):
    """A hypnogram figure: the predicted stages alone, or with `true_W` the scored hypnogram (top) above the
    predicted one (bottom) with each disagreeing epoch shaded orange on the predicted panel (REM is the red
    line; unscored epochs, -1, are gaps and never count as mistakes). Time runs from the recording start.

    Args:
        pred_W: predicted stage per epoch (0 Wake, 1 Light, 2 Deep, 3 REM).
        title: the figure title (put accuracy/kappa here when known).
        true_W: scored stage per epoch (same length, -1 = no stage), or None.
        epoch_s: epoch length in seconds.
    Returns:
        a matplotlib Figure (save it with `save_figure`, or give it to TensorBoard's add_figure).
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    pred_W = np.asarray(pred_W, dtype=np.int64).reshape(-1)
    if true_W is None:
        fig = Figure(figsize=(12, 3))
        ax = fig.subplots()
        _draw_hypnogram(ax, pred_W, epoch_s, "predicted")
        ax.set_title(title)
        ax.legend(loc="upper right", fontsize=8, ncols=2)
    else:
        true_W = np.asarray(true_W, dtype=np.int64).reshape(-1)
        if true_W.shape != pred_W.shape:
            raise ValueError(f"scored ({true_W.size}) and predicted ({pred_W.size}) hypnograms differ in length")
        fig = Figure(figsize=(12, 5.2))
        ax_true, ax = fig.subplots(2, 1, sharex=True)
        _draw_hypnogram(ax_true, true_W, epoch_s, "scored")
        ax_true.set_ylabel("Scored")
        ax_true.set_title(title)
        ax_true.legend(loc="upper right", fontsize=8, ncols=2)
        _draw_hypnogram(ax, pred_W, epoch_s, "predicted")
        ax.set_ylabel("Predicted")
        wrong_W = (true_W != IGNORE_INDEX) & (true_W != pred_W)
        edges = np.arange(pred_W.size + 1) * epoch_s / 3600
        ax.fill_between(edges, -0.5, 3.5, where=np.append(wrong_W, False), step="post", color=MISTAKE_COLOR,
                        alpha=0.5, linewidth=0, zorder=0)
        handles, labels = ax.get_legend_handles_labels()
        handles.append(Patch(color=MISTAKE_COLOR, alpha=0.5))
        labels.append(f"disagrees with the scored stage ({int(wrong_W.sum())} epochs)")
        ax.legend(handles, labels, loc="upper right", fontsize=8, ncols=3)
    ax.set_xlabel("Time from recording start (h)")
    fig.tight_layout()
    return fig


def confusion_figure(cm_CC: np.ndarray, title: str):
    """A confusion matrix figure: rows = scored stage, columns = predicted; each cell shows its count and its
    share of the row (the scored stage's epochs); the colour is that row share (row-normalised, so rare stages
    read as clearly as common ones; the colour bar says so). Accuracy and Cohen's kappa, computed from the
    matrix itself, are in the title.

    Args:
        cm_CC: 4x4 counts (rows true, columns predicted), e.g. compute_metrics(...)["confusion_matrix"].
        title: the first title line (e.g. "Validation, epoch 12").
    Returns:
        a matplotlib Figure.
    """
    from matplotlib.figure import Figure

    cm_CC = np.asarray(cm_CC, dtype=np.int64)
    if cm_CC.shape != (N_CLASSES, N_CLASSES):
        raise ValueError(f"confusion matrix must be {N_CLASSES}x{N_CLASSES}, got {cm_CC.shape}")
    accuracy, kappa = accuracy_kappa_from_confusion(cm_CC)
    row_sums = cm_CC.sum(axis=1, keepdims=True)
    share_CC = np.divide(cm_CC, row_sums, out=np.zeros(cm_CC.shape), where=row_sums > 0)
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    image = ax.imshow(share_CC, cmap="Blues", vmin=0.0, vmax=1.0)
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("share of the scored stage's epochs (row-normalised)")
    for i in range(N_CLASSES):
        for j in range(N_CLASSES):
            ax.text(j, i, f"{cm_CC[i, j]:d}\n{100 * share_CC[i, j]:.1f}%", ha="center", va="center", fontsize=9,
                    color="white" if share_CC[i, j] > 0.6 else "black")
    ax.set_xticks(range(N_CLASSES), STAGE_NAMES)
    ax.set_yticks(range(N_CLASSES), STAGE_NAMES)
    ax.set_xlabel("Predicted stage")
    ax.set_ylabel("Scored stage")
    fmt = lambda v, spec: "undefined" if v is None else format(v, spec)  # noqa: E731
    ax.set_title(f"{title}\nkappa {fmt(kappa, '.3f')}, accuracy {fmt(accuracy, '.1%')} "
                 f"({int(cm_CC.sum())} epochs; cell: count, % of row)", fontsize=10)
    fig.tight_layout()
    return fig


def accuracy_kappa_from_confusion(cm_CC: np.ndarray) -> tuple[float | None, float | None]:
    """(accuracy, Cohen's kappa) of a confusion matrix: p_o = trace / n, p_e = sum(row_i x col_i) / n^2,
    kappa = (p_o - p_e) / (1 - p_e). None where undefined (no epochs; p_e = 1, a single class throughout)."""
    cm_CC = np.asarray(cm_CC, dtype=float)
    n = cm_CC.sum()
    if n == 0:
        return None, None
    p_o = np.trace(cm_CC) / n
    p_e = float(cm_CC.sum(axis=1) @ cm_CC.sum(axis=0)) / n**2
    return float(p_o), (float((p_o - p_e) / (1 - p_e)) if p_e < 1 else None)


def save_figure(fig, path: str | os.PathLike, dpi: int = FIGURE_DPI) -> None:
    """Save `fig` as a PNG at `path`, atomically (never a half-written image under the final name)."""
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)


def keep_freed_memory() -> bool:
    """Ask glibc to serve blocks below 2 GiB from its heap and to keep freed memory for reuse.

    A night's forward (and backward) pass allocates and frees activations of ~80 MB per night per layer; by
    default glibc gives each its own fresh mmap, which the kernel must fault in and zero page by page. Measured on this
    project's 2-core CPU box: ~1 s of system time per 10-h night, about as much as the model's arithmetic, and
    the forward pass twice as fast without it. (Sharing one arena with the preprocessing threads, so that they
    reuse memory too, made cold runs slower here: not done.) The cost: the process keeps its peak memory until
    it exits. Process-wide, so only the scripts' entry points call it (not their `main`, which tests call).
    Returns False where it does not apply (not glibc).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    return bool(mallopt(GLIBC_M_MMAP_THRESHOLD, KEEP_FREED_BYTES) == 1
                and mallopt(GLIBC_M_TRIM_THRESHOLD, KEEP_FREED_BYTES) == 1)
