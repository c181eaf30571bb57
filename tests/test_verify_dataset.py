"""Tests for verify_mesa_dataset.py: pairing by ID pattern, NSRR/Profusion annotations, duplicates, IDs that
differ only by leading zeros, JSON report, exit codes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import verify_mesa_dataset as vd
from sleepppg.config import load_config
from sleepppg.constants import MESA_ID_PATTERN
from sleepppg.errors import ConfigError
from sleepppg.ids import compile_id_pattern, id_clashes, id_key, subject_id_from_filename, zero_free_id

REPO = Path(__file__).resolve().parents[1]


def _touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text("x")


def _run(tmp_path, *extra):
    out = tmp_path / "r" / "pair.json"
    code = vd.main(["--xml-dir", str(tmp_path / "xml"), "--edf-dir", str(tmp_path / "edf"), "--out", str(out),
                    *extra])
    return code, (json.loads(out.read_text()) if out.exists() else None)


def test_clean_pairs_exit_0(tmp_path, capsys):
    _touch(tmp_path / "edf", "mesa-sleep-0001.edf", "mesa-sleep-0010.EDF", "notes.txt")
    _touch(tmp_path / "xml", "mesa-sleep-0001-nsrr.xml", "MESA_SLEEP_0010-NSRR.xml", "readme.xml")
    code, report = _run(tmp_path)
    assert code == 0
    assert report["summary"] == {"xml_dir": str(tmp_path / "xml"), "edf_dir": str(tmp_path / "edf"),
                                 "id_pattern": MESA_ID_PATTERN, "xml_count": 2, "edf_count": 2, "matched": 2,
                                 "only_xml": 0, "only_edf": 0, "xml_duplicates": 0, "edf_duplicates": 0,
                                 "id_clashes": 0, "no_id": 0, "ignored_xml": 1, "nsrr_pairs": 2,
                                 "profusion_pairs": 0, "nsrr_and_profusion": 0}
    assert report["matched"] == [
        {"id": "0001", "edf": "mesa-sleep-0001.edf", "xml": "mesa-sleep-0001-nsrr.xml", "dialect": "nsrr"},
        {"id": "0010", "edf": "mesa-sleep-0010.EDF", "xml": "MESA_SLEEP_0010-NSRR.xml", "dialect": "nsrr"}]
    assert report["only_xml"] == report["only_edf"] == report["duplicates"] == report["id_clashes"] == []
    assert report["ignored_xml"] == ["readme.xml"]
    text = capsys.readouterr().out
    assert "matched pairs: 2" in text and "OK" in text and "readme.xml" in text


def test_unpaired_and_duplicates_exit_1(tmp_path, capsys):
    _touch(tmp_path / "edf", "mesa-sleep-0001.edf", "mesa-sleep-0002.edf", "mesa-sleep-0003.edf",
           "mesasleep0003.edf")
    _touch(tmp_path / "xml", "mesa-sleep-0001-nsrr.xml", "mesa-sleep-0003-nsrr.xml", "mesa-sleep-0004-nsrr.xml")
    code, report = _run(tmp_path)
    assert code == 1
    s = report["summary"]
    assert (s["edf_count"], s["xml_count"], s["matched"], s["only_edf"], s["only_xml"]) == (4, 3, 2, 1, 1)
    assert (s["edf_duplicates"], s["xml_duplicates"]) == (1, 0)
    assert report["only_edf"] == ["mesa-sleep-0002.edf"] and report["only_xml"] == ["mesa-sleep-0004-nsrr.xml"]
    assert report["duplicates"] == [{"id": "0003", "kind": "edf",
                                     "files": ["mesa-sleep-0003.edf", "mesasleep0003.edf"]}]
    assert "NOT 1:1" in capsys.readouterr().out


def test_profusion_pairs_and_nsrr_preferred(tmp_path, capsys):
    _touch(tmp_path / "edf", "mesa-sleep-0001.edf", "mesa-sleep-0002.edf")
    _touch(tmp_path / "xml", "mesa-sleep-0001-nsrr.xml", "mesa-sleep-0001-profusion.xml",
           "mesa-sleep-0002-profusion.xml")
    code, report = _run(tmp_path)
    assert code == 0
    assert report["matched"] == [
        {"id": "0001", "edf": "mesa-sleep-0001.edf", "xml": "mesa-sleep-0001-nsrr.xml", "dialect": "nsrr",
         "also": ["mesa-sleep-0001-profusion.xml"]},
        {"id": "0002", "edf": "mesa-sleep-0002.edf", "xml": "mesa-sleep-0002-profusion.xml", "dialect": "profusion"}]
    s = report["summary"]
    assert (s["xml_count"], s["nsrr_pairs"], s["profusion_pairs"], s["nsrr_and_profusion"]) == (3, 1, 1, 1)
    text = capsys.readouterr().out
    assert "NSRR XML 1, Profusion XML 1" in text and "both NSRR and Profusion XML: 1 (the NSRR XML is used)" in text


def test_two_xml_of_one_dialect_are_duplicates(tmp_path):
    _touch(tmp_path / "edf", "mesa-sleep-0001.edf")
    _touch(tmp_path / "xml", "mesa-sleep-0001-profusion.xml", "mesasleep0001-profusion.xml")
    code, report = _run(tmp_path)
    assert code == 1
    assert report["duplicates"] == [{"id": "0001", "kind": "profusion",
                                     "files": ["mesa-sleep-0001-profusion.xml", "mesasleep0001-profusion.xml"]}]


def test_leading_zero_clash_is_named(tmp_path, capsys):
    # 282 and 0282: one subject written two ways, or two subjects? Neither is guessed.
    _touch(tmp_path / "edf", "mesa-sleep-282.edf", "mesa-sleep-0282.edf", "mesa-sleep-0001.edf",
           "mesa-sleep-00450.edf")
    _touch(tmp_path / "xml", "mesa-sleep-282-nsrr.xml", "mesa-sleep-0282-nsrr.xml", "mesa-sleep-0001-nsrr.xml",
           "mesa-sleep-0450-nsrr.xml")
    code, report = _run(tmp_path)
    assert code == 1
    assert report["id_clashes"] == [
        {"ids": ["00450", "0450"], "files": ["mesa-sleep-00450.edf", "mesa-sleep-0450-nsrr.xml"]},
        {"ids": ["0282", "282"], "files": ["mesa-sleep-0282-nsrr.xml", "mesa-sleep-0282.edf",
                                           "mesa-sleep-282-nsrr.xml", "mesa-sleep-282.edf"]}]
    assert report["summary"]["id_clashes"] == 2
    text = capsys.readouterr().out
    assert "differ only by leading zeros or letter case: 2" in text and "0282 and 282" in text and "00450 and 0450" in text


def test_one_id_rule_across_formats():
    """id_key/id_clashes: the rule the pair check, extraction (MESA, DREAMT), inference and --labels share."""
    assert id_key("S003") == id_key("s3") == id_key("S3") == "s3"
    assert id_key("mesa-sleep-0042") == id_key("MESA-SLEEP-42")
    assert id_key("S30") != id_key("S3")  # an inner zero is part of the number
    assert id_clashes(["S3", "S002", "S003", "s3", "S2", "S004", "S3"]) == [["S002", "S2"], ["S003", "S3", "s3"]]
    assert id_clashes(["0001", "0002", "night"]) == []


def test_case_clash_is_named_with_a_letter_id_pattern(tmp_path, capsys):
    _touch(tmp_path / "edf", "night_S3.edf", "night_s003.edf", "night_S4.edf")
    _touch(tmp_path / "xml", "night_S3-nsrr.xml", "night_s003-nsrr.xml", "night_S4-nsrr.xml")
    code, report = _run(tmp_path, "--id-pattern", r"night_([a-z0-9]+)")
    assert code == 1
    assert report["id_clashes"] == [{"ids": ["S3", "s003"], "files": [
        "night_S3-nsrr.xml", "night_S3.edf", "night_s003-nsrr.xml", "night_s003.edf"]}]
    assert "S3 and s003" in capsys.readouterr().out


def test_zero_free_id():
    assert zero_free_id("0282") == zero_free_id("282") == "282"
    assert zero_free_id("S002") == zero_free_id("S2") == "S2"
    assert zero_free_id("800002") == "800002"  # inner zeros are part of the number
    assert zero_free_id("0000") == zero_free_id("0") == "0"


def test_other_id_pattern_keeps_id_text(tmp_path, capsys):
    _touch(tmp_path / "edf", "cfs-visit5-800002.edf", "cfs-visit5-800010.edf", "mesa-sleep-0001.edf")
    _touch(tmp_path / "xml", "cfs-visit5-800002-nsrr.xml", "cfs-visit5-800010-profusion.xml")
    code, report = _run(tmp_path, "--id-pattern", r"cfs-visit5-(\d+)")
    assert code == 1  # the MESA-named EDF carries no CFS ID: listed, not silently dropped
    assert [(m["id"], m["dialect"]) for m in report["matched"]] == [("800002", "nsrr"), ("800010", "profusion")]
    assert report["no_id"] == ["mesa-sleep-0001.edf"]
    _touch(tmp_path / "xml", "aa-notes-nsrr.xml")  # EDF and XML names without an ID: one list, sorted by name
    assert _run(tmp_path, "--id-pattern", r"cfs-visit5-(\d+)")[1]["no_id"] == ["aa-notes-nsrr.xml",
                                                                              "mesa-sleep-0001.edf"]
    (tmp_path / "xml" / "aa-notes-nsrr.xml").unlink()
    (tmp_path / "edf" / "mesa-sleep-0001.edf").unlink()
    code, report = _run(tmp_path, "--id-pattern", r"cfs-visit5-(\d+)")
    assert code == 0 and report["summary"]["id_pattern"] == r"cfs-visit5-(\d+)"
    # Letters and any length: the ID is the group's text as written.
    _touch(tmp_path / "edf2", "night_S002.edf", "night_AB12345.edf")
    _touch(tmp_path / "xml2", "night_S002-nsrr.xml", "night_AB12345-nsrr.xml")
    report = vd.pair_report(tmp_path / "xml2", tmp_path / "edf2", r"night_(\w+)")
    assert [m["id"] for m in report["matched"]] == ["AB12345", "S002"]


@pytest.mark.parametrize("pattern, message", [("cfs-(\\d+", "not a valid regular expression"),
                                              ("cfs-\\d+", "0 capturing groups"),
                                              ("(cfs)-(\\d+)", "2 capturing groups")])
def test_bad_id_pattern_exit_2(tmp_path, capsys, pattern, message):
    _touch(tmp_path / "edf", "a.edf")
    _touch(tmp_path / "xml", "a-nsrr.xml")
    code, report = _run(tmp_path, "--id-pattern", pattern)
    assert code == 2 and report is None
    err = capsys.readouterr().err
    assert err.startswith("error: --id-pattern:") and message in err and err.count("\n") == 1


def test_config_id_pattern_and_folders(tmp_path, capsys):
    _touch(tmp_path / "edf", "cfs-visit5-800002.edf")
    _touch(tmp_path / "xml", "cfs-visit5-800002-nsrr.xml")
    cfg = tmp_path / "cfg.yaml"
    text = (REPO / "configs" / "config_demo.yaml").read_text()
    text = text.replace("./demo/synthetic-mesa/polysomnography/edfs", str(tmp_path / "edf"))
    text = text.replace("./demo/synthetic-mesa/polysomnography/annotations-events-nsrr", str(tmp_path / "xml"))
    cfg.write_text(text.replace("'mesa[-_]?sleep[-_]?(\\d+)'", "'cfs-visit5-(\\d+)'"))
    out = tmp_path / "p.json"
    assert vd.main(["--config", str(cfg), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["matched"][0]["id"] == "800002"
    # A bad pattern in the config stops at load, naming the key.
    cfg.write_text(text.replace("'mesa[-_]?sleep[-_]?(\\d+)'", "'cfs-visit5-\\d+'"))
    with pytest.raises(ConfigError, match="preprocessing.id_pattern.*0 capturing groups"):
        load_config(cfg)
    assert vd.main(["--config", str(cfg), "--out", str(out)]) == 2
    assert "preprocessing.id_pattern" in capsys.readouterr().err


def test_bad_arguments_exit_2(tmp_path, capsys):
    (tmp_path / "xml").mkdir()
    assert vd.main(["--xml-dir", str(tmp_path / "xml"), "--edf-dir", str(tmp_path / "missing"),
                    "--out", str(tmp_path / "p.json")]) == 2
    assert "--edf-dir" in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists()
    assert vd.main(["--xml-dir", str(tmp_path / "xml"), "--out", str(tmp_path / "p.json")]) == 2
    assert "--edf-dir is required" in capsys.readouterr().err


def test_subject_id_pattern():
    assert subject_id_from_filename("mesa-sleep-0042-nsrr.xml") == "0042"
    assert subject_id_from_filename("Mesa_Sleep_6811.edf") == "6811"
    assert subject_id_from_filename("shhs1-200001.edf") is None
    assert subject_id_from_filename("shhs1-200001.edf", r"shhs1-(\d+)") == "200001"
    assert subject_id_from_filename("S002_whole_df", r"(S\d+)_whole") == "S002"
    assert compile_id_pattern(MESA_ID_PATTERN).flags & 2  # re.IGNORECASE


def test_an_out_that_would_replace_an_input_or_another_file_is_refused_and_nothing_is_written(tmp_path, capsys):
    _touch(tmp_path / "edf", "mesa-sleep-0001.edf")
    _touch(tmp_path / "xml", "mesa-sleep-0001-nsrr.xml")
    edf = tmp_path / "edf" / "mesa-sleep-0001.edf"
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}')
    base = ["--xml-dir", str(tmp_path / "xml"), "--edf-dir", str(tmp_path / "edf")]
    for out, message in ((edf, "is inside the input folder --edf-dir"),
                         (tmp_path / "xml" / "new.json", "is inside the input folder --xml-dir"),
                         (notes, "exists and is not a pair-check report"),
                         (tmp_path, "is a folder")):
        assert vd.main([*base, "--out", str(out)]) == 2
        assert message in capsys.readouterr().err, out
    assert edf.read_text() == "x" and notes.read_text() == '{"mine": 1}'
    assert sorted(p.name for p in (tmp_path / "xml").iterdir()) == ["mesa-sleep-0001-nsrr.xml"]
    report = tmp_path / "pair.json"
    assert vd.main([*base, "--out", str(report)]) == 0
    assert vd.main([*base, "--out", str(report)]) == 0  # its own earlier report is rewritten


def test_bdf_recordings_pair_like_edf(tmp_path):
    _touch(tmp_path / "edf", "mesa-sleep-0001.bdf", "mesa-sleep-0002.BDF", "mesa-sleep-0003.edf")
    _touch(tmp_path / "xml", "mesa-sleep-0001-nsrr.xml", "mesa-sleep-0002-nsrr.xml", "mesa-sleep-0003-nsrr.xml")
    code, report = _run(tmp_path)
    assert code == 0 and report["summary"]["matched"] == 3
    assert [m["edf"] for m in report["matched"]] == ["mesa-sleep-0001.bdf", "mesa-sleep-0002.BDF", "mesa-sleep-0003.edf"]
