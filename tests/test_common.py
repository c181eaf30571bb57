"""Tests for the shared library modules (sleepppg.config, .metrics, .runio, .ids, .cli): config validation, metrics against scikit-learn, atomic writes, ID lists."""
import datetime
import json
import types

import numpy as np
import pytest
from helpers import REPO
from sklearn.metrics import cohen_kappa_score

import sleepppg.cli
import sleepppg.config
import sleepppg.runio
from sleepppg.config import load_config
from sleepppg.errors import ConfigError
from sleepppg.ids import mesa_commercial_ids, sleepppg_test_subjects
from sleepppg.metrics import compute_metrics
from sleepppg.runio import atomic_output, make_timestamped_dir

CONFIGS = [REPO / "configs" / "config_cloud.yaml", REPO / "configs" / "config_demo.yaml"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    cfg = load_config(path)
    assert cfg["data"]["windows_per_subject"] == 1200
    assert cfg["inference"]["only_inference"] is False


def _write(tmp_path, text_from, old, new):
    src = open(text_from).read()
    assert old in src
    p = tmp_path / "cfg.yaml"
    p.write_text(src.replace(old, new, 1))
    return p


def test_evaluation_section_is_optional_and_checked(tmp_path):
    text = CONFIGS[0].read_text()
    section = text[text.index("\nevaluation:"):]
    without = tmp_path / "without.yaml"
    without.write_text(text.replace(section, "\n"))
    assert load_config(without)["evaluation"] == {"metadata_file": "", "validation_report": True}
    assert load_config(CONFIGS[0], {"evaluation.metadata_file": "m.csv"})["evaluation"]["metadata_file"] == "m.csv"
    p = _write(tmp_path, CONFIGS[0], '  metadata_file: ""', '  metadata_fle: ""')
    with pytest.raises(ConfigError, match="evaluation.metadata_fle"):
        load_config(p)
    p = _write(tmp_path, CONFIGS[0], '  metadata_file: ""', "  metadata_file: 3")
    with pytest.raises(ConfigError, match="evaluation.metadata_file"):
        load_config(p)


def test_flase_is_rejected_naming_the_key(tmp_path):
    p = _write(tmp_path, CONFIGS[0], "only_inference: false", "only_inference: flase")
    with pytest.raises(ConfigError, match="inference.only_inference"):
        load_config(p)


def test_unknown_key_is_rejected(tmp_path):
    p = _write(tmp_path, CONFIGS[0], "  batch_size: 8", "  batch_sise: 8")
    with pytest.raises(ConfigError, match="data.batch_sise"):
        load_config(p)


def test_wrong_type_and_range(tmp_path):
    p = _write(tmp_path, CONFIGS[0], "  batch_size: 8", "  batch_size: eight")
    with pytest.raises(ConfigError, match="data.batch_size"):
        load_config(p)
    p = _write(tmp_path, CONFIGS[0], "  batch_size: 8", "  batch_size: 0")
    with pytest.raises(ConfigError, match="must be > 0"):
        load_config(p)
    p = _write(tmp_path, CONFIGS[0], "fusion_strategy: attention", "fusion_strategy: sum")
    with pytest.raises(ConfigError, match="model.real_ecg.fusion_strategy"):
        load_config(p)


def test_missing_and_duplicate_keys(tmp_path):
    p = _write(tmp_path, CONFIGS[0], "  patience: 10", "")
    with pytest.raises(ConfigError, match="training.patience"):
        load_config(p)
    p = _write(tmp_path, CONFIGS[0], "  random_seed: 42", "  random_seed: 42\n  random_seed: 7")
    with pytest.raises(ConfigError, match="duplicate key 'random_seed'"):
        load_config(p)


def test_yaml_quirks_give_a_config_error_or_load(tmp_path):
    """A YAML 1.1 boolean key (`on:`, read as the text 'on') beside a typo, a list as a key, and a merge key
    (`<<: *anchor`)."""
    p = _write(tmp_path, CONFIGS[0], "  compile: false", "  compile: false\n  on: 1\n  compiel: true")
    with pytest.raises(ConfigError, match="unknown key.*gpu.compiel, gpu.on"):
        load_config(p)
    p = _write(tmp_path, CONFIGS[0], "  compile: false", "  compile: false\n  [a, b]: 1")
    with pytest.raises(ConfigError, match="a list or mapping cannot be a key"):
        load_config(p)
    p = _write(tmp_path, CONFIGS[0], "gpu:", "gpu_defaults: &gpu_defaults\n  device_id: 0\ngpu:\n  <<: *gpu_defaults")
    with pytest.raises(ConfigError, match="unknown key.*gpu_defaults"):  # loads; the extra section is refused
        load_config(p)


@pytest.mark.parametrize("old, new, key, reading", [
    ("  only_inference: false", "  only_inference: no", "inference.only_inference", "write true or false"),
    ("  compile: false", "  compile: off", "gpu.compile", "write true or false"),
    ("  compile: false", "  compile: Yes", "gpu.compile", "write true or false"),
    ("  batch_size: 8", "  batch_size: 1:30", "data.batch_size", "'1:30'.*integer"),
    ("  batch_size: 8", "  batch_size: 1_000", "data.batch_size", "'1_000'.*integer"),
    ("  ppg_column: BVP", "  ppg_column: 0042", "preprocessing.ppg_column", "got 42.*quotes"),
    ("  ppg_column: BVP", "  ppg_column: ~", "preprocessing.ppg_column", "got None.*null"),
    ("  ppg_column: BVP", "  ppg_column: true", "preprocessing.ppg_column", "got True.*quotes"),
])
def test_yaml_12_readings_refuse_what_does_not_fit_naming_the_key(tmp_path, old, new, key, reading):
    """YAML 1.1's second readings (yes/off booleans, 1:30 in base 60) are text here, refused by key."""
    p = _write(tmp_path, CONFIGS[0], old, new)
    with pytest.raises(ConfigError, match=f"'{key}'.*{reading}"):
        load_config(p)


def test_yaml_12_numbers_load_as_written(tmp_path):
    """`0042` is 42 (YAML 1.1: octal 34), `0o10` octal and `0x10` hex; a date stays text."""
    cfg = load_config(_write(tmp_path, CONFIGS[0], "  batch_size: 8", "  batch_size: 0042"))
    assert cfg["data"]["batch_size"] == 42
    cfg = load_config(_write(tmp_path, CONFIGS[0], "  batch_size: 8", "  batch_size: 0o10"))
    assert cfg["data"]["batch_size"] == 8
    cfg = load_config(_write(tmp_path, CONFIGS[0], "  batch_size: 8", "  batch_size: 0x10"))
    assert cfg["data"]["batch_size"] == 16
    cfg = load_config(_write(tmp_path, CONFIGS[0], "  ppg_column: BVP", "  ppg_column: 2024-01-01"))
    assert cfg["preprocessing"]["ppg_column"] == "2024-01-01"
    cfg = load_config(_write(tmp_path, CONFIGS[0], "  ppg_column: BVP", "  ppg_column: on"))
    assert cfg["preprocessing"]["ppg_column"] == "on"


def test_path_keys_expand_home_and_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MESA_ROOT", "/data/mesa")
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    p = _write(tmp_path, CONFIGS[0], "  out_dir: ./mesa-x", "  out_dir: ~/mesa-x")
    assert load_config(p)["preprocessing"]["out_dir"] == str(tmp_path / "home" / "mesa-x")
    p = _write(tmp_path, CONFIGS[0], "  out_dir: ./mesa-x", "  out_dir: $HOME/x/${MESA_ROOT}")
    assert load_config(p)["preprocessing"]["out_dir"] == f"{tmp_path}/home/x//data/mesa"
    p = _write(tmp_path, CONFIGS[0], "  out_dir: ./mesa-x", "  out_dir: ${NOT_SET_ANYWHERE}/x")
    with pytest.raises(ConfigError, match="'preprocessing.out_dir'.*'NOT_SET_ANYWHERE', which is not set"):
        load_config(p)
    p = _write(tmp_path, CONFIGS[0], "  out_dir: ./mesa-x", "  out_dir: ~no_such_user_xq/x")
    with pytest.raises(ConfigError, match="'preprocessing.out_dir'.*'~no_such_user_xq'.*no such user"):
        load_config(p)
    cfg = load_config(CONFIGS[0], {"inference.save_dir": "~/runs"})  # a quoted flag is expanded too
    assert cfg["inference"]["save_dir"] == str(tmp_path / "home" / "runs")
    assert cfg["inference"]["ppg_column"] is None and cfg["training"]["init_from"] == ""  # no path: untouched


@pytest.mark.parametrize("encoding, named", [("utf-16", "UTF-16-LE"), ("utf-16-be", "UTF-16-BE"),
                                             ("utf-16-le", "UTF-16-LE"), ("utf-32", "UTF-32-LE")])
def test_a_utf16_config_names_its_encoding_and_a_utf8_bom_loads(tmp_path, encoding, named):
    p = tmp_path / "wide.yaml"
    p.write_bytes(CONFIGS[0].read_text(encoding="utf-8").encode(encoding))
    with pytest.raises(ConfigError, match=f"is {named} encoded; save it as UTF-8") as err:
        load_config(p)
    assert str(p) in str(err.value)
    bom = tmp_path / "bom.yaml"
    bom.write_bytes(b"\xef\xbb\xbf" + CONFIGS[0].read_bytes())
    assert load_config(bom) == load_config(CONFIGS[0])


@pytest.mark.parametrize("value", ["true", ".nan", "-5", "0"])
def test_ppg_fs_must_be_a_positive_number_or_null(tmp_path, value):
    p = _write(tmp_path, CONFIGS[0], "ppg_fs: null", f"ppg_fs: {value}")
    with pytest.raises(ConfigError, match="inference.ppg_fs"):
        load_config(p)
    assert load_config(_write(tmp_path, CONFIGS[0], "ppg_fs: null", "ppg_fs: 64"))["inference"]["ppg_fs"] == 64.0


@pytest.mark.parametrize("key,value", [("seed", "-1"), ("random_seed", "-7"), ("seed", "4294967296")])
def test_a_seed_outside_what_numpy_and_scikit_learn_take_is_refused_by_key(tmp_path, key, value):
    p = _write(tmp_path, CONFIGS[0], f"\n  {key}: 42", f"\n  {key}: {value}")
    with pytest.raises(ConfigError, match=rf"'(training|inference)\.{key}': a seed must be within 0\.\.4294967295"):
        load_config(p)


def test_an_override_into_a_missing_section_reports_the_section(tmp_path):
    import yaml

    raw = yaml.safe_load(CONFIGS[0].read_text())
    del raw["training"]
    p = tmp_path / "no_training.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="missing key.*training"):  # not the override's fault
        load_config(p, {"training.num_epochs": 2})
    with pytest.raises(ConfigError, match="no such section 'trainin'"):
        load_config(CONFIGS[0], {"trainin.num_epochs": 2})

def test_exponent_floats_load_as_numbers_and_a_run_config_json_reloads(tmp_path):
    """`1e-5` is a float (YAML 1.1 would make it a string), so a run's config.json (JSON writes 1e-05) reloads."""
    p = _write(tmp_path, CONFIGS[1], "weight_decay: 0.00001", "weight_decay: 1e-5")
    assert load_config(p)["training"]["weight_decay"] == 1e-5
    p = _write(tmp_path, CONFIGS[1], "learning_rate: 0.0005", 'learning_rate: "5e-4"')  # quoted stays a string
    with pytest.raises(ConfigError, match="training.learning_rate"):
        load_config(p)
    cfg = load_config(CONFIGS[1])
    as_json = tmp_path / "config.json"
    as_json.write_text(json.dumps(cfg, indent=2))  # as train_ppg_only writes checkpoints/config.json
    assert "1e-05" in as_json.read_text() and load_config(as_json) == cfg


def test_overrides_apply_and_are_validated():
    cfg = load_config(CONFIGS[1], {"training.num_epochs": 2, "data.windows_per_subject": 40})
    assert cfg["training"]["num_epochs"] == 2 and cfg["data"]["windows_per_subject"] == 40
    with pytest.raises(ConfigError, match="no such key"):
        load_config(CONFIGS[1], {"training.epochs": 2})
    with pytest.raises(ConfigError, match="training.num_epochs"):
        load_config(CONFIGS[1], {"training.num_epochs": "2"})


def test_metrics_match_sklearn_and_ignore_unscored():
    rng = np.random.default_rng(0)
    y_true = rng.integers(-1, 4, size=(3, 200))
    y_pred = np.where(rng.random((3, 200)) < 0.7, y_true.clip(0), rng.integers(0, 4, size=(3, 200)))
    sids = np.repeat(np.array(["0001", "0002", "0003"]), 200).reshape(3, 200)
    m = compute_metrics(y_true, y_pred, sids)
    keep = y_true.reshape(-1) != -1
    assert m["n_epochs"] == keep.sum()
    assert m["kappa"] == pytest.approx(cohen_kappa_score(y_true.reshape(-1)[keep], y_pred.reshape(-1)[keep]))
    for i, sid in enumerate(["0001", "0002", "0003"]):
        k = y_true[i] != -1
        assert m["per_subject_kappa"][sid] == pytest.approx(cohen_kappa_score(y_true[i][k], y_pred[i][k]))
    assert m["per_subject_kappa_stats"]["n"] == 3
    assert np.array(m["confusion_matrix"]).sum() == keep.sum()


def test_metrics_undefined_subject_kappa_is_reported_not_averaged():
    y_true = np.array([1, 1, 1, 0, 1, 2, 3])
    y_pred = np.array([1, 1, 1, 0, 1, 2, 2])
    sids = np.array(["a", "a", "a", "b", "b", "b", "b"])
    m = compute_metrics(y_true, y_pred, sids)
    assert m["undefined_kappa_subjects"] == ["a"]
    assert list(m["per_subject_kappa"]) == ["b"]
    with pytest.raises(ValueError, match="no scored epochs"):
        compute_metrics(np.array([-1, -1]), np.array([0, 1]))


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic_output(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole" and len(list(tmp_path.iterdir())) == 1


def test_timestamped_dir_gets_a_suffix_when_taken(tmp_path, monkeypatch):
    fixed = datetime.datetime(2024, 1, 2, 3, 4, 5)  # every call lands in the same second
    monkeypatch.setattr(sleepppg.runio, "datetime",
                        types.SimpleNamespace(datetime=types.SimpleNamespace(now=lambda: fixed)))
    made = [make_timestamped_dir(tmp_path / "runs", "ppg_only_", "_run1") for _ in range(3)]
    base = "ppg_only_20240102_030405_run1"
    assert [p.name for p in made] == [base, f"{base}_2", f"{base}_3"] and all(p.is_dir() for p in made)
    assert make_timestamped_dir(tmp_path / "plain").name == "20240102_030405"
    for k in range(4, 1001):
        (tmp_path / "runs" / f"{base}_{k}").mkdir()
    with pytest.raises(FileExistsError):
        make_timestamped_dir(tmp_path / "runs", "ppg_only_", "_run1")


def test_id_lists():
    test_ids = sleepppg_test_subjects()
    all_ids = set(mesa_commercial_ids())
    assert len(test_ids) == 204 and len(all_ids) == 1900
    assert sum(i in all_ids for i in test_ids) == 193  # 193 of the 204 test IDs are in the commercial-use release


@pytest.mark.parametrize("content, reason", [
    (b"", "empty"),
    (b"\x00\x01\x02\xff\xfe binary", "not a text file"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "not a text file"),
    (b"- a\n- b\n", "must be a mapping"),
    (b"just a string\n", "must be a mapping"),
    (b"data: [1, 2\n", "not valid YAML"),
])
def test_config_that_is_not_a_yaml_mapping_names_the_file(tmp_path, content, reason):
    p = tmp_path / "weird.yaml"
    p.write_bytes(content)
    with pytest.raises(ConfigError, match=reason) as err:
        load_config(p)
    assert str(p) in str(err.value)


def test_default_key_may_be_absent_and_is_still_checked(monkeypatch):
    schema = {"a": {"x": int, "y": sleepppg.config.Default(bool, False)}}
    assert sleepppg.config.validate_config({"a": {"x": 1}}, schema) == {"a": {"x": 1, "y": False}}
    assert sleepppg.config.validate_config({"a": {"x": 1, "y": True}}, schema)["a"]["y"] is True
    with pytest.raises(ConfigError, match="a.y"):
        sleepppg.config.validate_config({"a": {"x": 1, "y": "flase"}}, schema)
    cfg = {"a": {"x": 1}}
    sleepppg.config._set_dotted(cfg, "a.y", True, schema)
    assert cfg == {"a": {"x": 1, "y": True}}
    with pytest.raises(ConfigError, match="no such key"):
        sleepppg.config._set_dotted(cfg, "a.z", True, schema)


def test_help_formatter_shows_real_defaults_only():
    import argparse

    p = argparse.ArgumentParser(formatter_class=sleepppg.cli.HelpFormatter)
    p.add_argument("--workers", type=int, default=3, help="processes")
    p.add_argument("--out", required=True, help="where")
    p.add_argument("--limit", type=int, help="only N")
    p.add_argument("--force", action="store_true", help="redo")
    text = p.format_help()
    assert "processes (default: 3)" in text
    assert "None" not in text and "default: False" not in text


def test_config_default_reads_the_shipped_config():
    assert sleepppg.config.config_default("data.windows_per_subject") == 1200
    assert sleepppg.config.config_default("no.such.key") is None


# ----------------------------------------------------------------------------------------------------------
# Shared script helpers: device, run folder, log file, figures


@pytest.fixture
def fake_cuda(monkeypatch):
    """Pretend CUDA has `n` devices (0 = none)."""
    import torch

    def set_count(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return set_count


def test_resolve_device_rules(fake_cuda, caplog):
    from sleepppg.errors import SetupError
    from sleepppg.runtime import resolve_device

    fake_cuda(0)
    assert str(resolve_device("cpu", 3)) == "cpu"
    caplog.clear()
    assert str(resolve_device("auto", 0)) == "cpu" and str(resolve_device(None, 0)) == "cpu"
    assert any("no CUDA device" in r.getMessage() for r in caplog.records)
    for name in ("cuda", "cuda:0", "CUDA:1"):
        with pytest.raises(SetupError, match="use --device cpu"):
            resolve_device(name, 0)
    for bad in ("gpu", "cuda:x", "cuda:-1", "mps0", ""):
        with pytest.raises(SetupError, match="auto, cpu, cuda or cuda:N"):
            resolve_device(bad, 0)

    fake_cuda(2)
    assert str(resolve_device("auto", 1)) == "cuda:1"  # gpu.device_id
    assert str(resolve_device("cuda", 0)) == "cuda:0"
    assert str(resolve_device("cuda:1", 0)) == "cuda:1"  # an explicit index wins over device_id
    assert str(resolve_device("auto", 0, local_rank=1)) == "cuda:1"  # torchrun: LOCAL_RANK wins over device_id
    with pytest.raises(SetupError, match="under torchrun would put every rank on GPU 0"):
        resolve_device("cuda:0", 1, local_rank=1)  # every rank on one GPU: refused
    with pytest.raises(SetupError, match=r"gpu.device_id=5 asks for cuda:5 .* 2 CUDA device"):
        resolve_device("auto", 5)
    with pytest.raises(SetupError, match="LOCAL_RANK=2"):
        resolve_device("cuda", 0, local_rank=2)
    with pytest.raises(SetupError, match=r"--device cuda:7"):
        resolve_device("cuda:7", 0)


def test_make_run_dir_names_the_problem(tmp_path, monkeypatch):
    from sleepppg.errors import SetupError
    from sleepppg.runio import make_run_dir

    run = make_run_dir(tmp_path / "runs", "ppg_only_", "_run2")
    assert run.is_dir() and run.name.startswith("ppg_only_") and run.name.endswith("_run2")
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    for parent in (blocker, blocker / "below"):
        with pytest.raises(SetupError, match=f"cannot create a run folder: {blocker} is a file"):
            make_run_dir(parent)

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(sleepppg.runio, "make_timestamped_dir", deny)
    with pytest.raises(SetupError, match="permission denied"):
        make_run_dir(tmp_path / "locked")

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sleepppg.runio, "make_timestamped_dir", full)
    with pytest.raises(SetupError, match="No space left"):
        make_run_dir(tmp_path / "full")


def test_log_to_file_always_detaches(tmp_path):
    import logging

    from sleepppg.cli import log_to_file

    root = logging.getLogger()
    before = list(root.handlers)
    logger = logging.getLogger("test_common.log_to_file")
    logger.setLevel(logging.INFO)
    with pytest.raises(RuntimeError):
        with log_to_file(tmp_path / "a" / "run.log"):
            logger.info("inside the first run")
            raise RuntimeError("boom")
    logger.info("after the first run")
    assert root.handlers == before
    text = (tmp_path / "a" / "run.log").read_text()
    assert "inside the first run" in text and "after the first run" not in text
    with log_to_file(tmp_path / "b.log"):
        with log_to_file(tmp_path / "b.log"):  # already attached: not added twice, not removed by the inner block
            logger.info("once")
        logger.info("twice")
    assert (tmp_path / "b.log").read_text().count("once") == 1 and "twice" in (tmp_path / "b.log").read_text()
    assert root.handlers == before


def test_accuracy_kappa_from_confusion_matches_sklearn():
    from sklearn.metrics import confusion_matrix

    from sleepppg.metrics import accuracy_kappa_from_confusion

    rng = np.random.default_rng(3)
    t = rng.integers(0, 4, 500)
    p = np.where(rng.random(500) < 0.6, t, rng.integers(0, 4, 500))
    acc, kappa = accuracy_kappa_from_confusion(confusion_matrix(t, p, labels=[0, 1, 2, 3]))
    assert acc == pytest.approx(np.mean(t == p))
    assert kappa == pytest.approx(cohen_kappa_score(t, p, labels=[0, 1, 2, 3]))
    assert accuracy_kappa_from_confusion(np.zeros((4, 4))) == (None, None)
    one_class = np.zeros((4, 4))
    one_class[1, 1] = 9
    assert accuracy_kappa_from_confusion(one_class) == (1.0, None)


def test_confusion_figure_says_how_to_read_it():
    from sleepppg.figures import confusion_figure

    cm = np.array([[50, 5, 0, 5], [10, 80, 10, 0], [0, 5, 15, 0], [5, 5, 0, 30]])
    fig = confusion_figure(cm, "Validation, epoch 3")
    ax, bar_ax = fig.axes
    assert "row-normalised" in bar_ax.get_ylabel()
    title = ax.get_title()
    acc, kappa = np.trace(cm) / cm.sum(), None
    from sleepppg.metrics import accuracy_kappa_from_confusion
    _, kappa = accuracy_kappa_from_confusion(cm)
    assert "Validation, epoch 3" in title and f"kappa {kappa:.3f}" in title and f"accuracy {acc:.1%}" in title
    cells = sorted(t.get_text() for t in ax.texts)
    assert "80\n80.0%" in cells and "15\n75.0%" in cells and "5\n8.3%" in cells and len(cells) == 16
    image = ax.images[0].get_array()
    assert np.allclose(image.sum(axis=1), 1.0)  # the colour is the row share
    with pytest.raises(ValueError):
        confusion_figure(np.ones((3, 3)), "x")


def test_hypnogram_figure_marks_mistakes_apart_from_rem(tmp_path):
    from matplotlib.colors import to_rgba

    from sleepppg.config import MISTAKE_COLOR
    from sleepppg.constants import HYPNOGRAM_LEVEL
    from sleepppg.figures import hypnogram_figure, save_figure

    pred = np.array([0, 0, 1, 2, 2, 3, 1, 0])
    true = np.array([0, -1, 1, 2, 1, 3, 3, 0])  # 2 mistakes (epochs 4 and 6); the unscored epoch 1 is not one
    fig = hypnogram_figure(pred, "with labels", true_W=true)
    ax_true, ax_pred = fig.axes
    labels = [t.get_text() for t in ax_pred.get_legend().get_texts()]
    assert labels == ["predicted", "REM", "disagrees with the scored stage (2 epochs)"]
    patch = ax_pred.get_legend().legend_handles[2]
    rem_line = ax_pred.get_legend().legend_handles[1]
    assert to_rgba(patch.get_facecolor())[:3] == to_rgba(MISTAKE_COLOR)[:3] != to_rgba(rem_line.get_color())[:3]
    # the predicted line follows the stage levels (post-step: one point per epoch edge)
    y = ax_pred.lines[0].get_ydata()
    assert list(y[:-1]) == [HYPNOGRAM_LEVEL[s] for s in pred]
    y_true = ax_true.lines[0].get_ydata()
    assert np.isnan(y_true[1]) and y_true[0] == HYPNOGRAM_LEVEL[0]
    assert [t.get_text() for t in ax_true.get_yticklabels()] == ["Deep", "Light", "REM", "Wake"]  # bottom to top
    save_figure(fig, tmp_path / "h.png")
    save_figure(hypnogram_figure(pred, "predicted only"), tmp_path / "p.png")
    for name in ("h.png", "p.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.png", "p.png"]
    with pytest.raises(ValueError, match="differ in length"):
        hypnogram_figure(pred, "x", true_W=true[:-1])


def test_number_argument_types():
    import argparse

    from sleepppg.cli import non_negative_int, positive_int, positive_number

    assert positive_int("3") == 3 and non_negative_int("0") == 0 and positive_number("0.5") == 0.5
    for convert, text, message in ((positive_int, "0", "must be >= 1, got 0"), (positive_int, "two", "whole number"),
                                   (non_negative_int, "-1", "must be >= 0"), (positive_number, "0", "must be > 0"),
                                   (positive_number, "nan", "finite"), (positive_number, "inf", "finite"),
                                   (positive_number, "x", "expected a number")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            convert(text)


def test_json_safe_converts_numpy_scalars():
    from sleepppg.runio import json_safe

    assert json_safe({"ok": np.bool_(True), "n": np.int64(3), "x": np.float32(0.5), "bad": float("nan")}) == {
        "ok": True, "n": 3, "x": 0.5, "bad": None}
    assert json.dumps(json_safe([np.bool_(False)])) == "[false]"


def test_atomic_output_gives_a_new_file_the_umask_permissions(tmp_path):
    import os
    import stat

    mask = os.umask(0o027)
    try:
        with atomic_output(tmp_path / "out.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == 0o640  # 0o666 less the umask, not mkstemp's 0o600


def test_one_reader_of_id_lists_keeps_ids_as_written(tmp_path):
    """sleepppg.ids.read_id_list serves the shipped lists and a cohort's test list alike: text kept (leading
    zeros, letters), comments and blanks dropped, repeats once, file order."""
    from sleepppg.ids import mesa_commercial_ids, read_id_list, sleepppg_test_subjects

    listed = tmp_path / "ids.txt"
    listed.write_text("# my cohort\n0042\n\nS002  # a wearable participant\n42\n0042\n")
    assert read_id_list(listed) == ["0042", "S002", "42"]
    test_ids, release = sleepppg_test_subjects(), mesa_commercial_ids()
    assert len(test_ids) == 204 and len(release) == 1900 and test_ids[:2] == ["0001", "0021"]
    assert all(len(i) == 4 and i.isdigit() for i in test_ids + release)
