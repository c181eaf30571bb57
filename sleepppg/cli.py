"""What every entry point shares on its command line: the one error handler (`run_entry_point`), argument
types that name the flag, help that shows real defaults, reasons cut to one line with a count of what was cut,
and logging set up once (console, optional file).

Every number flag of every script goes through one of the argument types here (`positive_int`,
`non_negative_int`, `positive_number`), so a value that the config key it overrides would refuse (0, a negative
number, NaN) is refused by argparse with the flag's own name ("argument --fs: must be > 0 and finite, got nan",
exit 2), before any config is read; file flags go through `file_argument`, which refuses a folder by name.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Callable, Iterator, Sequence

from sleepppg.constants import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_SETUP
from sleepppg.errors import ConfigError, SetupError
from sleepppg.paths import NoFollowFileHandler

LOG_FORMAT, LOG_DATE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"


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


def file_argument(text: str) -> str:
    """argparse type of a flag that names one file (--config, --checkpoint, --metadata, --init-from): a folder is
    refused by name; a path that does not exist is left to the reader, whose message says so."""
    if text and Path(text).expanduser().is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file")
    return text


def inside_inputs(output: str | os.PathLike, inputs: dict[str, str | os.PathLike | None]) -> str | None:
    """The name of the input (flag -> a file or folder) that `output` is, or lies inside; None when it is apart
    from all of them. Links are resolved, so a second name of an input counts as the input."""
    out = Path(output).expanduser().resolve()
    for flag, given in inputs.items():
        if given is None:
            continue
        source = Path(given).expanduser().resolve()
        if out == source or (source.is_dir() and out.is_relative_to(source)):
            return f"{flag} {given}"
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
            handler = NoFollowFileHandler(log_file)
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
    handler = NoFollowFileHandler(path)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATE_FORMAT))
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()


DEBUG_FLAG = "--debug"  # every entry point: show the traceback of an unexpected error
DEBUG_HELP = "show the full traceback of an unexpected error (otherwise one line)"


REASON_LIMIT = 300  # characters of a reason printed on one console line; the rest is counted, not shown


def one_line(text: object, limit: int = REASON_LIMIT) -> str:
    """`text` on one line (white space collapsed), cut to about `limit` characters with a count of what was cut:
    "... (+312 more characters)". The files that record a reason (failed_subjects.json, result.json) keep it
    whole."""
    line = " ".join(str(text).split())
    if len(line) <= limit:
        return line
    kept = limit - 30
    return f"{line[:kept]}... (+{len(line) - kept} more characters)"


def some_of(names: Sequence[str], shown: int = 10, what: str = "") -> str:
    """The first `shown` of `names`, comma-separated, and "(and N more WHAT)" for the rest."""
    names = list(names)
    more = f" (and {len(names) - shown} more{' ' + what if what else ''})" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _one_line(err: BaseException, limit: int = REASON_LIMIT) -> str:
    return one_line(err, limit) or type(err).__name__


def run_entry_point(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a script's `main(argv)` under the one handler every entry point has; returns the exit status.

    What `main` returns is the status. What escapes it becomes one line on stderr and a documented status:
    a ConfigError or SetupError (bad setup) 2; a full disk (ENOSPC) or a name too long for the file system 2,
    with the path; Ctrl-C (KeyboardInterrupt) 130; anything else 1, "unexpected error", with its type. The
    traceback reaches the console only with `--debug` (taken out of `argv` here, so every script accepts it).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv
    argv = [a for a in argv if a != DEBUG_FLAG]
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C): finished work is kept; run the same command again to go on", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ConfigError, SetupError) as err:
        if debug:
            traceback.print_exc()
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return EXIT_SETUP
    except OSError as err:
        if debug:
            traceback.print_exc()
        where = f" ({err.filename})" if err.filename else ""
        if err.errno == errno.ENOSPC:
            print(f"error: the disk is full{where}: free some space and run the same command again "
                  f"(finished work is kept)", file=sys.stderr)
            return EXIT_SETUP
        if err.errno == errno.ENAMETOOLONG:
            print(f"error: a file name is too long for the file system{where}", file=sys.stderr)
            return EXIT_SETUP
        print(f"error: {type(err).__name__}: {_one_line(err)}"
              f"{'' if debug else ' (run with --debug for the traceback)'}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as err:  # noqa: BLE001 - the entry point's one boundary: a bug is one line, not a dump
        if debug:
            traceback.print_exc()
        print(f"unexpected error: {type(err).__name__}: {_one_line(err)}"
              f"{'' if debug else ' (run with --debug for the traceback)'}", file=sys.stderr)
        return EXIT_FAILED
