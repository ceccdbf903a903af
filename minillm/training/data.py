"""Getting text, and cutting it into training batches.

Three steps take a corpus to the model's input:

1. ``load_text(source)`` returns the text of a named dataset or of a local file (with a
   description). Tiny Shakespeare ships inside minillm (``minillm/datasets/``, compressed), so
   the default run needs no network; a dataset that does not ship is downloaded once into a
   cache folder and checked against its SHA-256, so every run trains on exactly the same bytes.
2. A tokenizer turns the text into a 1-D array of token ids, and ``split`` keeps the first 90%
   for training and the last 10% for validation.
3. ``get_batch`` picks B random windows of T + 1 consecutive tokens. The first T are the input
   ``x``, the last T the targets ``y``: at every position the model learns to predict the next
   token, so one window gives T training examples at once.

        data = [5, 1, 4, 1, 5, 9, 2, 6]   offset 2, T = 4:   x = [4, 1, 5, 9]
                                                             y = [1, 5, 9, 2]

Downloads are written to a temporary file in the destination folder and renamed into place
only once complete and verified, so a failed or corrupted download never leaves a partial file.
"""
import gzip
import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..formats.files import atomic_open, os_error

EMBEDDED = Path(__file__).resolve().parents[1] / "datasets"   # the corpora that ship with minillm


@dataclass(frozen=True)
class Dataset:
    """A named text corpus, from one of three places: shipped with minillm (``embedded``, a file
    in minillm/datasets/, gzip'ed if it ends in .gz), downloaded once from ``url`` into the cache
    as ``filename``, or made by a function (``read``) from what every Python has. ``size``
    (bytes) and ``sha256`` are those of the text itself, checked for the first two."""
    name: str
    title: str
    url: str = None
    filename: str = None
    size: int = None
    sha256: str = None
    embedded: str = None
    read: object = None


def python_docs_text():
    """The help pages of ``help("topic")`` (``pydoc_data.topics``), joined in sorted-key order
    with blank lines: English prose with Python code examples, about 465,000 characters on
    CPython 3.11. It ships with every CPython, so it is a second corpus that needs no download
    (fine-tuning the Shakespeare model on it shows forgetting)."""
    try:
        from pydoc_data.topics import topics
    except ImportError as e:          # some stripped-down Python builds leave pydoc_data out
        raise ValueError("this Python has no pydoc_data module, so no python-docs text") from e
    return "\n\n".join(topics[key] for key in sorted(topics))


DATASETS = {
    "shakespeare": Dataset(
        name="shakespeare",
        title="Tiny Shakespeare",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/"
            "input.txt",
        filename="tinyshakespeare.txt",
        size=1_115_394,
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        embedded="tinyshakespeare.txt.gz",
    ),
    "python-docs": Dataset(
        name="python-docs",
        title="Python's help pages (pydoc_data.topics)",
        read=python_docs_text,
    ),
}


class DownloadError(RuntimeError):
    """A download failed (network error, HTTP error, truncated or corrupted data)."""


# ----------------------------------------------------------------------------------------------
# Downloading and caching
# ----------------------------------------------------------------------------------------------

def cache_dir():
    """The folder for downloaded datasets: ``$MINILLM_CACHE`` if set, else ~/.cache/minillm."""
    env = os.environ.get("MINILLM_CACHE")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "minillm"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_of(path):
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url, dest, sha256=None, timeout=30.0):
    """Download ``url`` to ``dest`` and return ``dest`` as a Path.

    The bytes go to a temporary file next to ``dest``; only when the download is complete (and
    matches ``sha256``, if given) is it renamed to ``dest``. Any failure removes the temporary
    file and raises DownloadError naming the url and the cause.

    Example: ``download("https://example.com/a.txt", "data/a.txt", sha256="9f86...")``.
    """
    dest = Path(dest)
    if sha256 is not None:
        sha256 = sha256.lower()
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"sha256 must be 64 hexadecimal digits, got {sha256!r}")
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"downloading {url} to {dest}", file=sys.stderr)

    with atomic_open(dest, "wb") as out:
        h = hashlib.sha256()
        received = 0
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                expected_size = resp.headers.get("Content-Length")
                for chunk in iter(lambda: resp.read(1 << 16), b""):
                    out.write(chunk)
                    h.update(chunk)
                    received += len(chunk)
        except urllib.error.HTTPError as e:
            raise DownloadError(f"could not download {url}: HTTP {e.code} {e.reason}") from e
        except urllib.error.URLError as e:
            raise DownloadError(f"could not download {url}: {e.reason}") from e
        except (OSError, http.client.HTTPException) as e:       # timeouts, resets, bad replies
            raise DownloadError(f"could not download {url}: {type(e).__name__}: {e}") from e
        # urllib does not complain when the connection closes early, so compare sizes ourselves.
        if expected_size is not None and received != int(expected_size):
            raise DownloadError(f"could not download {url}: the connection closed after "
                                f"{received} of {expected_size} bytes")
        got = h.hexdigest()
        if sha256 is not None and got != sha256:
            raise DownloadError(f"checksum mismatch for {url}: expected sha256 {sha256}, "
                                f"got {got} ({received} bytes); the download was discarded")
    return dest


def get_dataset(name):
    """The registered Dataset called ``name``; ValueError listing the known names otherwise."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def fetch(name):
    """Path to the verified local copy of a dataset that does not ship with minillm,
    downloading it only when needed.

    A cached file with the right size and checksum is used as is; a corrupted one is
    downloaded again (with a note on stderr).
    """
    ds = get_dataset(name)
    path = cache_dir() / ds.filename
    if path.is_file():
        size = path.stat().st_size
        if size == ds.size and sha256_of(path) == ds.sha256:
            return path
        print(f"cached {path} is corrupt ({size} bytes, checksum does not match); "
              f"downloading it again", file=sys.stderr)
    return download(ds.url, path, sha256=ds.sha256)


def read_embedded(ds):
    """The text of a dataset that ships with minillm, checked against its size and sha256."""
    path = EMBEDDED / ds.embedded
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    if len(raw) != ds.size or hashlib.sha256(raw).hexdigest() != ds.sha256:
        raise ValueError(f"{path} is damaged (its text does not match the checksum of "
                         f"{ds.title}); reinstall minillm")
    return raw.decode("utf-8")


# ----------------------------------------------------------------------------------------------
# Loading text
# ----------------------------------------------------------------------------------------------

MAX_TEXT_BYTES = 1 << 30      # 1 GiB: the ids of a text take 8 bytes a token on top of it


def read_text_file(path):
    """The contents of a UTF-8 text file; errors name the file (and the bad byte offset).

    Only a regular file is read (a device such as /dev/zero, a FIFO or a socket could block or
    never end), and at most MAX_TEXT_BYTES of it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} is not a regular file (a device, a FIFO or a socket?); give a "
                         "UTF-8 text file")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_TEXT_BYTES + 1)
    except OSError as e:
        raise os_error(e, "reading", path) from None
    if len(raw) > MAX_TEXT_BYTES:
        raise ValueError(f"{path} is larger than {MAX_TEXT_BYTES:,} bytes, the most minillm "
                         "reads; give a part of it")
    if not raw:
        raise ValueError(f"{path} is empty; there is nothing to train on")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not valid UTF-8: {e.reason} at byte offset "
                         f"{e.start}") from None


def load_text(source=None):
    """(text, description) for ``source``.

    source: None or a dataset name -> that dataset (default: Tiny Shakespeare, which ships with
                                      minillm); download errors are raised, never papered over
            anything else            -> a path to a local UTF-8 text file

    >>> text, description = load_text()
    >>> len(text), description
    (1115394, 'Tiny Shakespeare (1,115,394 characters, shipped with minillm)')
    """
    source = "shakespeare" if source is None else source
    if source in DATASETS:
        ds = DATASETS[source]
        if ds.read is not None:
            text, where = ds.read(), "made from this Python's own files"
        elif ds.embedded:
            text, where = read_embedded(ds), "shipped with minillm"
        else:
            path = fetch(source)
            text, where = read_text_file(path), str(path)
        return text, f"{ds.title} ({len(text):,} characters, {where})"
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{source!r} is not a known dataset "
                                f"({', '.join(sorted(DATASETS))}) and the file {path} does not "
                                "exist")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; expected a UTF-8 text file")
    text = read_text_file(path)
    return text, f"{path} ({len(text):,} characters)"


# ----------------------------------------------------------------------------------------------
# Train/validation split and batches
# ----------------------------------------------------------------------------------------------

def split(data, frac=0.9):
    """(train, val): the first ``frac`` of ``data`` and the rest, in order (not shuffled).

    Keeping the validation text at the end means it is text the model never saw, not sentences
    interleaved with the training ones. Works for arrays, lists and strings.

    >>> split(np.arange(10))
    (array([0, 1, 2, 3, 4, 5, 6, 7, 8]), array([9]))
    """
    if not 0 < frac < 1:
        raise ValueError(f"frac must be strictly between 0 and 1, got {frac}")
    n = int(frac * len(data))
    if n == 0 or n == len(data):
        raise ValueError(f"splitting {len(data)} items at frac={frac} leaves an empty part; "
                         f"use more data or a different frac")
    return data[:n], data[n:]


def get_batch(data, block_size, batch_size, rng):
    """A random batch of inputs x and next-token targets y.

    data: 1-D int array of token ids (N,); rng: np.random.Generator
    -> x, y: int64 arrays (B, T) with B = batch_size, T = block_size and
       y[b, t] = x[b, t + 1] for t < T - 1 (y is x shifted left by one token).

    >>> x, y = get_batch(np.arange(100), 8, 4, np.random.default_rng(0))
    >>> x.shape, y.dtype.name, bool((y == x + 1).all())
    ((4, 8), 'int64', True)
    """
    data = np.asarray(data)
    if data.ndim != 1:
        raise ValueError(f"data must be a 1-D array of token ids, got shape {data.shape}")
    if data.dtype.kind not in "iu":
        raise TypeError(f"data must hold integer token ids, got dtype {data.dtype}")
    for name, value in (("block_size", block_size), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a np.random.Generator such as np.random.default_rng(seed), "
                        f"got {type(rng).__name__}")
    N, T = len(data), block_size
    if N < T + 1:
        raise ValueError(f"data has {N} tokens, but block_size={T} needs at least {T + 1} "
                         f"(one window of T inputs plus the token after it)")
    ix = rng.integers(0, N - T, size=batch_size)       # (B,) window starts; ix + T <= N - 1
    rows = ix[:, None] + np.arange(T)                   # (B, T) positions of the inputs
    x = data[rows].astype(np.int64)                     # (B, T)
    y = data[rows + 1].astype(np.int64)                 # (B, T) the token after each input
    return x, y
