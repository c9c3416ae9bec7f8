"""The compiled World encoder: ``pyrwkv-tokenizer`` (Rust, greedy longest match over UTF-8 bytes).

:class:`~docstream.tokenizer.world.WorldTokenizer` uses it for ``encode`` when it applies, and its
own Python trie otherwise. It applies only to a vocabulary file whose bytes are one of the copies of
the World vocabulary listed in :data:`WORLD_VOCAB_SHA256`: the package reads the file with its own
parser (a regex plus an unescaper, no validation), and only for these files have its ids been shown
identical to the Python trie's (``tests/tokenizer/test_world_fast.py``). The package's ``decode``
panics on token sequences that are not whole UTF-8, so decoding always stays in Python.

The package holds the GIL while it encodes (its methods do not release it), so a background thread
that encodes blocks other Python threads for the length of one call. The pipeline encodes pieces of
at most ``MAX_PIECE_CHARS`` characters (``docstream.corpus.documents``), a few milliseconds each.
"""

from __future__ import annotations

from pathlib import Path

BACKENDS = ("auto", "rust", "python")

#: sha256 of the vocabulary files the compiled encoder is known to read exactly as docstream does
WORLD_VOCAB_SHA256 = {
    "8324476023347dec2964625ccb2075c864d250a9c6d9a74f36daba628de8c008":
        "rwkv_vocab_v20230424.txt with CRLF line ends (docstream's bundled copy and the 'rwkv' package's)",
    "e6dee3d4e31b4d5c40ac99508ac6c701ceef4bed681bf2167ce9a908552bca89":
        "rwkv_vocab_v20230424.txt with LF line ends (the copy inside 'pyrwkv-tokenizer')",
}

_INSTALL = "pip install pyrwkv-tokenizer (wheels for CPython 3.11-3.13 on Linux, macOS and Windows)"


class CompiledWorldEncoder:
    """``encode(text)``: the token ids of a ``str`` from ``pyrwkv_tokenizer.WorldTokenizer``.

    Raises ``UnicodeEncodeError`` for a string with lone surrogates, like ``str.encode``.
    """

    def __init__(self, file: Path) -> None:
        import pyrwkv_tokenizer

        self._file = file
        self.encode = pyrwkv_tokenizer.WorldTokenizer(str(file)).encode

    def __reduce__(self) -> tuple[type, tuple[Path]]:
        # The compiled object does not pickle; a copy loads the file again.
        return CompiledWorldEncoder, (self._file,)


def load_compiled_encoder(file: Path, fingerprint: str, backend: str) -> CompiledWorldEncoder | None:
    """The compiled encoder for the vocabulary ``file`` (sha256 ``fingerprint``), or ``None`` to use
    the Python trie.

    ``backend``: ``"auto"`` uses the compiled encoder when the package is installed and the file is a
    known World vocabulary, ``"rust"`` demands it, ``"python"`` never uses it.

    Raises:
        ValueError: ``backend`` is not one of ``BACKENDS``, or is ``"rust"`` for a file that is not a
            known copy of the World vocabulary.
        ImportError: ``backend`` is ``"rust"`` and ``pyrwkv-tokenizer`` is not installed.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown tokenizer backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "python":
        return None
    if fingerprint not in WORLD_VOCAB_SHA256:
        if backend == "rust":
            raise ValueError(
                f"backend='rust' needs the RWKV World vocabulary rwkv_vocab_v20230424.txt, but {str(file)!r} "
                f"(sha256 {fingerprint[:12]}...) is another file; use backend='auto' or 'python' for it"
            )
        return None
    try:
        return CompiledWorldEncoder(file)
    except ImportError as err:
        if backend == "rust":
            raise ImportError(f"backend='rust' needs the 'pyrwkv-tokenizer' package: {_INSTALL}") from err
        return None
