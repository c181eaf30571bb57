"""Which EDF goes with which annotation XML: the one pairing rule that the pair check, extraction and
inference share.

Files pair by the subject ID that `id_pattern` finds in their names; the annotation of `<stem>.edf` (or `.bdf`) is
`<stem>-nsrr.xml` (NSRR XML) or `<stem>-profusion.xml` (Compumedics Profusion XML), NSRR first when an ID has
both. IDs that differ only by leading zeros or letter case (282 and 0282, S1 and s1: sleepppg.ids.id_key)
are clashes, never merged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from sleepppg.constants import MESA_ID_PATTERN
from sleepppg.ids import compile_id_pattern, id_clashes, subject_id_from_filename

EDF_SUFFIXES = (".edf", ".bdf")  # EDF and BioSemi's 24-bit BDF: the reader (sleepppg.edf) reads both
XML_SUFFIX = ".xml"
# Annotation dialect -> file-name ending (NSRR's names for every cohort); the first is preferred when an
# ID has both.
ANNOTATION_SUFFIXES = {"nsrr": "-nsrr.xml", "profusion": "-profusion.xml"}


def _strip_suffix(name: str, suffix: str) -> str | None:
    return name[:-len(suffix)] if name.lower().endswith(suffix) else None


def _annotation_kind(name: str) -> tuple[str, str] | None:
    """(dialect, name without the ending) for `<stem>-nsrr.xml` / `<stem>-profusion.xml` (any case), else None."""
    for dialect, suffix in ANNOTATION_SUFFIXES.items():
        stem = _strip_suffix(name, suffix)
        if stem is not None:
            return dialect, stem
    return None


@dataclass
class Pairing:
    """EDF and annotation files of two folders, grouped by subject ID (file names, not paths)."""

    edf_by_id: dict[str, list[str]] = field(default_factory=dict)
    xml_by_id: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # id -> dialect -> names
    no_id: list[str] = field(default_factory=list)
    ignored_xml: list[str] = field(default_factory=list)

    def ids(self) -> list[str]:
        return sorted(self.edf_by_id.keys() | self.xml_by_id.keys())

    def annotation(self, sid: str) -> tuple[str, str, list[str]] | None:
        """(dialect, file name, passed-over names of other dialects) of the annotation used for `sid`:
        NSRR before Profusion; None when the ID has no XML. Duplicates are reported by `duplicates`."""
        by_dialect = self.xml_by_id.get(sid, {})
        present = [d for d in ANNOTATION_SUFFIXES if by_dialect.get(d)]
        if not present:
            return None
        chosen = present[0]
        others = [name for d in present[1:] for name in by_dialect[d]]
        return chosen, by_dialect[chosen][0], others

    def duplicates(self) -> list[dict]:
        """[{id, kind ('edf', 'nsrr' or 'profusion'), files}] for every ID with two files of one kind."""
        out = [{"id": sid, "kind": "edf", "files": files} for sid, files in sorted(self.edf_by_id.items())
               if len(files) > 1]
        out += [{"id": sid, "kind": dialect, "files": files} for sid, by_dialect in sorted(self.xml_by_id.items())
                for dialect, files in by_dialect.items() if len(files) > 1]
        return sorted(out, key=lambda d: (d["id"], d["kind"]))

    def id_clashes(self) -> list[dict]:
        """[{ids, files}] for each group of IDs (EDF and XML together) that differ only by leading zeros or
        letter case ('0282'/'282', 'S1'/'s1'): their output files would collide on a file system that ignores
        case, and a subject must not be two."""
        clashes = []
        for ids in id_clashes(self.ids()):
            files = [name for sid in ids for name in self.edf_by_id.get(sid, [])
                     + [n for names in self.xml_by_id.get(sid, {}).values() for n in names]]
            clashes.append({"ids": ids, "files": sorted(files)})
        return clashes


def pair_files(edf_dir: str | Path, xml_dir: str | Path, id_pattern: str | re.Pattern = MESA_ID_PATTERN
               ) -> Pairing:
    """Scan both folders: EDFs (`*.edf`, `*.bdf`) and annotations (`*-nsrr.xml`, `*-profusion.xml`) by subject ID.

    The ID pattern is searched in the name without its ending (`mesa-sleep-0001` of `mesa-sleep-0001-nsrr.xml`).

    Raises:
        ValueError: the ID pattern is not a regex with exactly one group.
    """
    pattern = compile_id_pattern(id_pattern)
    pairing = Pairing()
    for path in sorted(Path(edf_dir).iterdir()):
        stems = [_strip_suffix(path.name, suffix) for suffix in EDF_SUFFIXES] if path.is_file() else []
        stem = next((s for s in stems if s is not None), None)
        if stem is None:
            continue
        sid = subject_id_from_filename(stem, pattern)
        if sid is None:
            pairing.no_id.append(path.name)
        else:
            pairing.edf_by_id.setdefault(sid, []).append(path.name)
    for path in sorted(Path(xml_dir).iterdir()):
        if not path.is_file() or not path.name.lower().endswith(XML_SUFFIX):
            continue
        kind = _annotation_kind(path.name)
        if kind is None:
            pairing.ignored_xml.append(path.name)
            continue
        dialect, stem = kind
        sid = subject_id_from_filename(stem, pattern)
        if sid is None:
            pairing.no_id.append(path.name)
        else:
            pairing.xml_by_id.setdefault(sid, {}).setdefault(dialect, []).append(path.name)
    return pairing
