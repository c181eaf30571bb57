"""The one YAML config: its schema, loader and validator.

`load_config(path, overrides)` reads one UTF-8 YAML file as YAML 1.2 does (`0042` is 42, `yes` is text, not a
boolean), rejects unknown/missing keys, wrong types and non-booleans such as the reference's `flase` or `yes`,
expands `~` and $VARIABLES in path keys, and returns a plain nested dict. Usage:
`cfg = load_config("configs/config_demo.yaml", {"training.num_epochs": 2})`
"""

from __future__ import annotations

import codecs
import copy
import math
import os
import re
from pathlib import Path
from typing import Any

import yaml

from sleepppg.constants import MESA_ID_PATTERN, SHIPPED_CONFIG
from sleepppg.errors import ConfigError
from sleepppg.ids import compile_id_pattern


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
    "evaluation": {  # the validation report that training (test set) and inference (HDF5 mode) write
        "metadata_file": Default(str, ""),  # subject metadata CSV (NSRR harmonized) for subgroups; "" = none
        "validation_report": Default(bool, True),  # false: only the night CSVs (report later: validation_report.py)
    },
}

# Values that must be positive (> 0) or non-negative (>= 0); checked after types.
_POSITIVE = {
    "data.batch_size", "data.windows_per_subject", "preprocessing.chunk_windows", "training.num_epochs",
    "training.learning_rate", "training.num_runs", "training.grad_clip", "training.lr_factor",
    "output.save_frequency", "inference.n_subjects", "inference.batch_size",
    "preprocessing.nominal_fs", "preprocessing.max_gap_s", "inference.ppg_fs",
}
# Seeds go to scikit-learn (the split) and numpy, which take 0 .. 2**32 - 1 only
_SEEDS, MAX_SEED = {"training.seed", "inference.random_seed"}, 2**32 - 1
_ID_PATTERNS = {"preprocessing.id_pattern"}  # must compile, with exactly one capturing group
_NON_NEGATIVE = {
    "data.num_workers", "preprocessing.workers", "training.weight_decay", "training.patience",
    "training.lr_patience", "gpu.device_id", "training.segment_windows",
}
# Keys that name a file or folder: `~` and environment variables ($HOME, ${DATA}) in them are expanded as a
# shell would, so `~/mesa` never becomes a folder named "~"; "" (not set) stays "".
PATH_KEYS = {
    "data.ppg_file", "data.ecg_file", "data.index_file", "preprocessing.edf_dir", "preprocessing.xml_dir",
    "preprocessing.out_dir", "preprocessing.csv_dir", "training.test_subjects_file", "training.init_from",
    "output.save_dir", "inference.save_dir", "inference.best_model", "inference.cache_root",
    "inference.edf_file", "inference.ppg_file", "evaluation.metadata_file",
}
_ENV_VARIABLE = re.compile(r"\$(?:([A-Za-z_][A-Za-z0-9_]*)|\{([^}]*)\})")  # $NAME or ${NAME}


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that reads plain scalars as the YAML 1.2 core schema does, and refuses a key written twice in
    one mapping (the reference's sample config has `random_seed` and `save_dir` twice under `inference`; YAML
    silently keeps the last one).

    PyYAML follows YAML 1.1, where `0042` is 34 (octal), `1:30` is 90 (base 60), `yes`/`no`/`on`/`off` are
    booleans, `2024-01-01` is a date and `1e-5` is a string. Here, as in YAML 1.2 and JSON: booleans are only
    true/false, integers are decimal (`0042` is 42; `0o17` octal and `0x1F` hex are written so), floats
    include the exponent form, null is null or `~` or nothing; every other plain scalar is a string, and the
    validator then names the key whose type does not fit (`yes` for a boolean: "write true or false")."""

    yaml_implicit_resolvers: dict = {}  # none of SafeLoader's YAML 1.1 resolvers; the 1.2 ones follow


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


def _construct_core_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    """A YAML 1.2 core integer: decimal with an optional sign, `0o` octal or `0x` hex."""
    text = loader.construct_scalar(node)
    if text[:2] in ("0o", "0x"):
        return int(text[2:], 8 if text[1] == "o" else 16)
    return int(text)


def _construct_core_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    """A YAML 1.2 core float: decimal or exponent form, `.inf`, `-.inf`, `.nan` (the validator refuses the last
    three for every number key)."""
    text = loader.construct_scalar(node).lower()
    if text.lstrip("+-") == ".inf":
        return -math.inf if text.startswith("-") else math.inf
    return math.nan if text == ".nan" else float(text)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)
_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", _construct_core_int)
_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:float", _construct_core_float)
for _tag, _regex, _first in [  # the YAML 1.2 core schema's tag resolution (yaml.org/spec/1.2.2, 10.3.2)
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", list("-+0123456789")),
    ("tag:yaml.org,2002:float", r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                                r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$", list("-+0123456789.")),
    ("tag:yaml.org,2002:merge", r"^(?:<<)$", ["<"]),  # `<<: *defaults`, which configs use to share values
]:
    _UniqueKeyLoader.add_implicit_resolver(_tag, re.compile(_regex), _first)


def expand_path(key: str, value: str) -> str:
    """`value` with `~` (the home folder) and $NAME / ${NAME} (environment variables) expanded.

    Raises:
        ConfigError: naming the key and the variable when a variable is not set, or when `~user` names no
            user: such a path would otherwise create a folder literally named so.
    """
    def variable(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in os.environ:
            raise ConfigError(f"key '{key}': {value!r} uses the environment variable {name!r}, which is not set "
                              "(set it, or write the path without it)")
        return os.environ[name]

    expanded = os.path.expanduser(_ENV_VARIABLE.sub(variable, value))
    if expanded.startswith("~"):
        raise ConfigError(f"key '{key}': cannot expand {value.split('/', 1)[0]!r} in {value!r} (no such user); "
                          "write the full path")
    return expanded


def _scalar_hint(value: Any) -> str:
    """Why a plain YAML value is not the text it looks like, for messages about text keys."""
    if value is None:
        return " (an empty value, null or ~ alone is YAML's null; write the text in quotes)"
    if isinstance(value, (bool, int, float)):
        return " (YAML reads this as a number or boolean; write the text in quotes)"
    return ""


def _check_value(key: str, value: Any, expected: Any) -> Any:
    """Return `value` if it matches `expected` (a type, a Choice or a tuple of types), else raise."""
    if isinstance(expected, Choice):
        if value not in expected.values:
            raise ConfigError(f"key '{key}': got {value!r}, expected {expected!r}")
        return value
    if expected is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"key '{key}': got {value!r}, expected a boolean: write true or false")
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
        raise ConfigError(f"key '{key}': got {value!r}, expected {getattr(expected, '__name__', expected)}"
                          + (_scalar_hint(value) if expected is str else ""))
    return value


def _optional(expected: Any) -> bool:
    """A key that may be left out: one with a Default, or a section whose every key may be left out."""
    if isinstance(expected, dict):
        return all(_optional(v) for v in expected.values())
    return isinstance(expected, Default)


def validate_config(raw: Any, schema: dict = CONFIG_SCHEMA, prefix: str = "") -> dict:
    """Check `raw` against `schema`; return a validated deep copy. Raises ConfigError naming the key."""
    where = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"'{where}' must be a mapping of keys, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(schema), key=str)  # YAML 1.1 reads `on:` as True: keys of mixed types
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(prefix + str(k) for k in unknown)} "
                          f"(allowed in {where}: {', '.join(schema)})")
    missing = [prefix + k for k, v in schema.items() if k not in raw and not _optional(v)]
    if missing:
        raise ConfigError(f"missing key(s): {', '.join(missing)}")
    out = {}
    for key, expected in schema.items():
        full = prefix + key
        if isinstance(expected, dict):
            out[key] = validate_config(raw.get(key, {}), expected, full + ".")
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
        if full in _SEEDS and not 0 <= value <= MAX_SEED:
            raise ConfigError(f"key '{full}': a seed must be within 0..{MAX_SEED}, got {value!r}")
        if full in _ID_PATTERNS:
            try:
                compile_id_pattern(value)
            except ValueError as err:
                raise ConfigError(f"key '{full}': {err}") from None
        if full in PATH_KEYS and value:
            value = expand_path(full, value)
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


def _wide_encoding(data: bytes) -> str | None:
    """'UTF-16' or 'UTF-32' (with the byte order) when `data` starts with that byte-order mark, or is text
    whose every other byte is NUL (UTF-16 without a mark); None otherwise."""
    for mark, name in ((codecs.BOM_UTF32_LE, "UTF-32-LE"), (codecs.BOM_UTF32_BE, "UTF-32-BE"),
                       (codecs.BOM_UTF16_LE, "UTF-16-LE"), (codecs.BOM_UTF16_BE, "UTF-16-BE")):
        if data.startswith(mark):
            return name
    if len(data) >= 4 and len(data) % 2 == 0:
        if not any(data[1::2]) and all(data[0::2]):
            return "UTF-16-LE"
        if not any(data[0::2]) and all(data[1::2]):
            return "UTF-16-BE"
    return None


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
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file: {err.strerror or err}") from None
    encoding = _wide_encoding(data)
    if encoding:
        raise ConfigError(f"{path}: the file is {encoding} encoded; save it as UTF-8 (in Notepad: Save as, "
                          "Encoding UTF-8)")
    try:
        text = data.decode("utf-8-sig")  # a UTF-8 byte-order mark (Windows editors write one) is dropped
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


def config_default(dotted: str, path: str | os.PathLike = SHIPPED_CONFIG) -> Any:
    """The value of `dotted` (e.g. "preprocessing.workers") in a config file, for help texts; None if unreadable."""
    try:
        node = load_config(path)
        for part in dotted.split("."):
            node = node[part]
        return node
    except (ConfigError, KeyError, TypeError):
        return None


def adopt_recorded_parent_hash(training: dict, recorded: dict) -> None:
    """A fine-tuning run writes its parent's sha256 into its config (training.init_from_sha256) where the
    user's YAML has "": copy it into `training` (a config loaded from that YAML) when both name the same
    parent, so the two compare equal. `recorded` is the run's saved `training` section."""
    if not training.get("init_from_sha256") and training.get("init_from") == recorded.get("init_from"):
        training["init_from_sha256"] = recorded.get("init_from_sha256", "")
MISTAKE_COLOR = "tab:orange"  # epochs where prediction and scoring disagree (REM is drawn in red)
