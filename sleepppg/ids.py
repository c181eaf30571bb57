"""Subject IDs: the one rule that finds an ID in a file name (`id_pattern`, a regex with one group) and the
shipped ID lists (the SleepPPG-Net test subjects, the MESA commercial-use release).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from sleepppg.constants import DATA_DIR, MESA_ID_PATTERN


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


_LEADING_ZEROS = re.compile(r"(?<!\d)0+(?=\d)")  # zeros that open a run of digits


def zero_free_id(subject_id: str) -> str:
    """The ID with the leading zeros of each run of digits removed ('0282' -> '282', 'S002' -> 'S2'): two IDs
    with the same zero-free form differ only by leading zeros."""
    return _LEADING_ZEROS.sub("", subject_id)
