"""Tests for sleepppg.scoring: label files for raw recordings (XML and CSV hypnograms), matched by subject ID."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import write_xml

from sleepppg.constants import MESA_ID_PATTERN
from sleepppg.errors import BadRecordingError, SetupError
from sleepppg.scoring import find_label_files, labels_for, read_hypnogram_table, read_labels


def test_table_spellings_header_and_length(tmp_path):
    names = tmp_path / "names.csv"
    names.write_text("epoch,Stage\n0,W\n1,n1\n2,N2\n3,N3\n4,R\n5,REM\n6,?\n7,Wake\n8,S4\n")
    assert read_hypnogram_table(names, 12).tolist() == [0, 1, 1, 2, 3, 3, -1, 0, 2, -1, -1, -1]
    numbers = tmp_path / "numbers.txt"
    numbers.write_text("0\n1\n2\n3\n-1\n0\n")
    assert read_hypnogram_table(numbers, 4).tolist() == [0, 1, 2, 3]  # rows past n_windows dropped
    tsv = tmp_path / "t.tsv"
    tsv.write_text("onset\tsleep_stage\n0\tLight\n30\tDeep\n")
    assert read_labels(tsv, 3).tolist() == [1, 2, -1]


@pytest.mark.parametrize("text", ["stage\nW\nN5\n", "a,b\n1,2\n", "0,1\n1,2\n", ""])
def test_table_unknown_values_and_columns_are_refused(tmp_path, text):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(BadRecordingError):
        read_hypnogram_table(path, 5)


def test_label_ids_follow_the_one_id_rule_across_formats(tmp_path):
    """DREAMT-style IDs: S003.csv scores night S3 and s3 (leading zeros and case ignored); an XML for S3 beside
    a CSV for S003 is a clash naming both, never a silent preference."""
    folder = tmp_path / "labels"
    folder.mkdir()
    (folder / "S003.csv").write_text("W\n")
    files = find_label_files(folder, MESA_ID_PATTERN)
    assert labels_for("S3", files).name == labels_for("s3", files).name == "S003.csv"
    assert labels_for("S30", files) is None
    write_xml(folder / "S3-nsrr.xml", [("Wake|0", 0, 30)])
    with pytest.raises(SetupError, match="--labels: .*IDs S003 and S3 differ only by leading zeros or letter "
                                         "case.*S003.csv, S3-nsrr.xml"):
        find_label_files(folder, MESA_ID_PATTERN)


def test_table_stage_spellings_unknown_values_and_rk_numbers(tmp_path):
    """One table for every reader (sleepppg.stages): N4, S3, Stage 2 and lower case map; an unknown name is
    unscored with a warning by value and count; R&K numbers (4, 5) are refused, since 3 would be read as REM."""
    path = tmp_path / "h.csv"
    path.write_text("stage\nwake\nN4\nS3\nStage 2\nStg9\nrem\nStg9\nMT\n")
    warnings = []
    assert read_labels(path, 9, warnings).tolist() == [0, 2, 2, 1, -1, 3, -1, -1, -1]
    assert warnings == ["hypnogram h.csv: unknown stage 'Stg9' in 2 rows: left unscored"]
    path.write_text("0.0\n1\n\n2.0\n-1.0\n")  # class indices as a float export writes them
    assert read_hypnogram_table(path, 5).tolist() == [0, 1, -1, 2, -1]
    path.write_text("0\n1\n2\n5\n4\n")
    with pytest.raises(BadRecordingError, match="row 4: '5' is not a 4-class stage index.*R&K"):
        read_hypnogram_table(path, 5)
    path.write_text("stage\nStg9\nW\nX\n")
    with pytest.raises(BadRecordingError, match="2 of 3 rows carry a stage this reader does not know") as err:
        read_hypnogram_table(path, 5)
    assert err.value.kind == "unknown_stages"


def test_xml_labels_match_the_annotation_reader(tmp_path):
    xml = write_xml(tmp_path / "mesa-sleep-0001-nsrr.xml", [("Wake|0", 0, 60), ("Stage 2 sleep|2", 60, 30),
                                                           ("REM sleep|5", 90, 30)])
    assert read_labels(xml, 5).tolist() == [0, 0, 1, 3, -1]


def test_matching_by_zero_free_id_and_preference(tmp_path):
    folder = tmp_path / "labels"
    write_xml(folder / "mesa-sleep-0001-profusion.xml", [("Wake|0", 0, 30)])
    write_xml(folder / "mesa-sleep-0001-nsrr.xml", [("Wake|0", 0, 30)])  # NSRR before Profusion
    (folder / "mesa-sleep-0002.csv").write_text("W\n")
    (folder / "night7.csv").write_text("W\n")  # no ID by the pattern: the stem
    (folder / "notes.md").write_text("ignored")
    files = find_label_files(folder, MESA_ID_PATTERN)
    assert labels_for("1", files).name == "mesa-sleep-0001-nsrr.xml"
    assert labels_for("0002", files).name == "mesa-sleep-0002.csv"
    assert labels_for("night7", files).name == "night7.csv"
    assert labels_for("0003", files) is None
    assert find_label_files(folder / "mesa-sleep-0002.csv", MESA_ID_PATTERN) == {"2": folder / "mesa-sleep-0002.csv"}
    (folder / "mesa-sleep-02.csv").write_text("W\n")  # same subject as 0002 written another way: ambiguous
    with pytest.raises(SetupError, match="IDs 0002 and 02 differ only by leading zeros or letter case.*"
                                         "mesa-sleep-0002.csv, mesa-sleep-02.csv"):
        find_label_files(folder, MESA_ID_PATTERN)
    (folder / "mesa-sleep-02.csv").unlink()
    (folder / "mesa-sleep-0002.tsv").write_text("W\n")  # one ID, two files of one kind
    with pytest.raises(SetupError, match="several label files"):
        find_label_files(folder, MESA_ID_PATTERN)
    with pytest.raises(SetupError, match="not found"):
        find_label_files(tmp_path / "missing", MESA_ID_PATTERN)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SetupError, match="no annotation"):
        find_label_files(empty, MESA_ID_PATTERN)
    assert np.array_equal(read_labels(folder / "night7.csv", 2), [0, -1])
