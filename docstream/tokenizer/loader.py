"""Pick and load the right tokenizer for a vocabulary file."""

from __future__ import annotations

from pathlib import Path

from docstream.tokenizer.base import Tokenizer
from docstream.tokenizer.hf import HFTokenizer
from docstream.tokenizer.world import WorldTokenizer, looks_like_world_vocab

_SUPPORTED = (
    "a Hugging Face tokenizers '.json' file (e.g. 20B_tokenizer.json) or an RWKV World vocab '.txt' "
    "file with lines '<id> <python str or bytes literal> <byte length>' (e.g. rwkv_vocab_v20230424.txt)"
)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load the tokenizer stored in ``path``, choosing the kind from the file.

    ``.json`` files load as :class:`HFTokenizer`; ``.txt`` files whose first
    lines have the World vocab shape load as :class:`WorldTokenizer`.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is of neither kind, or is malformed.
    """
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"tokenizer file not found: {str(file)!r}; expected {_SUPPORTED}")
    if not file.is_file():
        raise ValueError(f"tokenizer path {str(file)!r} is not a regular file; expected {_SUPPORTED}")
    suffix = file.suffix.lower()
    if suffix == ".json":
        return HFTokenizer(file)
    if suffix == ".txt" and looks_like_world_vocab(file):
        return WorldTokenizer(file)
    raise ValueError(f"cannot tell which tokenizer {str(file)!r} holds; expected {_SUPPORTED}")
