"""Time byte-level BPE on Tiny Shakespeare: training, encoding speed, compression.

    python benchmarks/bench_bpe.py                      # the shared copy of the corpus
    python benchmarks/bench_bpe.py path/to/text.txt --vocab-size 2000
    python benchmarks/bench_bpe.py --pattern none       # no pre-tokenization (slower)

Prints the training time, the encoding throughput in MB of UTF-8 per second,
and the compression ratio (bytes per token).
"""

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from minillm.tokenizers.bpe import BPETokenizer  # noqa: E402

DEFAULT_TEXT = REPO / ".." / "shared" / "data" / "tinyshakespeare.txt"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default=str(DEFAULT_TEXT), help="UTF-8 text file")
    parser.add_argument("--vocab-size", type=int, default=1000)
    parser.add_argument("--pattern", default="gpt2", help="'gpt2' (default) or 'none'")
    args = parser.parse_args(argv)

    path = Path(args.path)
    if not path.is_file():
        parser.error(f"{path} does not exist")
    text = path.read_text(encoding="utf-8")
    n_bytes = len(text.encode("utf-8"))
    pattern = None if args.pattern.lower() == "none" else args.pattern

    start = time.perf_counter()
    tok = BPETokenizer.train(text, args.vocab_size, pattern=pattern, special_tokens=["<|endoftext|>"])
    train_s = time.perf_counter() - start

    start = time.perf_counter()
    ids = tok.encode(text)  # a new tokenizer: its chunk cache starts empty
    encode_s = time.perf_counter() - start
    if tok.decode(ids) != text:
        raise SystemExit("round trip failed: decode(encode(text)) != text")

    print(f"text        {path.resolve()} ({n_bytes / 1e6:.2f} MB)")
    print(f"pattern     {args.pattern}")
    print(f"train       {train_s:.2f} s for {tok.vocab_size} tokens ({len(tok.merges)} merges)")
    print(f"encode      {encode_s:.2f} s = {n_bytes / 1e6 / encode_s:.2f} MB/s (empty cache)")
    print(f"compression {n_bytes / len(ids):.2f} bytes per token ({len(ids):,} tokens)")


if __name__ == "__main__":
    main()
