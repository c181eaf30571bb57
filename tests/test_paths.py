"""sleepppg.ids.safe_id: hostile IDs give one plain file name or a ValueError; collisions are refused."""
import random

import pytest

from sleepppg.ids import MAX_ID_BYTES, check_unique, safe_id, safe_ids

TMP_PREFIX = ".sleepppg-tmp-"


def check_part(name):
    assert name and name not in (".", "..") and "/" not in name and "\\" not in name and name.isprintable()
    return name


@pytest.mark.parametrize("raw, why", [("", "empty"), ("   ", "empty"), (".", "only dots"), ("..", "only dots"),
                                      ("...", "only dots")])
def test_safe_id_refuses_what_no_name_can_stand_for(raw, why):
    with pytest.raises(ValueError, match=why) as info:
        safe_id(raw)
    assert repr(raw) in str(info.value)


@pytest.mark.parametrize("raw, expected", [
    ("0001", "0001"), ("S002", "S002"), ("800002", "800002"), ("Müller", "Müller"), ("a b", "a b"),
    ("a/b", "a_b"), ("a\\b", "a_b"), ("../etc/passwd", "_._etc_passwd"), ("a\x00b", "a_b"), ("a\nb\tc", "a_b_c"),
    ("a\x1bb\x7f", "a_b_"), (".hidden", "_hidden"), (TMP_PREFIX + "1-x", "_sleepppg-tmp-1-x"),
    ("bad\udcffbyte", "bad_byte"),  # an undecodable byte of a file name (os.fsdecode)
])
def test_safe_id_maps_to_one_plain_name(raw, expected):
    assert safe_id(raw) == expected
    assert check_part(expected) == expected and safe_id(expected) == expected


def test_a_300_character_id_is_cut_with_a_hash_and_long_ids_stay_distinct():
    a, b = "x" * 299 + "a", "x" * 299 + "b"
    safe_a, safe_b = safe_id(a), safe_id(b)
    assert len(safe_a.encode()) == MAX_ID_BYTES and safe_a.startswith("x" * 55 + "~") and safe_a != safe_b
    assert safe_id(a) == safe_a and safe_id(safe_a) == safe_a  # the same every time, and a fixed point
    wide = safe_id("é" * 300)  # 2 bytes a character: cut on a character boundary
    assert len(wide.encode()) <= MAX_ID_BYTES and wide.startswith("é" * 27 + "~")
    assert safe_id("y" * MAX_ID_BYTES) == "y" * MAX_ID_BYTES  # at the limit: unchanged


def test_random_ids_always_give_a_plain_name_or_a_value_error():
    rng = random.Random(0)
    alphabet = "ab0/\\.\x00\n\t ~é\u2028\udcff-_"
    for _ in range(3000):
        raw = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        try:
            safe = safe_id(raw)
        except ValueError:
            assert not raw.strip() or set(raw) == {"."}
            continue
        assert check_part(safe) == safe and not safe.startswith(".") and len(safe.encode()) <= MAX_ID_BYTES
        assert safe_id(safe) == safe


def test_check_unique_names_both_raw_ids():
    with pytest.raises(ValueError, match=r"'a/b' and 'a_b' both become the file name 'a_b'"):
        check_unique({"a/b": "a_b", "a_b": "a_b"})
    with pytest.raises(ValueError, match=r"'S1' and 's1'"):  # one file on a case-insensitive file system
        safe_ids(["S1", "s1"])
    with pytest.raises(ValueError, match=r"'a\\\\b' and 'a/b'"):
        safe_ids(["a\\b", "a/b"])
    assert safe_ids(["0001", "0002", "a/b"]) == {"0001": "0001", "0002": "0002", "a/b": "a_b"}
