"""Atomic writes, JSON reading and run-folder locks (minillm/formats/files.py): a failed write
leaves the old file and no temporary file behind; errors name the file; a folder held by a
running process is refused, one held by a killed process is not."""
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minillm.formats.files import (FolderInUse, atomic_open, atomic_write_text, lock_folder,
                                   read_json, remove_temporary_files)

ROOT = Path(__file__).resolve().parents[1]


def test_atomic_write_replaces_the_file_in_one_step(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    atomic_write_text(path, "first\n")
    atomic_write_text(path, "second\n")
    assert path.read_text() == "second\n"
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_open(path, "wb") as f:
            f.write(b"half of the new")
            raise RuntimeError("disk full")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_read_json_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file .*nope.json does not exist"):
        read_json(tmp_path / "nope.json", "config file")
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        read_json(bad)
    bad.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(ValueError, match="bad.json is not UTF-8"):
        read_json(bad)
    good = tmp_path / "good.json"
    good.write_text('{"a": [1, 2]}')
    assert read_json(good) == {"a": [1, 2]}


# ---------------------------------------------------------------- errors name the file
def test_a_failing_write_names_the_file_and_what_was_done(tmp_path, monkeypatch):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    with pytest.raises(OSError) as e:
        with atomic_open(path, "wb") as f:
            f.write(b"new")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert e.value.errno == errno.ENOSPC
    assert str(e.value).endswith(f"writing {path}: No space left on device")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.bin"]
    with pytest.raises(NotADirectoryError, match=f"cannot create {path}/b.txt: {path} is a file"):
        atomic_write_text(path / "b.txt", "x")                  # a file where a folder should be


# ---------------------------------------------------------------- one run per folder
HOLD = """
import sys, time
from minillm.formats.files import lock_folder
with lock_folder(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def hold_in_another_process(folder):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_folder_is_refused_naming_it_and_the_process(tmp_path):
    proc = hold_in_another_process(tmp_path / "run")
    try:
        with pytest.raises(FolderInUse) as e:
            with lock_folder(tmp_path / "run"):
                pass
        assert str(e.value) == (f"{tmp_path / 'run'} is in use by another minillm run (process "
                                f"{proc.pid}); wait for it to finish (or stop it), or give "
                                "another folder")
    finally:
        proc.kill()
        proc.wait()
    with lock_folder(tmp_path / "run"):         # a killed holder does not block the next run
        assert (tmp_path / "run" / ".lock").read_text().strip() == str(os.getpid())
    assert not (tmp_path / "run" / ".lock").exists()


def test_lock_creates_and_removes_the_folder_and_nests_in_one_process(tmp_path):
    folder = tmp_path / "new"
    with lock_folder(folder):
        with lock_folder(folder):               # the command line holds it around train()
            assert folder.is_dir()
    assert not folder.exists()                  # nothing was saved: no empty folder left
    folder.mkdir()
    with lock_folder(folder):
        (folder / "kept.txt").write_text("x")
    assert os.listdir(folder) == ["kept.txt"]
    with pytest.raises(FileExistsError, match="kept.txt is a file, not a folder"):
        with lock_folder(folder / "kept.txt"):
            pass


def test_temporary_files_are_removed_when_the_folder_is_taken(tmp_path):
    stray = tmp_path / f".checkpoint.safetensors.{'0f' * 16}.tmp"
    stray.write_bytes(b"half")
    others = [".hidden", "x.tmp", ".a.b.tmp", "checkpoint.safetensors"]
    for name in others:
        (tmp_path / name).write_text("mine")
    assert remove_temporary_files(tmp_path) == [stray.name]
    assert sorted(os.listdir(tmp_path)) == sorted(others)
