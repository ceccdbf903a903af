"""What every test file shares: a seeded generator, the data folder beside the checkout, and the
PyTorch reference model (``reference/torch_gpt.py``) on the import path."""
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"      # beside the checkout, in CI and development
sys.path.insert(0, str(ROOT / "reference"))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def shared_data():
    """The data folder beside the checkout (it may be absent outside CI)."""
    return SHARED_DATA


@pytest.fixture(scope="session")
def gpt2_dir():
    """OpenAI GPT-2's vocab.json + merges.txt: $MINILLM_GPT2_DIR, else ../shared/data/gpt2-tokenizer
    beside the checkout. Skipped when neither exists, except in CI, where it must be there."""
    folder = Path(os.environ.get("MINILLM_GPT2_DIR") or SHARED_DATA / "gpt2-tokenizer")
    if not (folder / "vocab.json").is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI: no GPT-2 tokenizer files at {folder}")
        pytest.skip(f"no GPT-2 tokenizer files at {folder} (set MINILLM_GPT2_DIR)")
    return folder


@pytest.fixture(scope="session")
def shakespeare():
    """Tiny Shakespeare, the copy that ships with minillm."""
    from minillm.training.data import load_text
    return load_text("shakespeare")[0]


CHARS = "\n !',.:?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@pytest.fixture(scope="session")
def char_base(tmp_path_factory):
    """A small untrained character model saved as a minillm run folder (letters, space, newline,
    some punctuation; context 48), for the fine-tuning tests."""
    from minillm import GPT, GPTConfig, CharTokenizer
    from minillm.formats.checkpoint import save_checkpoint
    folder = tmp_path_factory.mktemp("char-base")
    tokenizer = CharTokenizer(CHARS)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=48, n_layer=2, n_head=2,
                       n_embd=32)
    save_checkpoint(folder, GPT(config, seed=0), tokenizer, state={})
    return folder
