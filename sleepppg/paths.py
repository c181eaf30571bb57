"""Where an output file may land, and how it gets there.

Paths: `OutputRoot(folder).path(*parts)` is the one way to build an output path. Each part is one plain name
(`check_part`: no '/' or '\\', not '.' or '..', printable, at most 255 bytes); the path never leaves the
root, and no symbolic link planted inside the output tree is followed: every existing component below the
root is checked with `os.lstat`. Subject IDs enter names only through `sleepppg.ids.safe_id`.

Writes: `atomic_output(path)` (a context manager yielding a temporary path) and `write_bytes_atomic(path,
data)` create a temporary `.sleepppg-tmp-<pid>-<random>-<name>.tmp` beside the final name with
O_CREAT|O_EXCL|O_NOFOLLOW, fsync it, then `os.replace` it over the final name. So a final name never holds a
half-written file, and a symbolic or hard link found at the final name is never written through (a symbolic
link is refused; a hard link is replaced, its other names untouched). `remove_stale_temporaries(folder)`
deletes what a killed run left: only files with that prefix, in that folder.

Failures raise one `OutputPathError`, naming the path and the reason: a symbolic link, a folder where a file
should be, a file where a folder should be, a path outside the root, a name too long for the file system, or
a full disk ("free at least N MB and run the same command again"); a failed write leaves no temporary.

This guards against links, files and hostile names planted in the output tree before or between runs. It
cannot guard against a process that rewrites the tree while we write: the writers (h5py, torch.save,
matplotlib) open files by name, so a check and an open cannot be one step; such a process could rewrite
the results anyway.

Usage:
    root = OutputRoot(args.out_dir)
    write_json(root.path("cache", safe_id(raw_id), "meta.json"), meta)
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import secrets
import stat
from pathlib import Path
from typing import IO, Iterator

from sleepppg.errors import SetupError

TMP_PREFIX = ".sleepppg-tmp-"  # every temporary we create starts so; nothing else does (see check_part, safe_id)
TMP_SUFFIX = ".tmp"  # kept so that an older cleanup (a glob of ".*.tmp") still finds our temporaries
NAME_MAX_BYTES = 255  # the file-name limit of ext4, xfs, btrfs, tmpfs and APFS, when pathconf cannot tell
_TMP_NAME_CHARS = 50  # characters of the final name kept in a temporary's name: <= 255 bytes in all
_MB = 1_000_000

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


class OutputPathError(OSError, SetupError):
    """An output path that is refused, or a write that failed for want of room or of a short enough name.

    `filename` is the path, `strerror` the reason, `errno` one of ELOOP (a symbolic link), EISDIR (a folder
    where a file should be), ENOTDIR (a file where a folder should be), EXDEV (outside the output root),
    ENAMETOOLONG, ENOSPC (a full disk or quota), EINVAL (a part that is no plain name, or a pipe or device).

    It is an OSError, so the handlers that already catch a failed write (log it, count it, exit) keep
    working, and a SetupError, so a script's `main` stops with its one line and exit status 2 when nothing
    nearer catches it. Constructed like OSError: `OutputPathError(errno.ELOOP, reason, path)`.
    """

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def disk_full_error(err: BaseException) -> OSError | None:
    """The OSError (ENOSPC, or EDQUOT: a full quota) behind `err` when a write failed for lack of space, else
    None. torch.save reports its own RuntimeError after the OSError of the failed write, so the chain of
    exceptions (`__cause__`, `__context__`) is searched."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def is_disk_full(err: BaseException) -> bool:
    """True for a full disk or quota: an OSError ENOSPC/EDQUOT in `err`'s chain (disk_full_error), or h5py's
    report of one, which carries the C library's errno in its message (and is a RuntimeError when the failure
    comes while it closes a file)."""
    if disk_full_error(err) is not None:
        return True
    return isinstance(err, (OSError, RuntimeError)) and ("errno = 28" in str(err) or "No space left" in str(err))


def _part_problem(part: object, name_max: int) -> tuple[int, str] | None:
    if not isinstance(part, str):
        return errno.EINVAL, f"part {part!r} is a {type(part).__name__}, not a name"
    if part in ("", ".", ".."):
        return errno.EINVAL, f"part {part!r} is not a file or folder name"
    if "/" in part or "\\" in part:
        return errno.EINVAL, f"part {part!r} contains a path separator"
    if not part.isprintable():
        return errno.EINVAL, f"part {part!r} contains a control character"
    if part.startswith(TMP_PREFIX):
        return errno.EINVAL, f"part {part!r} starts like a temporary ({TMP_PREFIX}), which a cleanup deletes"
    size = len(os.fsencode(part))
    if size > name_max:
        return errno.ENAMETOOLONG, f"name too long for the file system ({size} bytes, at most {name_max})"
    return None


def check_part(part: str, name_max: int = NAME_MAX_BYTES) -> str:
    """Return `part` when it is one plain file or folder name: a non-empty string without '/' or '\\', not
    '.' or '..', printable, not starting with `TMP_PREFIX`, at most `name_max` bytes.

    Raises:
        OutputPathError: naming the part and why.
    """
    problem = _part_problem(part, name_max)
    if problem:
        raise OutputPathError(problem[0], problem[1], str(part))
    return part


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows), or no answer for this file system
        return NAME_MAX_BYTES


def _lstat(path: Path) -> os.stat_result | None:
    """os.lstat, or None when nothing is there."""
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno == errno.ENAMETOOLONG:
            raise OutputPathError(errno.ENAMETOOLONG, "name too long for the file system", str(path)) from None
        raise


def _require_folder(path: Path, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise OutputPathError(errno.ELOOP, "is a symbolic link, where a folder should be; refusing to follow it "
                              "(remove it and run again)", str(path))
    if not stat.S_ISDIR(st.st_mode):
        raise OutputPathError(errno.ENOTDIR, "is a file, not a folder", str(path))


def _check_file_slot(path: Path) -> None:
    """Refuse what stands at `path` when a file is to be written there: anything but nothing or a file."""
    st = _lstat(path)
    if st is None or stat.S_ISREG(st.st_mode):
        return
    if stat.S_ISLNK(st.st_mode):
        raise OutputPathError(errno.ELOOP, "is a symbolic link; refusing to write through it (remove it and run "
                              "again)", str(path))
    if stat.S_ISDIR(st.st_mode):
        raise OutputPathError(errno.EISDIR, "is a folder, where a file should be written", str(path))
    raise OutputPathError(errno.EINVAL, "is not a regular file (a pipe, socket or device)", str(path))


def _make_folders(folder: Path) -> None:
    """mkdir -p `folder`, naming the file that stands where a folder should be."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        for above in reversed((folder, *folder.parents)):  # the topmost component that is not a folder
            if (above.exists() or above.is_symlink()) and not above.is_dir():
                raise OutputPathError(errno.ENOTDIR, "is a file, not a folder", str(above)) from None
        raise
    except OSError as err:
        converted = _as_output_error(err, Path(err.filename or folder), 0)
        if converted is None:
            raise
        raise converted from None


def _as_output_error(err: BaseException, path: Path, size: int) -> OutputPathError | None:
    """The OutputPathError for a full disk or a name too long (`size`: bytes the file needs, at least), else
    None (the error passes unchanged)."""
    if isinstance(err, OutputPathError):
        return None
    if is_disk_full(err):
        need_mb = max(1, math.ceil(size / _MB))
        return OutputPathError(errno.ENOSPC, f"disk full: free at least {need_mb} MB and run the same command "
                               "again", str(path))
    if isinstance(err, OSError) and err.errno == errno.ENAMETOOLONG:
        return OutputPathError(errno.ENAMETOOLONG, "name too long for the file system", str(path))
    return None


def _create_temporary(path: Path) -> Path:
    """Create an empty temporary beside `path` (never through a link, never over an existing file)."""
    name = path.name[:_TMP_NAME_CHARS]
    for _ in range(100):
        tmp = path.parent / f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{name}{TMP_SUFFIX}"
        try:
            # 0o666 less the umask, as for any new file (mkstemp would make it 0o600)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, "100 random temporary names all taken", str(path.parent))


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems (and Windows) cannot fsync a folder
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _commit(tmp: Path, path: Path) -> None:
    """fsync the finished temporary and rename it over `path`."""
    if not stat.S_ISREG(os.lstat(tmp).st_mode):
        raise OutputPathError(errno.EINVAL, "the temporary was replaced by something that is not a file", str(tmp))
    fd = os.open(tmp, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    _check_file_slot(path)  # again: a link or folder may have appeared while the file was written
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@contextlib.contextmanager
def _atomic_output(path: Path, size: int) -> Iterator[Path]:
    name_size = len(os.fsencode(path.name))
    if name_size > NAME_MAX_BYTES:
        raise OutputPathError(errno.ENAMETOOLONG, f"name too long for the file system ({name_size} bytes, at "
                              f"most {NAME_MAX_BYTES})", str(path))
    _make_folders(path.parent)
    _check_file_slot(path)
    try:
        tmp = _create_temporary(path)
    except OSError as err:
        converted = _as_output_error(err, path, size)
        if converted is None:
            raise
        raise converted from None
    try:
        yield tmp
        _commit(tmp, path)
    except BaseException as err:  # also Ctrl-C: the temporary goes, the final name keeps what it had
        with contextlib.suppress(OSError):
            size = max(size, os.lstat(tmp).st_size)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        converted = _as_output_error(err, path, size)
        if converted is None:
            raise
        raise converted from None


def atomic_output(path: str | os.PathLike) -> contextlib.AbstractContextManager[Path]:
    """Yield a new, empty temporary path beside `path`; when the block ends without an error, fsync it and
    rename it to `path`. Creates the folders above `path`.

    Write the temporary by name (`torch.save(state, tmp)`, `h5py.File(tmp, "w")`, `fig.savefig(tmp,
    format="png")`, `open(tmp, "wb")`; not `np.save(tmp, ...)`, which appends ".npy" to the name).
    On any error (or Ctrl-C) the temporary is removed and `path` keeps what it had.

    Raises:
        OutputPathError: `path` is a symbolic link, a folder, a pipe or device; a folder above it is a file;
            its name is too long; or the disk filled up (also when the block itself hit the full disk).
            Any other error of the block passes unchanged.
    """
    return _atomic_output(Path(path), 0)


def write_bytes_atomic(path: str | os.PathLike, data: bytes | bytearray | memoryview) -> None:
    """Write `data` to `path` atomically (see `atomic_output`, which raises the same errors).

    Raises:
        OutputPathError: see `atomic_output`; on a full disk it names the size of `data`.
    """
    view = memoryview(data).cast("B")
    with _atomic_output(Path(path), view.nbytes) as tmp:
        fd = os.open(tmp, os.O_WRONLY | _O_NOFOLLOW | _O_CLOEXEC)
        try:
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)


def _writer_alive(name: str) -> bool:
    """Whether the process that named this temporary still runs on this machine (a parallel run writing the
    same folder); when in doubt, alive."""
    pid_text = name[len(TMP_PREFIX):].split("-", 1)[0]
    if not pid_text.isdigit() or int(pid_text) <= 0:
        return False  # not a name we make: nothing is writing it
    pid = int(pid_text)
    if pid == os.getpid():
        return True  # this process: another thread may be writing it
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, under another user; anything else: keep the file
        return True
    try:  # a killed process nobody has reaped yet (a zombie, state Z) still answers signal 0 but writes nothing
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries a killed run left in `folder` (not in its subfolders): the regular files whose
    name starts with `TMP_PREFIX`, unless the process that made them still runs here. A user's own files
    ('notes.tmp', '.x.tmp'), folders, and symbolic links are never touched, and no link is followed.

    Returns:
        The paths removed, in `folder`; [] when `folder` does not exist.

    Raises:
        OutputPathError: `folder` itself is a symbolic link or a file.
    """
    folder = Path(folder)
    st = _lstat(folder)
    if st is None:
        return []
    _require_folder(folder, st)
    removed = []
    dir_fd = os.open(folder, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC)
    try:
        with os.scandir(dir_fd) as entries:
            for entry in entries:
                if (not entry.name.startswith(TMP_PREFIX) or not entry.is_file(follow_symlinks=False)
                        or _writer_alive(entry.name)):
                    continue
                with contextlib.suppress(FileNotFoundError):  # removed meanwhile by a parallel cleanup
                    os.unlink(entry.name, dir_fd=dir_fd)  # relative to the folder opened: no link followed
                    removed.append(folder / entry.name)
    finally:
        os.close(dir_fd)
    return sorted(removed)


def _open_log(path: str | os.PathLike, mode: str, encoding: str | None, errors: str | None) -> IO[str]:
    path = Path(path)
    _check_file_slot(path)
    flags = os.O_WRONLY | os.O_CREAT | _O_NOFOLLOW | _O_CLOEXEC | (os.O_TRUNC if "w" in mode else os.O_APPEND)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as err:
        if err.errno != errno.ELOOP:
            raise
        # a link put there after the check above
        raise OutputPathError(errno.ELOOP, "is a symbolic link; refusing to write through it", str(path)) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OutputPathError(errno.EINVAL, "is not a regular file (a pipe, socket or device)", str(path))
    return os.fdopen(fd, "w" if "w" in mode else "a", encoding=encoding, errors=errors)


class NoFollowFileHandler(logging.FileHandler):
    """`logging.FileHandler` that refuses a symbolic link, folder, pipe or device at the log path
    (OutputPathError, when the file is opened) instead of appending through it. Mode 'a' or 'w'."""

    def _open(self) -> IO[str]:
        return _open_log(self.baseFilename, self.mode, self.encoding, self.errors)


class OutputRoot:
    """An output folder and the one way to build paths inside it.

    The root itself is the user's choice and may be (or lie under) a symbolic link: it is resolved once, here.
    Below it, nothing that is a link is ever followed.

    Attributes:
        root: the resolved root folder.
        name_max: the longest name (bytes) the root's file system takes.
    """

    def __init__(self, root: str | os.PathLike, *, create: bool = True):
        """Args:
            root: the output folder.
            create: create it (and the folders above it) when missing.

        Raises:
            OutputPathError: `root` (or a folder above it) is a file, or it is missing and `create` is False.
        """
        given = Path(root)
        if create:
            _make_folders(given)
        try:
            resolved = given.resolve(strict=True)
        except FileNotFoundError:
            raise OutputPathError(errno.ENOENT, "does not exist", str(given)) from None
        if not resolved.is_dir():
            raise OutputPathError(errno.ENOTDIR, "is a file, not a folder", str(given))
        self.root = resolved
        self.name_max = _name_max(resolved)

    def __repr__(self) -> str:
        return f"OutputRoot({str(self.root)!r})"

    def _names(self, parts: tuple[str, ...]) -> list[str]:
        shown = os.path.join(self.root, *map(str, parts))
        for part in parts:
            problem = _part_problem(part, self.name_max)
            if problem:
                raise OutputPathError(problem[0], problem[1], shown)
        return list(parts)

    def _check_inside(self, path: Path) -> None:
        """Refuse `path` (the root, or a folder checked below it) when it resolves outside the root: only
        possible when the root itself, or a folder above it, was swapped for a link after it was resolved."""
        if not path.resolve().is_relative_to(self.root):
            raise OutputPathError(errno.EXDEV, f"lands outside the output folder {self.root}", str(path))

    def path(self, *parts: str) -> Path:
        """The path of an output file `root/part/part/.../name`, checked; creates nothing (`atomic_output`
        creates the missing folders when it writes), so it also serves to look up an existing output.

        Raises:
            OutputPathError: a part that is no plain name (`check_part`) or is too long; an existing folder
                component that is a symbolic link or a file; the file itself a symbolic link, a folder, a pipe
                or device; a path outside the root.
        """
        if not parts:
            raise TypeError("OutputRoot.path needs at least one part: the file name")
        names = self._names(parts)
        self._check_inside(self.root)
        folder = self.root
        for name in names[:-1]:
            folder = folder / name
            st = _lstat(folder)
            if st is None:  # nothing below a missing folder exists: nothing more to check
                break
            _require_folder(folder, st)
        else:
            _check_file_slot(folder / names[-1])
        path = self.root.joinpath(*names)
        self._check_inside(path.parent)
        return path

    def folder(self, *parts: str) -> Path:
        """The output folder `root/part/...`, checked as in `path` and created one component at a time when
        missing (for writers that take a folder: TensorBoard's SummaryWriter, a cache folder). No parts: the
        root.

        Raises:
            OutputPathError: as `path`, for each component; a full disk.
        """
        names = self._names(parts)
        self._check_inside(self.root)  # before any mkdir
        folder = self.root
        for name in names:
            folder = folder / name
            st = _lstat(folder)
            if st is None:
                try:
                    os.mkdir(folder)
                except FileExistsError:
                    pass  # made meanwhile (a parallel worker): checked just below
                except OSError as err:
                    converted = _as_output_error(err, folder, 0)
                    if converted is None:
                        raise
                    raise converted from None
                st = os.lstat(folder)
            _require_folder(folder, st)
        self._check_inside(folder)
        return folder
