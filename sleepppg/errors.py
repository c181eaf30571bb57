"""The errors that decide what happens next: `ConfigError` and `SetupError` stop a script (bad setup: exit 2);
`BadRecordingError` makes one subject or night a listed failure while the others go on; `DataError` and
`TrainingDiverged` stop training (exit 1).
"""

from __future__ import annotations

import os


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the file and the key."""


class SetupError(RuntimeError):
    """Bad setup (a device that does not exist, a run folder that cannot be made, a missing checkpoint or
    input...): the script stops at once with this one-line message and exit status 2 (EXIT_SETUP)."""


class BadRecordingError(ValueError):
    """One subject's data cannot be used; `kind` is a short machine-readable reason (e.g. 'no_ppg_channel'),
    `path` the file at fault when it is not the EDF (e.g. the XML)."""

    def __init__(self, message: str, kind: str = "bad_recording", path: str | os.PathLike | None = None):
        super().__init__(message or kind.replace("_", " "))  # never an empty reason
        self.kind = kind
        self.path = None if path is None else str(path)


class DataError(Exception):
    """Bad data in the processed files that training reads (labels, IDs or signal values of a subject, named
    in the message): training stops with exit status 1 (EXIT_FAILED)."""


class TrainingDiverged(Exception):
    """The loss or the gradient norm became NaN or infinite; the last good checkpoint is kept (exit status 1)."""
