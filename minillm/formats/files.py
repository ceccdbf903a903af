"""Reading JSON with clear errors, and writing files so that a reader (or a crash) never sees
half of one.

Writing: the data goes to a uniquely named temporary file in the destination's folder; only when
it is complete does ``os.replace`` swap it in, in one step. A failure removes the temporary file and
leaves any earlier file untouched. The file gets ordinary permissions (umask), unlike
``tempfile.mkstemp``'s private 0600.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "hello.txt"
>>> atomic_write_text(path, "hi\\n")
>>> path.read_text()
'hi\\n'
"""
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_open(path, mode="w", fsync=False, **kwargs):
    """``with atomic_open(path, "wb") as f: ...`` writes ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, mode.replace("w", "x"), **kwargs) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
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
