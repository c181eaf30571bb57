"""Tests for sleepppg.cli.run_entry_point: the one handler of every entry point (exit statuses, one line,
the traceback only with --debug)."""
import errno

import pytest

from sleepppg.cli import run_entry_point
from sleepppg.errors import ConfigError, SetupError


def _raising(err):
    def main(argv):
        raise err
    return main


@pytest.mark.parametrize("err,status,text", [
    (SetupError("--edf-dir ./x is not a folder"), 2, "error: --edf-dir ./x is not a folder"),
    (ConfigError("cfg.yaml: training.lr: unknown key"), 2, "error: cfg.yaml: training.lr: unknown key"),
    (OSError(errno.ENOSPC, "No space left on device", "/out/a.h5"), 2, "the disk is full (/out/a.h5)"),
    (OSError(errno.ENAMETOOLONG, "File name too long", "/out/" + "x" * 300), 2, "too long for the file system"),
    (OSError(errno.EIO, "Input/output error", "/out/b"), 1, "OSError: [Errno 5] Input/output error: '/out/b'"),
    (ZeroDivisionError("division by zero"), 1, "unexpected error: ZeroDivisionError: division by zero"),
    (KeyboardInterrupt(), 130, "interrupted (Ctrl-C)"),
])
def test_errors_become_one_line_and_a_documented_status(capsys, err, status, text):
    assert run_entry_point(_raising(err), []) == status
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], captured.err
    assert "Traceback" not in captured.err


def test_debug_shows_the_traceback_and_is_not_passed_on(capsys):
    seen = []

    def main(argv):
        seen.append(list(argv))
        raise ValueError("bad value in step 3")

    assert run_entry_point(main, ["--x", "1", "--debug"]) == 1
    assert seen == [["--x", "1"]]
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "bad value in step 3" in err
    assert "run with --debug" not in err


def test_the_status_main_returns_is_kept_and_long_reasons_are_cut(capsys):
    assert run_entry_point(lambda argv: 0, []) == 0
    assert run_entry_point(lambda argv: 1, []) == 1
    assert run_entry_point(_raising(RuntimeError("r" * 1000)), []) == 1
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and len(line) < 400 and "more characters" in line


def test_a_symlink_planted_at_a_log_path_is_not_followed(tmp_path):
    from sleepppg.cli import log_to_file

    outside = tmp_path / "outside.txt"
    outside.write_text("the user's own file\n")
    log_dir = tmp_path / "run" / "logs"
    log_dir.mkdir(parents=True)
    (log_dir / "processing.log").symlink_to(outside)
    with pytest.raises(SetupError, match="processing.log"):
        with log_to_file(log_dir / "processing.log"):
            import logging
            logging.getLogger("sleepppg.test").warning("must not reach the link's target")
    assert outside.read_text() == "the user's own file\n"


# ----------------------------------------------------------------------------------------------------------
# Flags: every number flag and every file flag of every entry point is refused by its own name


@pytest.mark.parametrize("script,argv,flag", [
    ("extract_mesa_data", ["--windows-per-subject", "0"], "--windows-per-subject"),
    ("extract_mesa_data", ["--limit", "-3"], "--limit"),
    ("extract_mesa_data", ["--workers", "-1"], "--workers"),
    ("verify_mesa_outputs", ["--base", ".", "--windows-per-subject", "0"], "--windows-per-subject"),
    ("inference_ppg_only", ["--config", "c.yaml", "--fs", "nan"], "--fs"),
    ("inference_ppg_only", ["--config", "c.yaml", "--fs", "0"], "--fs"),
    ("inference_ppg_only", ["--config", "c.yaml", "--fs", "-64"], "--fs"),
    ("inference_ppg_only", ["--config", "c.yaml", "--n-subjects", "0"], "--n-subjects"),
    ("train_ppg_only", ["--runs", "0"], "--runs"),
    ("train_ppg_only", ["--freeze-encoder", "-2"], "--freeze-encoder"),
    ("make_synthetic_mesa", ["--out", "x", "--n-subjects", "2", "--seed", "-1"], "--seed"),
    ("run_demo", ["--seed", "-5"], "--seed"),
    ("run_demo", ["--edf-nights", "-1"], "--edf-nights"),
    ("validation_report", ["a.csv", "--out-dir", "v", "--bootstrap", "0"], "--bootstrap"),
    ("multimodal_dataset_aligned", ["--config", "c.yaml", "--windows-per-subject", "0"], "--windows-per-subject"),
])
def test_a_bad_number_flag_is_refused_by_its_name_before_any_config_is_read(capsys, script, argv, flag):
    module = __import__(script)
    with pytest.raises(SystemExit) as stop:
        module.parse_args(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "config" not in err.splitlines()[-1], err


@pytest.mark.parametrize("script,argv,flag", [
    ("extract_mesa_data", ["--config", "{d}"], "--config"),
    ("verify_mesa_dataset", ["--config", "{d}"], "--config"),
    ("inference_ppg_only", ["--config", "{d}"], "--config"),
    ("inference_ppg_only", ["--config", "c.yaml", "--checkpoint", "{d}"], "--checkpoint"),
    ("train_ppg_only", ["--config", "{d}"], "--config"),
    ("train_ppg_only", ["--init-from", "{d}"], "--init-from"),
    ("validation_report", ["a.csv", "--out-dir", "v", "--metadata", "{d}"], "--metadata"),
    ("multimodal_dataset_aligned", ["--config", "{d}"], "--config"),
    ("run_demo", ["--config", "{d}"], "--config"),
])
def test_a_folder_given_to_a_file_flag_is_refused_as_a_folder(tmp_path, capsys, script, argv, flag):
    module = __import__(script)
    with pytest.raises(SystemExit) as stop:
        module.parse_args([a.format(d=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"argument {flag}: {tmp_path} is a folder" in err, err


def test_long_reasons_and_lists_are_cut_with_a_count():
    from sleepppg.cli import one_line, some_of

    text = "word " * 200
    line = one_line(text, limit=100)
    assert len(line) <= 100 and line.endswith(f"(+{len(' '.join(text.split())) - 70} more characters)")
    assert one_line("a\n  b") == "a b"
    assert some_of([f"s{i}" for i in range(51)], 10, "subjects") == (
        ", ".join(f"s{i}" for i in range(10)) + " (and 41 more subjects)")
    assert some_of(["a", "b"], 10) == "a, b"


def test_inside_inputs_names_the_input_an_output_would_replace(tmp_path):
    from sleepppg.cli import inside_inputs

    edf_dir = tmp_path / "edfs"
    edf_dir.mkdir()
    (edf_dir / "a.edf").write_bytes(b"0")
    (tmp_path / "link").symlink_to(edf_dir)
    inputs = {"--edf-dir": str(edf_dir), "--xml-dir": None}
    assert inside_inputs(edf_dir / "a.edf", inputs) == f"--edf-dir {edf_dir}"
    assert inside_inputs(tmp_path / "link" / "new.json", inputs) == f"--edf-dir {edf_dir}"
    assert inside_inputs(tmp_path / "report.json", inputs) is None
