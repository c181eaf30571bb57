"""The errors that decide a script's exit status: `ConfigError` and `SetupError` (bad setup: exit 2).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the file and the key."""


class SetupError(RuntimeError):
    """Bad setup (a device that does not exist, a run folder that cannot be made, a missing checkpoint or
    input...): the script stops at once with this one-line message and exit status 2 (EXIT_SETUP)."""
