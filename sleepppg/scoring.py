"""Scored stages for raw recordings (inference's `--labels`): annotation files found in a file or folder,
matched to nights by subject ID, and read into one 4-class label per 30-s epoch.

Accepted files:
- NSRR XML (`*-nsrr.xml` or any `*.xml` with root `PSGAnnotation`) and Compumedics Profusion XML
  (`*-profusion.xml`, root `CMPStudyConfig`), read by sleepppg.annotations.xml_to_labels;
- a CSV hypnogram (`*.csv`, `*.tsv`, `*.txt`): one row per 30-s epoch from the recording start (an empty row
  is an unscored epoch), in one column,
  or in the column named stage, stages, sleep_stage, hypnogram, label, labels or true_idx (any case) when the
  first row is a header. A value is a 4-class index 0 Wake, 1 Light, 2 Deep, 3 REM, -1 unscored, or a stage
  name of the one table of sleepppg.stages (any case: W, Wake, N1..N4, S1..S4, R, REM, Unscored ...). Another
  number (4, 5: R&K numbering, where 3 is not REM) stops the file; another name is left unscored and reported
  by value, or stops the file when it is half of the rows or more (BadRecordingError): stages are never
  guessed.

Matching follows the pair check (sleepppg.pairing): the subject ID is `preprocessing.id_pattern`'s group in the
file name without its ending (`mesa-sleep-0001-nsrr.xml` -> 0001), else the stem; IDs are compared by the one
ID rule (sleepppg.ids.id_key: leading zeros and letter case ignored, 0001 matches 1, S003 matches s3). For
one ID, NSRR XML is used before Profusion XML before a CSV hypnogram; two files of one kind for one ID, and
two label files whose IDs clash (S3.csv and S003.csv: which one scores night S3?), are a setup error.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np

from sleepppg.annotations import xml_to_labels
from sleepppg.constants import IGNORE_INDEX
from sleepppg.errors import BadRecordingError, SetupError
from sleepppg.ids import clash_reason, id_clashes, id_key, subject_id_from_filename
from sleepppg.pairing import ANNOTATION_SUFFIXES
from sleepppg.stages import stage_class, unknown_stage_report

XML_SUFFIX = ".xml"
TABLE_SUFFIXES = (".csv", ".tsv", ".txt")
STAGE_COLUMNS = ("stage", "stages", "sleep_stage", "hypnogram", "label", "labels", "true_idx")
_PREFERENCE = ("nsrr", "profusion", "xml", "table")  # for one ID, the first kind present is used

log = logging.getLogger("sleepppg.scoring")


def _label_kind(path: Path) -> tuple[str, str] | None:
    """(kind, name without its ending) of a label file, None for other files."""
    name = path.name
    for dialect, suffix in ANNOTATION_SUFFIXES.items():
        if name.lower().endswith(suffix):
            return dialect, name[:-len(suffix)]
    if path.suffix.lower() == XML_SUFFIX:
        return "xml", path.stem
    if path.suffix.lower() in TABLE_SUFFIXES:
        return "table", path.stem
    return None


def find_label_files(spec: str | os.PathLike, id_pattern: str) -> dict[str, Path]:
    """The label files of `spec` (a file, or a folder's label files, not recursive) by `id_key` of the ID.

    Raises:
        SetupError: `spec` does not exist, holds no label file, gives one ID two files of one kind, or holds
            files whose IDs clash.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and _label_kind(p) is not None)
    else:
        raise SetupError(f"--labels: not found: {path}")
    by_id: dict[str, dict[str, list[Path]]] = {}
    files_of: dict[str, list[str]] = {}  # ID as written -> its files, for clash messages
    for file in files:
        kind = _label_kind(file)
        if kind is None:
            raise SetupError(f"--labels: {file} is neither annotation XML nor a CSV hypnogram (.csv .tsv .txt)")
        sid = subject_id_from_filename(kind[1], id_pattern) or kind[1]
        files_of.setdefault(sid, []).append(file.name)
        by_id.setdefault(id_key(sid), {}).setdefault(kind[0], []).append(file)
    clashes = id_clashes(files_of)
    if clashes:
        ids = clashes[0]
        raise SetupError(f"--labels: label {clash_reason(ids, [n for sid in ids for n in files_of[sid]])}"
                         + (f" ({len(clashes) - 1} more such group(s))" if len(clashes) > 1 else ""))
    if not by_id:
        raise SetupError(f"--labels: no annotation XML or CSV hypnogram in {path}")
    chosen = {}
    for sid, kinds in sorted(by_id.items()):
        kind = next(k for k in _PREFERENCE if k in kinds)
        if len(kinds[kind]) > 1:
            raise SetupError(f"--labels: subject {sid} has several label files: "
                             f"{', '.join(p.name for p in kinds[kind])}")
        chosen[sid] = kinds[kind][0]
    return chosen


def labels_for(subject_id: str, label_files: dict[str, Path]) -> Path | None:
    """The label file of a night (matched by sleepppg.ids.id_key), None when it has none."""
    return label_files.get(id_key(subject_id))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_hypnogram_table(path: str | os.PathLike, n_windows: int, warnings: list[str] | None = None) -> np.ndarray:
    """A CSV hypnogram (see the module docstring) -> int64 (n_windows,): epochs past its end are unscored,
    rows past n_windows are dropped; `warnings` (if given) gets the unknown stage values left unscored.

    Raises:
        BadRecordingError: unreadable file, no stage column, a number that is no 4-class index, unknown stage
            values in half of the rows or more ('unknown_stages'), no row.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise BadRecordingError(f"cannot read hypnogram {path}: {err}", kind="bad_hypnogram") from None
    delimiter = "\t" if "\t" in text.split("\n", 1)[0] else ","
    rows = list(csv.reader(text.splitlines(), delimiter=delimiter))
    while rows and not any(cell.strip() for cell in rows[-1]):  # an empty line inside is an unscored epoch
        rows.pop()
    if not rows:
        raise BadRecordingError(f"hypnogram {path.name} has no row", kind="bad_hypnogram")
    header = [c.strip().lower() for c in rows[0]]
    column, first = 0, 0
    if any(stage_class(c) is None for c in header):  # a header row
        first = 1
        names = [c for c in STAGE_COLUMNS if c in header]
        if names:
            column = header.index(names[0])
        elif len(header) > 1:
            raise BadRecordingError(f"hypnogram {path.name}: no stage column (one of {', '.join(STAGE_COLUMNS)}) "
                                    f"among {', '.join(rows[0])}", kind="bad_hypnogram")
    elif len(header) > 1:
        raise BadRecordingError(f"hypnogram {path.name}: several columns and no header naming the stage column",
                                kind="bad_hypnogram")
    texts = [r[column].strip() if column < len(r) else "" for r in rows[first:first + n_windows]]
    values = [stage_class(t) for t in texts]
    for row, (text, value) in enumerate(zip(texts, values), start=first + 1):
        if value is None and _is_number(text):
            raise BadRecordingError(f"{path.name} row {row}: {text!r} is not a 4-class stage index (0 Wake, 1 Light, "
                                    "2 Deep, 3 REM, -1 unscored); R&K numbering (4 stage 4, 5 REM) is not read "
                                    "from a CSV: write stage names (W, N1, N2, N3, R)", kind="bad_hypnogram")
    found = unknown_stage_report(Counter(t for t, v in zip(texts, values) if v is None), len(texts),
                                 f"hypnogram {path.name}", unit="row")
    if warnings is not None:
        warnings.extend(found)
    labels_W = np.full(n_windows, IGNORE_INDEX, dtype=np.int64)
    labels_W[:len(values)] = [IGNORE_INDEX if v is None else v for v in values]
    return labels_W


def read_labels(path: str | os.PathLike, n_windows: int, warnings: list[str] | None = None) -> np.ndarray:
    """Scored stages of one night from annotation XML or a CSV hypnogram: int64 (n_windows,), -1 unscored;
    `warnings` (if given) gets the unknown stage values left unscored.

    Raises:
        BadRecordingError: the file cannot be read as either.
    """
    path = Path(path)
    if path.suffix.lower() == XML_SUFFIX:
        return xml_to_labels(path, n_windows, warnings)
    return read_hypnogram_table(path, n_windows, warnings)
