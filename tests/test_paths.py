"""sleepppg.paths and the ID rule of sleepppg.ids: hostile IDs, planted links, folders and files where the
other should be, stale temporaries beside a user's own, names too long and a full disk."""
import errno
import logging
import os
import pickle
import random

import pytest

from sleepppg.errors import SetupError
from sleepppg.ids import MAX_ID_BYTES, check_unique, safe_id, safe_ids
from sleepppg.paths import (
    TMP_PREFIX,
    NoFollowFileHandler,
    OutputPathError,
    OutputRoot,
    atomic_output,
    check_part,
    remove_stale_temporaries,
    write_bytes_atomic,
)
from sleepppg.runio import write_json, write_text_atomic

DEAD_PID = 2**31 - 1  # above any pid_max: no process has it


def listing(folder):
    """Every name under `folder`, recursively, links not followed."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def outside(tmp_path):
    """A file and a folder outside the output root, which no write may touch."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "precious.txt").write_text("precious")
    return tmp_path / "outside"


@pytest.fixture
def root(tmp_path):
    return OutputRoot(tmp_path / "out")


# ---------------------------------------------------------------------------------------------------------- IDs

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


def test_an_id_of_dotdot_writes_nothing_outside_its_folder(root, outside):
    with pytest.raises(ValueError, match="only dots"):
        safe_id("..")
    # and a writer that skipped safe_id is refused by the path itself, before anything is written
    for parts in (("cache", "..", "..", "outside", "x.npy"), ("..", "x.csv"), ("cache", "a/../../x.csv")):
        with pytest.raises(OutputPathError) as info:
            root.path(*parts)
        assert str(root.root) in str(info.value)
    assert listing(outside) == ["precious.txt"] and listing(root.root) == []


# ---------------------------------------------------------------------------------------------------- paths

@pytest.mark.parametrize("part, why", [
    ("", "not a file or folder name"), (".", "not a file or folder name"), ("..", "not a file or folder name"),
    ("a/b", "path separator"), ("a\\b", "path separator"), ("a\x00b", "control character"),
    ("a\nb", "control character"), (TMP_PREFIX + "x", "starts like a temporary"), ("x" * 256, "name too long"),
    ("é" * 128, "name too long"),  # 256 bytes
])
def test_check_part_refuses_what_is_not_one_plain_name(part, why):
    with pytest.raises(OutputPathError, match=why):
        check_part(part)
    assert check_part("x" * 255) == "x" * 255


def test_path_builds_inside_the_root_and_creates_nothing(root):
    path = root.path("cache", "0001", "windows.npy")
    assert path == root.root / "cache" / "0001" / "windows.npy" and listing(root.root) == []
    with pytest.raises(TypeError):
        root.path()
    assert root.folder() == root.root
    assert root.folder("runs", "a") == root.root / "runs" / "a" and (root.root / "runs" / "a").is_dir()
    write_json(root.path("runs", "a", "result.json"), {"kappa": 0.5})
    assert (root.root / "runs" / "a" / "result.json").read_text() == '{\n  "kappa": 0.5\n}\n'


def test_a_symlink_at_an_output_file_is_refused_and_its_target_untouched(root, outside):
    link = root.root / "result.json"
    link.symlink_to(outside / "precious.txt")
    with pytest.raises(OutputPathError, match="symbolic link") as info:
        root.path("result.json")
    assert info.value.filename == str(link) and info.value.errno == errno.ELOOP
    for write in (lambda: write_json(link, {"x": 1}), lambda: write_bytes_atomic(link, b"x"),
                  lambda: write_text_atomic(link, "x")):
        with pytest.raises(OutputPathError, match="symbolic link"):
            write()
    with pytest.raises(OutputPathError, match="symbolic link"):
        NoFollowFileHandler(link)
    assert (outside / "precious.txt").read_text() == "precious" and listing(outside) == ["precious.txt"]
    assert link.is_symlink() and listing(root.root) == ["result.json"]  # no temporary left beside it


def test_a_symlink_at_an_intermediate_folder_is_refused_and_the_outside_untouched(root, outside):
    (root.root / "cache").symlink_to(outside, target_is_directory=True)
    for build in (lambda: root.path("cache", "0001", "windows.npy"), lambda: root.path("cache", "x.csv"),
                  lambda: root.folder("cache", "0001")):
        with pytest.raises(OutputPathError, match="symbolic link, where a folder should be") as info:
            build()
        assert info.value.filename == str(root.root / "cache")
    assert listing(outside) == ["precious.txt"] and (outside / "precious.txt").read_text() == "precious"


def test_a_swapped_root_is_refused(tmp_path, root, outside):
    root.root.rename(tmp_path / "moved")
    root.root.symlink_to(outside, target_is_directory=True)
    for build in (lambda: root.path("x.csv"), lambda: root.folder("cache")):
        with pytest.raises(OutputPathError, match="outside the output folder"):
            build()
    assert listing(outside) == ["precious.txt"]


def test_the_root_itself_may_be_a_users_link(tmp_path):
    (tmp_path / "big").mkdir()
    (tmp_path / "out").symlink_to(tmp_path / "big", target_is_directory=True)
    root = OutputRoot(tmp_path / "out")
    assert root.root == (tmp_path / "big").resolve()
    write_bytes_atomic(root.path("a", "b.bin"), b"ok")
    assert (tmp_path / "big" / "a" / "b.bin").read_bytes() == b"ok"


def test_a_hard_link_at_an_output_file_is_replaced_not_written_through(root, outside):
    os.link(outside / "precious.txt", root.root / "notes.txt")
    write_bytes_atomic(root.path("notes.txt"), b"new")
    assert (root.root / "notes.txt").read_bytes() == b"new" and (outside / "precious.txt").read_text() == "precious"


def test_a_folder_where_a_file_should_be(root):
    (root.root / "result.json").mkdir()
    with pytest.raises(OutputPathError, match="is a folder, where a file should be written") as info:
        root.path("result.json")
    assert info.value.filename == str(root.root / "result.json") and info.value.errno == errno.EISDIR
    with pytest.raises(OutputPathError, match="is a folder"):
        write_json(root.root / "result.json", {})
    assert listing(root.root) == ["result.json"]


def test_a_file_where_a_folder_should_be(tmp_path, root):
    (root.root / "cache").write_text("user data")
    for build in (lambda: root.path("cache", "0001", "x.npy"), lambda: root.folder("cache", "0001"),
                  lambda: write_bytes_atomic(root.root / "cache" / "0001" / "x.npy", b"x")):
        with pytest.raises(OutputPathError, match="is a file, not a folder") as info:
            build()
        assert info.value.filename == str(root.root / "cache")
    assert (root.root / "cache").read_text() == "user data" and listing(root.root) == ["cache"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError, match="is a file, not a folder"):
        OutputRoot(tmp_path / "file")
    with pytest.raises(OutputPathError, match="does not exist"):
        OutputRoot(tmp_path / "missing", create=False)


def test_output_path_error_is_one_line_an_oserror_a_setup_error_and_pickles(root, outside):
    (root.root / "log.txt").symlink_to(outside / "precious.txt")
    with pytest.raises(OutputPathError) as info:
        root.path("log.txt")
    err = info.value
    assert isinstance(err, OSError) and isinstance(err, SetupError)
    assert str(err) == f"{root.root / 'log.txt'}: is a symbolic link; refusing to write through it (remove it " \
                       "and run again)"
    again = pickle.loads(pickle.dumps(err))  # crosses a process pool intact
    assert type(again) is OutputPathError and str(again) == str(err) and again.errno == errno.ELOOP


# ------------------------------------------------------------------------------------------------ temporaries

def test_atomic_output_writes_through_one_prefixed_temporary(root):
    target = root.path("a", "windows.npy")
    with atomic_output(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(f"{TMP_PREFIX}{os.getpid()}-")
        assert tmp.name.endswith("-windows.npy.tmp") and tmp.stat().st_size == 0 and not target.exists()
        tmp.write_bytes(b"data")
    assert target.read_bytes() == b"data" and listing(root.root) == ["a", "a/windows.npy"]
    with pytest.raises(RuntimeError, match="crash"):  # any other error passes unchanged; the old file stays
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash")
    assert target.read_bytes() == b"data" and listing(root.root) == ["a", "a/windows.npy"]


def test_cleanup_removes_only_our_stale_temporaries(root, outside):
    folder = root.folder("parts")
    stale = folder / f"{TMP_PREFIX}{DEAD_PID}-0a1b2c3d-0001.npz.tmp"
    live = folder / f"{TMP_PREFIX}{os.getpid()}-0a1b2c3d-0002.npz.tmp"  # this process may still be writing it
    users = ["notes.tmp", "x.tmp", ".x.tmp", ".0001.npz.abc.tmp", "0001.npz"]
    for path in (stale, live, *(folder / name for name in users)):
        path.write_text("x")
    (folder / f"{TMP_PREFIX}{DEAD_PID}-link.tmp").symlink_to(outside / "precious.txt")  # not ours: a link
    (folder / f"{TMP_PREFIX}{DEAD_PID}-dir.tmp").mkdir()
    (folder / "sub").mkdir()
    (folder / "sub" / stale.name).write_text("x")  # only the folder given, not below it
    before = listing(folder)

    assert remove_stale_temporaries(folder) == [stale]
    assert listing(folder) == [name for name in before if name != stale.name]
    assert listing(outside) == ["precious.txt"] and (outside / "precious.txt").read_text() == "precious"
    assert remove_stale_temporaries(folder) == [] and remove_stale_temporaries(root.root / "missing") == []
    (root.root / "linked").symlink_to(folder, target_is_directory=True)
    with pytest.raises(OutputPathError, match="symbolic link"):
        remove_stale_temporaries(root.root / "linked")


# ---------------------------------------------------------------------------------- name too long, disk full

def test_a_name_too_long_is_one_clear_error_and_leaves_nothing(root, tmp_path):
    with pytest.raises(OutputPathError, match="name too long") as info:
        root.path("cache", "x" * 300 + ".npy")
    assert info.value.errno == errno.ENAMETOOLONG
    with pytest.raises(OutputPathError, match="name too long"):
        write_bytes_atomic(root.root / ("x" * 300), b"x")
    deep = root.root.joinpath(*["d" * 250] * 20, "f.bin")  # each name fits; the whole path passes PATH_MAX
    with pytest.raises(OutputPathError, match="name too long") as info:
        write_bytes_atomic(deep, b"x")
    assert info.value.errno == errno.ENAMETOOLONG
    assert not [p for p in root.root.rglob("*") if p.is_file()]
    longest = root.path("y" * 255)  # the longest name: its temporary's name is shortened, not refused
    write_bytes_atomic(longest, b"ok")
    assert longest.read_bytes() == b"ok" and not [p for p in root.root.rglob(TMP_PREFIX + "*")]


def test_a_full_disk_leaves_no_final_file_and_no_temporary(root, monkeypatch):
    target = root.path("ppg.h5")
    real_write = os.write

    def write_then_fill(fd, data):  # writes 1 MB, then the disk is full
        if os.fstat(fd).st_size >= 1_000_000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, bytes(data[:1_000_000]))

    monkeypatch.setattr(os, "write", write_then_fill)
    with pytest.raises(OutputPathError) as info:
        write_bytes_atomic(target, b"\0" * 2_500_000)
    monkeypatch.undo()
    assert str(info.value) == f"{target}: disk full: free at least 3 MB and run the same command again"
    assert info.value.errno == errno.ENOSPC and listing(root.root) == []

    target.write_bytes(b"previous run")  # a full disk never damages what the final name held
    for failure in (OSError(errno.ENOSPC, "No space left on device"), OSError(errno.EDQUOT, "Disk quota exceeded"),
                    RuntimeError("Can't write data (file write failed: errno = 28, error message = 'No space "
                                 "left on device')")):  # h5py's form
        with pytest.raises(OutputPathError, match="disk full: free at least 2 MB"):
            with atomic_output(target) as tmp:
                tmp.write_bytes(b"\0" * 1_500_000)
                raise failure
        assert target.read_bytes() == b"previous run" and listing(root.root) == ["ppg.h5"]

    def fsync_fails(fd):  # the disk fills while the data is flushed
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync_fails)
    with pytest.raises(OutputPathError, match="disk full"):
        write_text_atomic(target, "new")
    monkeypatch.undo()
    assert target.read_bytes() == b"previous run" and listing(root.root) == ["ppg.h5"]


def test_log_handler_appends_to_a_file_and_refuses_a_folder(root, tmp_path):
    path = root.path("logs", "run.log")
    path.parent.mkdir()
    handler = NoFollowFileHandler(path)
    assert isinstance(handler, logging.FileHandler)
    try:
        handler.emit(logging.makeLogRecord({"msg": "one"}))
    finally:
        handler.close()
    handler = NoFollowFileHandler(path)
    try:
        handler.emit(logging.makeLogRecord({"msg": "two"}))
    finally:
        handler.close()
    assert path.read_text() == "one\ntwo\n"
    with pytest.raises(OutputPathError, match="is a folder"):
        NoFollowFileHandler(path.parent)
