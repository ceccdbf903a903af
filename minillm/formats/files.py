"""Reading JSON with clear errors, writing files so that a reader (or a crash) never sees half of
one, and holding a run folder so that two runs never write into the same one.

Writing: the data goes to a uniquely named temporary file ``.NAME.UUID.tmp`` in the destination's
folder; only when it is complete does ``os.replace`` swap it in, in one step. A failure removes the
temporary file and leaves any earlier file untouched; a process killed mid-write leaves its
temporary file, which ``lock_folder`` removes when the next run starts in that folder. The file
gets ordinary permissions (umask), unlike ``tempfile.mkstemp``'s private 0600. An OS error (disk
full, permission denied) names the file and what was being done to it.

One run per folder: ``with lock_folder(out_dir): ...`` holds an exclusive ``flock`` on
``out_dir/.lock`` (which holds the process id, for the message a second run gets). The kernel
releases the lock when the process ends, however it ends, so a killed run never blocks the next.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "hello.txt"
>>> atomic_write_text(path, "hi\\n")
>>> path.read_text()
'hi\\n'
"""
import errno
import json
import os
import re
import uuid
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:                  # not a POSIX system: folders are not locked
    fcntl = None

TEMPORARY = re.compile(r"\..+\.[0-9a-f]{32}\.tmp")      # what atomic_open writes first
LOCK = ".lock"


def os_error(error, doing, path):
    """The OSError ``error`` again (same class and errno), its message saying what was being
    done to which file: ``os_error(e, "writing", path)`` -> "writing out/a.bin: No space left on
    device"."""
    if error.errno is None:
        return error
    return type(error)(error.errno, f"{doing} {path}: {error.strerror}")


@contextmanager
def atomic_open(path, mode="w", fsync=False, **kwargs):
    """``with atomic_open(path, "wb") as f: ...`` writes ``path`` atomically."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            f = open(tmp, mode.replace("w", "x"), **kwargs)
        except (FileExistsError, NotADirectoryError):
            file = next(p for p in path.parents if p.exists())      # a file where a folder goes
            raise NotADirectoryError(errno.ENOTDIR, f"cannot create {path}: {file} is a file, "
                                     "not a folder") from None
        except OSError as e:
            raise os_error(e, "creating", path) from None
        with f:
            try:
                yield f
                if fsync:
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as e:
                raise os_error(e, "writing", path) from None
        try:
            os.replace(tmp, path)
        except OSError as e:
            raise os_error(e, "replacing", path) from None
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise


def atomic_write_text(path, text):
    """Write a UTF-8 text file atomically (newlines written as they are)."""
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def read_json(path, what="file"):
    """Parse a UTF-8 JSON file; a missing or malformed one raises an error naming it.

    ``what`` names the file in the messages, e.g. "tokenizer file" or "vocabulary file"."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text: {e.reason} at byte offset {e.start}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


# ----------------------------------------------------------------------------------------------
# One run per folder
# ----------------------------------------------------------------------------------------------

class FolderInUse(OSError):
    """Another process holds the folder (``lock_folder``)."""


_held = set()                         # folders this process holds (resolved paths)


def _take(path, folder):
    """Open ``path``, lock it (exclusive, without waiting), write our pid: the descriptor."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise os_error(e, "opening the lock file", path) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            holder = f"process {pid}" if pid.isdigit() else "another process"
            raise FolderInUse(f"{folder} is in use by another minillm run ({holder}); wait for "
                              "it to finish (or stop it), or give another folder") from None
        except OSError as e:
            os.close(fd)
            raise os_error(e, "locking", path) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:             # not a lock file the previous holder had just removed: ours
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
            return fd
        os.close(fd)


def remove_temporary_files(folder):
    """Delete the temporary files (``.NAME.UUID.tmp``) interrupted writes left in ``folder``;
    return their names. Only safe while holding the folder (no write of ours is under way)."""
    names = sorted(name for name in os.listdir(folder) if TEMPORARY.fullmatch(name))
    for name in names:
        (Path(folder) / name).unlink(missing_ok=True)
    return names


@contextmanager
def lock_folder(folder):
    """``with lock_folder(out_dir):`` the folder is this process's alone; FolderInUse (naming
    the folder and the other process) if another process holds it.

    Creates the folder if needed (and removes it again if it is still empty at the end), removes
    temporary files left by interrupted writes, and can be nested within one process."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} is a file, not a folder")
    key = folder.resolve()
    if key in _held or fcntl is None:
        yield folder
        return
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise os_error(e, "creating the folder", folder) from None
    path = folder / LOCK
    try:
        fd = _take(path, folder)
    except BaseException:
        _remove_if_empty(folder, created)
        raise
    _held.add(key)
    try:
        remove_temporary_files(folder)
        yield folder
    finally:
        _held.discard(key)
        path.unlink(missing_ok=True)          # (a run that opened it meanwhile tries again)
        os.close(fd)
        _remove_if_empty(folder, created)     # nothing was saved: leave no empty folder


def _remove_if_empty(folder, created):
    if created:
        try:
            folder.rmdir()
        except OSError:
            pass
