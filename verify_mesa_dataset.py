"""Check that the MESA EDF recordings and NSRR XML annotations pair 1:1 by subject ID.

Inputs: an EDF folder (`mesa-sleep-XXXX.edf`) and an XML folder (`mesa-sleep-XXXX-nsrr.xml`). The subject ID
is the number after `mesa-sleep-` (`sleepppg_common.subject_id_from_filename`, any case; leading zeros kept).
Output: a JSON report with a `summary` (`xml_dir`, `edf_dir`, `xml_count`, `edf_count`, `matched`, `only_xml`,
`only_edf`, `xml_duplicates`, `edf_duplicates`) and the lists `matched`, `only_xml`, `only_edf`, `duplicates`
(file names), written atomically; a short human summary is printed.
Exit status: 0 when every file pairs 1:1 with no duplicates, 1 when not, 2 on bad arguments (missing folder).

Usage: python verify_mesa_dataset.py --xml-dir X --edf-dir E --out paircheck_result.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from sleepppg_common import subject_id_from_filename, write_text_atomic

log = logging.getLogger("verify_mesa_dataset")

EDF_SUFFIX = ".edf"
XML_SUFFIX = ".xml"


def scan_dir(directory: str | Path, suffix: str) -> dict[str, list[str]]:
    """Map subject ID -> sorted file names in `directory` ending in `suffix` (any case).

    Files whose names carry no MESA ID are left out. More than one file per ID is a duplicate.
    """
    by_id: dict[str, list[str]] = {}
    for path in sorted(Path(directory).iterdir()):
        if not path.is_file() or not path.name.lower().endswith(suffix):
            continue
        sid = subject_id_from_filename(path.name)
        if sid is not None:
            by_id.setdefault(sid, []).append(path.name)
    return by_id


def pair_report(xml_dir: str | Path, edf_dir: str | Path) -> dict:
    """Pair XML and EDF files by subject ID.

    Returns:
        {"summary": {...counts...}, "matched": [{"id", "edf", "xml"}], "only_xml": [names],
         "only_edf": [names], "duplicates": [{"id", "kind", "files"}]} with every list sorted by ID.
    """
    xml_by_id = scan_dir(xml_dir, XML_SUFFIX)
    edf_by_id = scan_dir(edf_dir, EDF_SUFFIX)
    matched = [{"id": sid, "edf": edf_by_id[sid][0], "xml": xml_by_id[sid][0]}
               for sid in sorted(xml_by_id.keys() & edf_by_id.keys())]
    only_xml = [name for sid in sorted(xml_by_id.keys() - edf_by_id.keys()) for name in xml_by_id[sid]]
    only_edf = [name for sid in sorted(edf_by_id.keys() - xml_by_id.keys()) for name in edf_by_id[sid]]
    duplicates = [{"id": sid, "kind": kind, "files": files}
                  for kind, by_id in (("edf", edf_by_id), ("xml", xml_by_id))
                  for sid, files in sorted(by_id.items()) if len(files) > 1]
    summary = {
        "xml_dir": str(xml_dir),
        "edf_dir": str(edf_dir),
        "xml_count": sum(len(v) for v in xml_by_id.values()),
        "edf_count": sum(len(v) for v in edf_by_id.values()),
        "matched": len(matched),
        "only_xml": len(only_xml),
        "only_edf": len(only_edf),
        "xml_duplicates": sum(1 for d in duplicates if d["kind"] == "xml"),
        "edf_duplicates": sum(1 for d in duplicates if d["kind"] == "edf"),
    }
    return {"summary": summary, "matched": matched, "only_xml": only_xml, "only_edf": only_edf,
            "duplicates": duplicates}


def is_clean(report: dict) -> bool:
    """True when every file pairs 1:1 and no ID has two files."""
    s = report["summary"]
    return s["only_xml"] == 0 and s["only_edf"] == 0 and s["xml_duplicates"] == 0 and s["edf_duplicates"] == 0


def format_summary(report: dict) -> str:
    s = report["summary"]
    lines = [
        f"EDF files: {s['edf_count']} in {s['edf_dir']}",
        f"XML files: {s['xml_count']} in {s['xml_dir']}",
        f"matched pairs: {s['matched']}",
        f"EDF without XML: {s['only_edf']}" + _examples(report["only_edf"]),
        f"XML without EDF: {s['only_xml']}" + _examples(report["only_xml"]),
        f"IDs with duplicate files: EDF {s['edf_duplicates']}, XML {s['xml_duplicates']}"
        + _examples([d["id"] for d in report["duplicates"]]),
        "result: OK, every file pairs 1:1" if is_clean(report) else "result: NOT 1:1 (see the lists in the JSON)",
    ]
    return "\n".join(lines)


def _examples(names: list[str], n: int = 5) -> str:
    if not names:
        return ""
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return " e.g. " + ", ".join(names[:n]) + more


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--xml-dir", required=True, help="folder of NSRR XML annotations")
    parser.add_argument("--edf-dir", required=True, help="folder of EDF recordings")
    parser.add_argument("--out", default="paircheck_result.json", help="JSON report to write")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name, directory in (("--xml-dir", args.xml_dir), ("--edf-dir", args.edf_dir)):
        if not Path(directory).is_dir():
            print(f"error: {name} {directory} is not a folder", file=sys.stderr)
            return 2
    report = pair_report(args.xml_dir, args.edf_dir)
    try:
        write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
    except OSError as err:
        print(f"error: cannot write {args.out}: {err}", file=sys.stderr)
        return 2
    print(format_summary(report))
    print(f"report: {args.out}")
    return 0 if is_clean(report) else 1


if __name__ == "__main__":
    sys.exit(main())
