"""Time byte-level BPE on Tiny Shakespeare: training, encoding speed, compression.

    python benchmarks/bench_bpe.py                      # Tiny Shakespeare (ships with minillm)
    python benchmarks/bench_bpe.py path/to/text.txt --vocab-size 2000
    python benchmarks/bench_bpe.py --pattern none       # no pre-tokenization (slower)

Prints the training time, the encoding throughput in MB of UTF-8 per second, the compression
ratio (bytes per token), and the readable trainer (bpe_basic.train, a full recount per merge)
against the incremental one on the same slice of text: the same merges, and how much faster.
"""

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from minillm.tokenizers import bpe_basic  # noqa: E402
from minillm.tokenizers.bpe import BPETokenizer  # noqa: E402
from minillm.tokenizers.gpt2_files import compile_pattern  # noqa: E402
from minillm.training.data import load_text  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default=None, help="UTF-8 text file")
    parser.add_argument("--vocab-size", type=int, default=1000)
    parser.add_argument("--pattern", default="gpt2", help="'gpt2' (default) or 'none'")
    args = parser.parse_args(argv)

    text, description = load_text(args.path)
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

    print(f"text        {description} ({n_bytes / 1e6:.2f} MB)")
    print(f"pattern     {args.pattern}")
    print(f"train       {train_s:.2f} s for {tok.vocab_size} tokens ({len(tok.merges)} merges)")
    print(f"encode      {encode_s:.2f} s = {n_bytes / 1e6 / encode_s:.2f} MB/s (empty cache)")
    print(f"compression {n_bytes / len(ids):.2f} bytes per token ({len(ids):,} tokens)")

    piece, n_tokens = text[:50_000], 256 + 100
    regex = compile_pattern(pattern)
    chunks = [list(c.encode("utf-8")) for c in (regex.findall(piece) if regex else [piece])]
    start = time.perf_counter()
    fast = BPETokenizer.train(piece, n_tokens, pattern=pattern).merges
    fast_s = time.perf_counter() - start
    start = time.perf_counter()
    readable = bpe_basic.train(chunks, n_tokens)
    readable_s = time.perf_counter() - start
    same = "the same merges" if readable == fast else "DIFFERENT merges"
    print(f"readable    bpe_basic.train {readable_s:.2f} s vs incremental {fast_s:.3f} s for 100 "
          f"merges on the first 50,000 characters: {same}, {readable_s / fast_s:.0f}x faster")


if __name__ == "__main__":
    main()
