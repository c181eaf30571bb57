r"""Check that the EDF recordings and XML annotations of a cohort (MESA by default) pair 1:1 by subject ID.

Inputs: an EDF folder and an XML folder. The annotation of a night `<stem>.edf` is `<stem>-nsrr.xml` (NSRR
XML) or `<stem>-profusion.xml` (Compumedics Profusion XML), the names NSRR uses for every cohort it serves
(MESA, SHHS, CFS, ...). Files pair by the subject ID the ID pattern finds in their names (default
`sleepppg.constants.MESA_ID_PATTERN`: `mesa-sleep-0001.edf` -> `0001`; `--id-pattern 'cfs-visit5-(\d+)'` for
CFS; any case; the ID keeps its text: leading zeros, letters, any length). When one ID has both an NSRR and a
Profusion XML, the NSRR one is used and the pair says so.

Problems it reports (each makes the exit status 1):
- files without a partner (`only_edf`, `only_xml`);
- two files of one kind for one ID (`duplicates`, e.g. `mesa-sleep-0003.edf` and `mesasleep0003.edf`);
- IDs that differ only by leading zeros or letter case (`id_clashes`, e.g. `282` and `0282`, `S1` and `s1`):
  the same subject written two ways, or two subjects one zero apart; pairing them either way could be wrong,
  so neither is guessed;
- `.edf`/`-nsrr.xml`/`-profusion.xml` files whose name the ID pattern does not match (`no_id`).
Other `.xml` files in the XML folder are listed in `ignored_xml` (informational).

Output: a JSON report with a `summary` (`xml_dir`, `edf_dir`, `id_pattern`, `xml_count`, `edf_count`,
`matched`, `only_xml`, `only_edf`, `xml_duplicates`, `edf_duplicates`, `id_clashes`, `no_id`, `ignored_xml`,
`nsrr_pairs`, `profusion_pairs`, `nsrr_and_profusion`) and the lists `matched` (id, edf, xml, dialect, and
`also` when a Profusion XML was passed over), `only_xml`, `only_edf`, `duplicates`, `id_clashes`, `no_id`,
`ignored_xml`, written atomically; a short human summary is printed.
Exit status: 0 when every file pairs 1:1 with none of the problems above, 1 when not, 2 on bad arguments
(missing folder, bad ID pattern or config, an --out that is inside an input folder or is an existing file
other than a pair-check report: nothing is written).

Usage: python verify_mesa_dataset.py --xml-dir X --edf-dir E --out paircheck_result.json [--id-pattern RE]
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

from sleepppg.cli import HelpFormatter, file_argument, inside_inputs, run_entry_point
from sleepppg.config import load_config
from sleepppg.constants import EXIT_FAILED, EXIT_OK, EXIT_SETUP, MESA_ID_PATTERN
from sleepppg.errors import ConfigError
from sleepppg.ids import compile_id_pattern
from sleepppg.pairing import pair_files
from sleepppg.runio import write_text_atomic

log = logging.getLogger("verify_mesa_dataset")


def pair_report(xml_dir: str | Path, edf_dir: str | Path, id_pattern: str | re.Pattern = MESA_ID_PATTERN) -> dict:
    """Pair XML and EDF files by subject ID.

    Returns:
        {"summary": {...counts...}, "matched": [{"id", "edf", "xml", "dialect"[, "also"]}], "only_xml": [names],
         "only_edf": [names], "duplicates": [{"id", "kind", "files"}], "id_clashes": [{"ids", "files"}],
         "no_id": [names], "ignored_xml": [names]} with every list sorted by ID or name.
    """
    pairing = pair_files(edf_dir, xml_dir, id_pattern)
    matched, only_xml, only_edf = [], [], []
    for sid in pairing.ids():
        edfs, annotation = pairing.edf_by_id.get(sid, []), pairing.annotation(sid)
        if edfs and annotation:
            dialect, xml, others = annotation
            entry = {"id": sid, "edf": edfs[0], "xml": xml, "dialect": dialect}
            if others:
                entry["also"] = others  # present but not used: NSRR XML is preferred over Profusion
            matched.append(entry)
        elif edfs:
            only_edf += edfs
        else:
            only_xml += [n for names in pairing.xml_by_id[sid].values() for n in names]
    duplicates, clashes = pairing.duplicates(), pairing.id_clashes()
    summary = {
        "xml_dir": str(xml_dir),
        "edf_dir": str(edf_dir),
        "id_pattern": compile_id_pattern(id_pattern).pattern,
        "xml_count": sum(len(n) for d in pairing.xml_by_id.values() for n in d.values()),
        "edf_count": sum(len(v) for v in pairing.edf_by_id.values()),
        "matched": len(matched),
        "only_xml": len(only_xml),
        "only_edf": len(only_edf),
        "xml_duplicates": sum(1 for d in duplicates if d["kind"] != "edf"),
        "edf_duplicates": sum(1 for d in duplicates if d["kind"] == "edf"),
        "id_clashes": len(clashes),
        "no_id": len(pairing.no_id),
        "ignored_xml": len(pairing.ignored_xml),
        "nsrr_pairs": sum(1 for m in matched if m["dialect"] == "nsrr"),
        "profusion_pairs": sum(1 for m in matched if m["dialect"] == "profusion"),
        "nsrr_and_profusion": sum(1 for m in matched if "also" in m),
    }
    return {"summary": summary, "matched": matched, "only_xml": only_xml, "only_edf": only_edf,
            "duplicates": duplicates, "id_clashes": clashes, "no_id": sorted(pairing.no_id),
            "ignored_xml": pairing.ignored_xml}


def is_clean(report: dict) -> bool:
    """True when every file pairs 1:1, no ID has two files of one kind, no IDs clash and every file has an ID."""
    s = report["summary"]
    return not any(s[k] for k in ("only_xml", "only_edf", "xml_duplicates", "edf_duplicates", "id_clashes",
                                  "no_id"))


def format_summary(report: dict) -> str:
    s = report["summary"]
    lines = [
        f"EDF files: {s['edf_count']} in {s['edf_dir']}",
        f"XML files: {s['xml_count']} in {s['xml_dir']}",
        f"matched pairs: {s['matched']} (NSRR XML {s['nsrr_pairs']}, Profusion XML {s['profusion_pairs']})",
        f"EDF without XML: {s['only_edf']}" + _examples(report["only_edf"]),
        f"XML without EDF: {s['only_xml']}" + _examples(report["only_xml"]),
        f"IDs with duplicate files: EDF {s['edf_duplicates']}, XML {s['xml_duplicates']}"
        + _examples([d["id"] for d in report["duplicates"]]),
        f"IDs that differ only by leading zeros or letter case: {s['id_clashes']}"
        + _examples([" and ".join(c["ids"]) for c in report["id_clashes"]]),
        f"files whose name has no ID (pattern {s['id_pattern']!r}): {s['no_id']}" + _examples(report["no_id"]),
    ]
    if s["nsrr_and_profusion"]:
        lines.append(f"IDs with both NSRR and Profusion XML: {s['nsrr_and_profusion']} (the NSRR XML is used)")
    if s["ignored_xml"]:
        lines.append(f"other XML files (neither -nsrr.xml nor -profusion.xml), not used: {s['ignored_xml']}"
                     + _examples(report["ignored_xml"]))
    lines.append("result: OK, every file pairs 1:1" if is_clean(report)
                 else "result: NOT 1:1 (see the lists in the JSON)")
    return "\n".join(lines)


def _examples(names: list[str], n: int = 5) -> str:
    if not names:
        return ""
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return " e.g. " + ", ".join(names[:n]) + more


def out_problem(out: str, edf_dir: str, xml_dir: str) -> str | None:
    """Why --out cannot be written, or None: it lies inside an input folder (it could replace a recording or
    an annotation, and a rerun would find it among them), is a folder, or is an existing file that is not a
    report of this script (a JSON object with `summary` and `matched`): such a file is never overwritten."""
    inside = inside_inputs(out, {"--edf-dir": edf_dir, "--xml-dir": xml_dir})
    if inside is not None:
        return f"--out {out} is inside the input folder {inside}; write the report elsewhere"
    path = Path(out)
    if path.is_dir():
        return f"--out {out} is a folder; give the JSON file to write"
    if path.exists() or path.is_symlink():
        try:
            earlier = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            earlier = None
        if not (isinstance(earlier, dict) and {"summary", "matched"} <= earlier.keys()):
            return (f"--out {out} exists and is not a pair-check report; it is not overwritten (remove it or give "
                    "another --out)")
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--xml-dir", help="folder of annotations (*-nsrr.xml and/or *-profusion.xml); "
                                          "default: preprocessing.xml_dir of --config")
    parser.add_argument("--edf-dir", help="folder of EDF recordings; default: preprocessing.edf_dir of --config")
    parser.add_argument("--out", default="paircheck_result.json", help="JSON report to write")
    parser.add_argument("--id-pattern", help="regex with one group around the subject ID, searched in file "
                                             "names, any case (default: preprocessing.id_pattern of --config, "
                                             f"else MESA's '{MESA_ID_PATTERN}')")
    parser.add_argument("--config", type=file_argument,
                        help="YAML config: its preprocessing.id_pattern, edf_dir and xml_dir are the defaults of the "
                             "flags above")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    id_pattern, edf_dir, xml_dir = MESA_ID_PATTERN, args.edf_dir, args.xml_dir
    if args.config:
        try:
            pre = load_config(args.config)["preprocessing"]
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_SETUP
        id_pattern, edf_dir, xml_dir = pre["id_pattern"], edf_dir or pre["edf_dir"], xml_dir or pre["xml_dir"]
    if args.id_pattern is not None:
        try:
            id_pattern = compile_id_pattern(args.id_pattern).pattern
        except ValueError as err:
            print(f"error: --id-pattern: {err}", file=sys.stderr)
            return EXIT_SETUP
    for name, directory in (("--xml-dir", xml_dir), ("--edf-dir", edf_dir)):
        if directory is None:
            print(f"error: {name} is required (or --config with preprocessing.{name[2:].replace('-', '_')})",
                  file=sys.stderr)
            return EXIT_SETUP
        if not Path(directory).is_dir():
            print(f"error: {name} {directory} is not a folder", file=sys.stderr)
            return EXIT_SETUP
    problem = out_problem(args.out, edf_dir, xml_dir)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_SETUP
    report = pair_report(xml_dir, edf_dir, id_pattern)
    try:
        write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
    except OSError as err:
        print(f"error: cannot write {args.out}: {err}", file=sys.stderr)
        return EXIT_SETUP
    print(format_summary(report))
    print(f"report: {args.out}")
    return EXIT_OK if is_clean(report) else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
