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
