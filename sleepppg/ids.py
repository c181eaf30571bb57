"""Subject IDs: the one rule that finds an ID in a file name (`id_pattern`, a regex with one group), the one
rule that says when two IDs name the same subject (`id_key`, `id_clashes`: leading zeros and letter case are
ignored, so S3 and S003, 0042 and 42, S1 and s1 are one subject), the one rule that turns an ID into a safe
file-name part (`safe_id`, `safe_ids`, `check_unique`), and the shipped ID lists (the SleepPPG-Net test
subjects, the MESA commercial-use release).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
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
    'cfs-visit5-(\\d+)'). The ID keeps its text (leading zeros, letters), made one safe file-name part by
    `safe_id`. None when the name carries none, or only text no file name can stand for ('..', '')."""
    match = compile_id_pattern(pattern).search(name)
    if not match:
        return None
    try:
        return safe_id(match.group(1))
    except ValueError:
        return None


def read_id_list(path: str | os.PathLike) -> list[str]:
    """The one reader of subject-ID lists: one ID per line, kept as written (leading zeros, letters), in file
    order, each once; blank lines and '#' comments ignored.

    Raises:
        OSError or UnicodeDecodeError when the file cannot be read as UTF-8 text.
    """
    ids = [line.split("#", 1)[0].strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    return list(dict.fromkeys(i for i in ids if i))


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


def id_key(subject_id: str) -> str:
    """The form under which IDs are compared: zero-free and case-folded ('S003' and 's3' -> 's3'). The pair
    check, extraction (MESA and DREAMT), inference's folders and `--labels`, and the metadata join all match
    IDs on it: cohorts write IDs with and without leading zeros (MESA files 0042, NSRR tables 42) and file
    systems that ignore case make 'S1' and 's1' one file."""
    return zero_free_id(subject_id).casefold()


def id_clashes(subject_ids: Iterable[str]) -> list[list[str]]:
    """Groups of two or more different IDs with one `id_key` ('S3' and 'S003'), each sorted, in the order of
    their first ID: every such ID is a clash, reported by all its names and never resolved by a guess."""
    groups: dict[str, list[str]] = {}
    for sid in dict.fromkeys(subject_ids):
        groups.setdefault(id_key(sid), []).append(sid)
    return sorted((sorted(ids) for ids in groups.values() if len(ids) > 1), key=lambda ids: ids[0])


def clash_reason(ids: Iterable[str], files: Iterable[str]) -> str:
    """The one message for a clash: both IDs, their files, what to do."""
    return (f"IDs {' and '.join(ids)} differ only by leading zeros or letter case, so they name one subject "
            f"(files {', '.join(files)}); rename the files so that each subject has one ID")


MAX_ID_BYTES = 64  # UTF-8 bytes: an ID inside a name ("<id>_ppg.npz", "mesa-sleep-<id>.edf") stays far below the
#                    255-byte file-name limit of ext4/xfs/btrfs/APFS, and 64 leaves every real cohort's IDs intact
_HASH_HEX = 8  # hex digits of SHA-256 that keep two cut IDs apart (a collision needs ~65,000 long IDs)


def safe_id(raw: str) -> str:
    """The subject ID as one safe file-name part: IDs from file names and headers pass here once, and every
    output name is built from the result.

    Mapping (the same raw ID always gives the same result, and a safe ID maps to itself):

    - '/' and '\\' (path separators) and every character that is not printable (control characters such as
      NUL, tab and newline, undecodable bytes) become '_';
    - a leading '.' becomes '_': no hidden files, and no name that starts like a temporary of
      `sleepppg.paths` (which a cleanup deletes);
    - an ID longer than `MAX_ID_BYTES` (64) UTF-8 bytes keeps its first 55 bytes plus '~' and the first 8 hex
      digits of the SHA-256 of the raw ID, so two long IDs that differ only at the end stay distinct.

    Real IDs ('0001', 'S002', '800002', 'Müller') come out unchanged. Two raw IDs may map to one safe ID
    ('a/b' and 'a_b'): `check_unique` (or `safe_ids`) refuses that.

    Raises:
        ValueError: naming the raw ID and why, when no safe name can stand for it: not a string, empty or
            only whitespace, or only dots ('.', '..': a folder, never a subject).
    """
    if not isinstance(raw, str):
        raise ValueError(f"subject ID {raw!r} is a {type(raw).__name__}, not text")
    if not raw.strip():
        raise ValueError(f"subject ID {raw!r} is empty; no file name can stand for it")
    if set(raw) == {"."}:
        raise ValueError(f"subject ID {raw!r} is only dots, which names a folder, never a file")
    safe = "".join("_" if ch in "/\\" or not ch.isprintable() else ch for ch in raw)
    if safe.startswith("."):
        safe = "_" + safe[1:]
    encoded = safe.encode("utf-8")
    if len(encoded) > MAX_ID_BYTES:
        head = encoded[:MAX_ID_BYTES - _HASH_HEX - 1].decode("utf-8", errors="ignore")  # never half a character
        safe = f"{head}~{hashlib.sha256(raw.encode('utf-8', errors='surrogateescape')).hexdigest()[:_HASH_HEX]}"
    return safe


def check_unique(ids: dict[str, str]) -> None:
    """Refuse two raw IDs whose safe forms (`ids`: raw ID -> safe ID) would name the same file.

    Safe IDs are compared case-folded: on a case-insensitive file system (macOS and Windows by default, many
    network shares) 'S1' and 's1' are one file, and one subject's output would silently replace the other's.

    Raises:
        ValueError: naming both raw IDs and the name they share.
    """
    seen: dict[str, str] = {}
    for raw, safe in ids.items():
        key = safe.casefold()
        if key in seen:
            raise ValueError(f"subject IDs {seen[key]!r} and {raw!r} both become the file name {safe!r} "
                             f"(compared ignoring case); rename one of the recordings")
        seen[key] = raw


def safe_ids(raw_ids: Iterable[str]) -> dict[str, str]:
    """Raw ID -> `safe_id(raw)` for every ID, checked with `check_unique`.

    Raises:
        ValueError: an ID that cannot be made safe, or two that collide (see `safe_id`, `check_unique`).
    """
    mapping = {raw: safe_id(raw) for raw in raw_ids}
    check_unique(mapping)
    return mapping
