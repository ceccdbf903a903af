"""Datasets and batches (minillm/training/data.py): the corpus that ships with minillm, downloads
(against a local HTTP server), caching, text loading, train/val split and batching. Nothing here
touches the network beyond 127.0.0.1."""
import functools
import hashlib
import os
import http.server
import socket
import threading

import numpy as np
import pytest

from minillm.training import data
from minillm.training.data import DownloadError, download, fetch, get_batch, load_text, split
from minillm.tokenizers import CharTokenizer

CONTENT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 200).encode()
CONTENT_SHA = hashlib.sha256(CONTENT).hexdigest()


# ----------------------------------------------------------------------------------------------
# A local HTTP server serving files from a temporary folder
# ----------------------------------------------------------------------------------------------

class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves files from the server's folder, records every request path, and on /truncated
    promises 1000 bytes but sends 10 (a connection that drops mid-download)."""

    def do_GET(self):
        self.server.requests.append(self.path)
        if self.path == "/truncated":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"0123456789")
            return
        super().do_GET()

    def log_message(self, format, *args):       # keep the test output quiet
        pass


@pytest.fixture
def server(tmp_path):
    """A ThreadingHTTPServer on 127.0.0.1 (free port) serving tmp_path/"served"."""
    root = tmp_path / "served"
    root.mkdir()
    (root / "corpus.txt").write_bytes(CONTENT)
    handler = functools.partial(_Handler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.requests = []
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01},
                              daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def closed_port_url():
    """A URL on 127.0.0.1 where nothing listens, so connecting fails at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/input.txt"


@pytest.fixture
def local_shakespeare(monkeypatch, tmp_path):
    """Point MINILLM_CACHE at an empty folder and return a function that registers a dataset
    'corpus' that is downloaded from a given url (with our small test content's size and
    checksum), as a corpus that does not ship with minillm is."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MINILLM_CACHE", str(cache))

    def register(url):
        ds = data.Dataset(name="corpus", title="Test corpus", url=url, filename="corpus.txt",
                          size=len(CONTENT), sha256=CONTENT_SHA)
        monkeypatch.setitem(data.DATASETS, "corpus", ds)
        return cache / ds.filename

    return register


# ----------------------------------------------------------------------------------------------
# download
# ----------------------------------------------------------------------------------------------

def test_download_with_right_checksum(server, tmp_path, capsys):
    dest = tmp_path / "out" / "corpus.txt"
    assert download(f"{server.url}/corpus.txt", dest, sha256=CONTENT_SHA) == dest
    assert dest.read_bytes() == CONTENT
    assert [p.name for p in dest.parent.iterdir()] == ["corpus.txt"]
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and "downloading" in err


def test_download_without_checksum_and_uppercase_checksum(server, tmp_path):
    assert download(f"{server.url}/corpus.txt", tmp_path / "a.txt").read_bytes() == CONTENT
    dest = download(f"{server.url}/corpus.txt", tmp_path / "b.txt", sha256=CONTENT_SHA.upper())
    assert dest.read_bytes() == CONTENT


def test_download_checksum_mismatch_leaves_nothing(server, tmp_path):
    out = tmp_path / "out"
    wrong = "0" * 64
    with pytest.raises(DownloadError) as info:
        download(f"{server.url}/corpus.txt", out / "corpus.txt", sha256=wrong)
    msg = str(info.value)
    assert f"expected sha256 {wrong}" in msg
    assert f"got {CONTENT_SHA}" in msg
    assert list(out.iterdir()) == []                 # neither dest nor a temp file


def test_download_checksum_mismatch_keeps_previous_file(server, tmp_path):
    dest = tmp_path / "corpus.txt"
    dest.write_bytes(b"old contents")
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download(f"{server.url}/corpus.txt", dest, sha256="f" * 64)
    assert dest.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir() if p.name != "served"] == ["corpus.txt"]


def test_download_404_is_a_clear_error(server, tmp_path):
    out = tmp_path / "out"
    url = f"{server.url}/missing.txt"
    with pytest.raises(DownloadError, match=r"could not download .*missing.txt: HTTP 404") as info:
        download(url, out / "missing.txt")
    assert url in str(info.value)
    assert list(out.iterdir()) == []


def test_download_connection_refused(closed_port_url, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(DownloadError, match="could not download http://127.0.0.1") as info:
        download(closed_port_url, out / "x.txt", timeout=5)
    assert isinstance(info.value, RuntimeError)
    assert "refused" in str(info.value).lower()
    assert list(out.iterdir()) == []


def test_download_truncated_response(server, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(DownloadError, match="closed after 10 of 1000 bytes"):
        download(f"{server.url}/truncated", out / "t.txt")
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("kwargs, problem", [
    ({"sha256": "abc"}, "64 hexadecimal"),
    ({"sha256": "z" * 64}, "64 hexadecimal"),
    ({"timeout": 0}, "timeout must be positive"),
])
def test_download_validates_arguments(tmp_path, kwargs, problem):
    with pytest.raises(ValueError, match=problem):
        download("http://127.0.0.1:9/x", tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------------------------
# cache_dir and fetch
# ----------------------------------------------------------------------------------------------

def test_cache_dir_uses_env_and_creates_it(monkeypatch, tmp_path):
    monkeypatch.setenv("MINILLM_CACHE", str(tmp_path / "a" / "b"))
    assert data.cache_dir() == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir()


def test_cache_dir_default_is_under_home(monkeypatch, tmp_path):
    monkeypatch.delenv("MINILLM_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data.cache_dir() == tmp_path / ".cache" / "minillm"
    assert (tmp_path / ".cache" / "minillm").is_dir()


def test_fetch_downloads_once_then_uses_cache(server, local_shakespeare):
    cached = local_shakespeare(f"{server.url}/corpus.txt")
    assert fetch("corpus") == cached
    assert cached.read_bytes() == CONTENT
    assert server.requests == ["/corpus.txt"]
    assert fetch("corpus") == cached
    assert server.requests == ["/corpus.txt"]         # the second call did not hit the server


def test_fetch_redownloads_a_corrupt_cache(server, local_shakespeare, capsys):
    cached = local_shakespeare(f"{server.url}/corpus.txt")
    fetch("corpus")
    # same size, one byte flipped: only the checksum can tell
    cached.write_bytes(b"X" + CONTENT[1:])
    capsys.readouterr()
    assert fetch("corpus") == cached
    assert cached.read_bytes() == CONTENT
    assert len(server.requests) == 2
    assert "corrupt" in capsys.readouterr().err


def test_fetch_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="unknown dataset 'wikitext'.*shakespeare"):
        fetch("wikitext")


# ----------------------------------------------------------------------------------------------
# load_text
# ----------------------------------------------------------------------------------------------

def test_load_text_default_is_the_shipped_shakespeare_without_network(monkeypatch, tmp_path):
    monkeypatch.setenv("MINILLM_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(data, "download", None)             # any download attempt would fail
    text, desc = load_text(None)
    assert (text, desc) == load_text("shakespeare")
    assert len(text) == 1_115_394 and text.startswith("First Citizen:")
    assert "shipped with minillm" in desc
    assert not (tmp_path / "empty-cache").exists()             # the cache was never touched


def test_python_docs_is_a_real_corpus_made_offline():
    text, desc = load_text("python-docs")
    assert len(text) > 300_000 and "lambda" in text and "\n\n" in text
    assert load_text("python-docs")[0] == text                 # deterministic (sorted keys)
    assert CharTokenizer.from_text(text).vocab_size > 60
    assert "help pages" in desc


def test_shipped_corpus_is_checked(monkeypatch, tmp_path):
    damaged = tmp_path / "tinyshakespeare.txt.gz"
    damaged.write_bytes(__import__("gzip").compress(b"First Citizen:\n"))
    monkeypatch.setattr(data, "EMBEDDED", tmp_path)
    with pytest.raises(ValueError, match="damaged.*reinstall"):
        load_text("shakespeare")


def test_load_text_name_raises_when_download_fails(local_shakespeare, closed_port_url):
    local_shakespeare(closed_port_url)
    with pytest.raises(DownloadError, match="could not download"):
        load_text("corpus")


def test_load_text_uses_a_good_cache_without_network(local_shakespeare, closed_port_url):
    cached = local_shakespeare(closed_port_url)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(CONTENT)
    text, desc = load_text("corpus")
    assert text == CONTENT.decode()
    assert "Test corpus" in desc


def test_load_text_named_dataset(server, local_shakespeare):
    local_shakespeare(f"{server.url}/corpus.txt")
    text, desc = load_text("corpus")
    assert text == CONTENT.decode()
    assert "Test corpus" in desc and f"{len(text):,}" in desc


def test_load_text_local_file(tmp_path):
    path = tmp_path / "poem.txt"
    path.write_bytes("Ode to a café\r\nwith ünïcode\n".encode("utf-8"))
    text, desc = load_text(str(path))
    assert text == "Ode to a café\r\nwith ünïcode\n"           # bytes kept exactly, \r\n too
    assert str(path) in desc


def test_load_text_missing_file_names_it_and_the_datasets(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist") as info:
        load_text(str(tmp_path / "nope.txt"))
    assert "nope.txt" in str(info.value)
    with pytest.raises(FileNotFoundError, match=r"'shakespear' is not a known dataset "
                                                r"\(python-docs, shakespeare\).*does not exist"):
        load_text("shakespear")


def test_load_text_rejects_undecodable_file(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("abc café".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.txt is not valid UTF-8.*byte offset 7"):
        load_text(str(path))


def test_load_text_rejects_empty_file_and_directory(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.txt is empty"):
        load_text(str(path))
    with pytest.raises(IsADirectoryError, match="is a directory"):
        load_text(str(tmp_path))


# ----------------------------------------------------------------------------------------------
# split and get_batch
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, frac, n_train", [(1000, 0.9, 900), (10, 0.9, 9), (1001, 0.9, 900),
                                              (100, 0.5, 50)])
def test_split_proportions(n, frac, n_train):
    arr = np.arange(n)
    train, val = split(arr, frac)
    assert len(train) == n_train and len(val) == n - n_train
    np.testing.assert_array_equal(np.concatenate([train, val]), arr)   # in order, nothing lost


def test_split_works_on_strings_and_default_frac():
    train, val = split("abcdefghij")
    assert (train, val) == ("abcdefghi", "j")


@pytest.mark.parametrize("n, frac", [(10, 0.0), (10, 1.0), (10, -0.5), (5, 0.1), (1, 0.9)])
def test_split_rejects_bad_fractions_and_empty_parts(n, frac):
    with pytest.raises(ValueError):
        split(np.arange(n), frac)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint16])
@pytest.mark.parametrize("B, T", [(1, 1), (4, 8), (32, 16)])
def test_get_batch_shapes_dtype_and_shift(dtype, B, T):
    tokens = np.arange(200).astype(dtype)
    x, y = get_batch(tokens, T, B, np.random.default_rng(0))
    assert x.shape == y.shape == (B, T)
    assert x.dtype == y.dtype == np.int64
    np.testing.assert_array_equal(y[:, :-1], x[:, 1:])
    np.testing.assert_array_equal(y, x + 1)          # consecutive tokens, since data is arange
    assert x.min() >= 0 and y.max() <= 199


def test_get_batch_on_real_tokens_is_shifted_by_one():
    tok = CharTokenizer.from_text(CONTENT.decode())
    tokens = tok.encode_array(CONTENT.decode())
    x, y = get_batch(tokens, 16, 8, np.random.default_rng(1))
    windows = np.lib.stride_tricks.sliding_window_view(tokens, 17)      # (N - 16, 17)
    for b in range(8):                      # each (x, y) row pair is some window of the data
        match = (windows[:, :-1] == x[b]).all(axis=1) & (windows[:, 1:] == y[b]).all(axis=1)
        assert match.any()


def test_get_batch_is_deterministic_given_the_seed():
    tokens = np.arange(1000)
    x1, y1 = get_batch(tokens, 8, 16, np.random.default_rng(42))
    x2, y2 = get_batch(tokens, 8, 16, np.random.default_rng(42))
    x3, _ = get_batch(tokens, 8, 16, np.random.default_rng(43))
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(x1, x3)


def test_get_batch_uses_every_window_including_the_last():
    tokens = np.arange(10)
    x, y = get_batch(tokens, 9, 50, np.random.default_rng(0))   # only 1 window fits
    assert (x[:, 0] == 0).all() and (y[:, -1] == 9).all()
    x, _ = get_batch(tokens, 5, 500, np.random.default_rng(0))  # starts 0..4, all reachable
    assert set(x[:, 0].tolist()) == {0, 1, 2, 3, 4}


def test_get_batch_data_too_short_names_the_lengths():
    with pytest.raises(ValueError, match=r"data has 8 tokens, but block_size=8 needs at least 9"):
        get_batch(np.arange(8), 8, 2, np.random.default_rng(0))


@pytest.mark.parametrize("args, error", [
    ((np.zeros((2, 5), dtype=np.int64), 2, 2), ValueError),
    ((np.zeros(10), 2, 2), TypeError),
    ((np.arange(10), 0, 2), ValueError),
    ((np.arange(10), 2, 0), ValueError),
    ((np.arange(10), 2.5, 2), ValueError),
])
def test_get_batch_rejects_bad_arguments(args, error):
    with pytest.raises(error):
        get_batch(*args, np.random.default_rng(0))


def test_get_batch_requires_a_generator():
    with pytest.raises(TypeError, match="default_rng"):
        get_batch(np.arange(10), 2, 2, 0)


# ----------------------------------------------------------------------------------------------
# The real Tiny Shakespeare, when a local copy is available
# ----------------------------------------------------------------------------------------------

def test_shakespeare_matches_registry_and_has_65_chars(shakespeare, shared_data):
    ds = data.DATASETS["shakespeare"]
    raw = shakespeare.encode("utf-8")
    assert len(raw) == ds.size == 1_115_394
    assert hashlib.sha256(raw).hexdigest() == ds.sha256
    shared = shared_data / "tinyshakespeare.txt"
    if shared.is_file():                                   # the copy beside the checkout, too
        assert shared.read_bytes() == raw
    tok = CharTokenizer.from_text(shakespeare)
    assert tok.vocab_size == 65
    ids = tok.encode_array(shakespeare)
    assert tok.decode(ids) == shakespeare
    train, val = split(ids)
    assert len(train) == 1_003_854 and len(val) == 111_540      # nanoGPT's shakespeare_char


# ---------------------------------------------------------------- files that are not text files
@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null", "/dev/urandom"])
def test_a_device_is_refused_without_reading_it(device):
    if not os.path.exists(device):
        pytest.skip(f"no {device} here")
    with pytest.raises(ValueError, match=f"{device} is not a regular file"):
        load_text(device)


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)                                 # opening it to read would wait for a writer
    with pytest.raises(ValueError, match="pipe is not a regular file"):
        load_text(str(fifo))


def test_a_text_larger_than_the_cap_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "big.txt"
    path.write_text("a" * 101, encoding="utf-8")
    monkeypatch.setattr(data, "MAX_TEXT_BYTES", 100)
    with pytest.raises(ValueError, match="big.txt is larger than 100 bytes"):
        load_text(str(path))
    monkeypatch.setattr(data, "MAX_TEXT_BYTES", 101)
    assert load_text(str(path))[0] == "a" * 101
