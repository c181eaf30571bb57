"""Tests for verify_mesa_dataset.py: pairing by MESA ID, duplicates, JSON report, exit codes."""
from __future__ import annotations

import json

import verify_mesa_dataset as vd
from sleepppg_common import subject_id_from_filename


def _touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text("x")


def test_clean_pairs_exit_0(tmp_path, capsys):
    _touch(tmp_path / "edf", "mesa-sleep-0001.edf", "mesa-sleep-0010.EDF", "notes.txt")
    _touch(tmp_path / "xml", "mesa-sleep-0001-nsrr.xml", "MESA_SLEEP_0010-nsrr.xml", "readme.xml")
    out = tmp_path / "r" / "pair.json"
    assert vd.main(["--xml-dir", str(tmp_path / "xml"), "--edf-dir", str(tmp_path / "edf"), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["summary"] == {"xml_dir": str(tmp_path / "xml"), "edf_dir": str(tmp_path / "edf"),
                                 "xml_count": 2, "edf_count": 2, "matched": 2, "only_xml": 0, "only_edf": 0,
                                 "xml_duplicates": 0, "edf_duplicates": 0}
    assert report["matched"] == [{"id": "0001", "edf": "mesa-sleep-0001.edf", "xml": "mesa-sleep-0001-nsrr.xml"},
                                 {"id": "0010", "edf": "mesa-sleep-0010.EDF", "xml": "MESA_SLEEP_0010-nsrr.xml"}]
    assert report["only_xml"] == report["only_edf"] == report["duplicates"] == []
    text = capsys.readouterr().out
    assert "matched pairs: 2" in text and "OK" in text


def test_unpaired_and_duplicates_exit_1(tmp_path, capsys):
    _touch(tmp_path / "edf", "mesa-sleep-0001.edf", "mesa-sleep-0002.edf", "mesa-sleep-0003.edf",
           "mesasleep0003.edf")
    _touch(tmp_path / "xml", "mesa-sleep-0001-nsrr.xml", "mesa-sleep-0003-nsrr.xml", "mesa-sleep-0004-nsrr.xml")
    out = tmp_path / "pair.json"
    assert vd.main(["--xml-dir", str(tmp_path / "xml"), "--edf-dir", str(tmp_path / "edf"), "--out", str(out)]) == 1
    report = json.loads(out.read_text())
    s = report["summary"]
    assert (s["edf_count"], s["xml_count"], s["matched"], s["only_edf"], s["only_xml"]) == (4, 3, 2, 1, 1)
    assert (s["edf_duplicates"], s["xml_duplicates"]) == (1, 0)
    assert report["only_edf"] == ["mesa-sleep-0002.edf"] and report["only_xml"] == ["mesa-sleep-0004-nsrr.xml"]
    assert report["duplicates"] == [{"id": "0003", "kind": "edf",
                                     "files": ["mesa-sleep-0003.edf", "mesasleep0003.edf"]}]
    assert "NOT 1:1" in capsys.readouterr().out


def test_bad_arguments_exit_2(tmp_path, capsys):
    (tmp_path / "xml").mkdir()
    assert vd.main(["--xml-dir", str(tmp_path / "xml"), "--edf-dir", str(tmp_path / "missing"),
                    "--out", str(tmp_path / "p.json")]) == 2
    assert "--edf-dir" in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists()


def test_subject_id_pattern():
    assert subject_id_from_filename("mesa-sleep-0042-nsrr.xml") == "0042"
    assert subject_id_from_filename("Mesa_Sleep_6811.edf") == "6811"
    assert subject_id_from_filename("shhs1-200001.edf") is None
