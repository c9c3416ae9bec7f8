"""Tokenizer backed by a Hugging Face ``tokenizers`` JSON file.

Used for the GPT-NeoX ``20B_tokenizer.json`` of RWKV-4 Pile models, and for any
other ``tokenizer.json`` saved by ``tokenizers`` or ``transformers``.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from docstream.tokenizer.base import VocabFile, read_vocab_bytes

_KIND = "Hugging Face tokenizer JSON"


def _load_backend(data: bytes, source: str) -> Any:
    """A ``tokenizers.Tokenizer`` built from JSON file contents.

    Raises:
        ImportError: the ``tokenizers`` package is not installed.
        ValueError: the contents are not a valid tokenizer JSON.
    """
    try:
        from tokenizers import Tokenizer as BackendTokenizer
    except ImportError as err:
        raise ImportError(
            f"loading {source!r} needs the 'tokenizers' package; install it with: pip install tokenizers"
        ) from err
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{source}: invalid UTF-8 at byte offset {err.start}; expected a tokenizer.json text file"
        ) from None
    try:
        return BackendTokenizer.from_str(text)
    except Exception as err:  # tokenizers raises a bare Exception for parse errors
        raise ValueError(
            f"{source}: not a valid Hugging Face tokenizers JSON file ({err}); expected a "
            "tokenizer.json saved by tokenizers or transformers, e.g. 20B_tokenizer.json"
        ) from None


class HFTokenizer(VocabFile):
    """A Hugging Face ``tokenizers`` tokenizer loaded from its JSON file.

    Encoding adds no special tokens; decoding keeps special tokens.

    Example::

        tok = HFTokenizer("20B_tokenizer.json")
        assert tok.decode(tok.encode("Hello world")) == "Hello world"
    """

    prefix = "hf"

    def __init__(self, path: str | Path) -> None:
        """Load the tokenizer JSON file at ``path``.

        Raises:
            FileNotFoundError: the file does not exist.
            ValueError: the file is not a valid tokenizer JSON.
            ImportError: the ``tokenizers`` package is not installed.
        """
        file, data = read_vocab_bytes(path, _KIND)
        self._backend = _load_backend(data, str(file))
        self._loaded(file, data, int(self._backend.get_vocab_size(with_added_tokens=True)))

    def token_to_id(self, token: str) -> int | None:
        """The id of a vocabulary entry such as ``"<|endoftext|>"``, or ``None``."""
        return self._backend.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        """Token ids for ``text``, without special tokens.

        Through the batch call: it gives the same ids as ``encode``, releases the GIL while it runs (so
        a run's background tokenizing does not stall the thread feeding the model) and skips the
        offsets, which are not used (``encode_batch_fast`` where this ``tokenizers`` has it)."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        batch = getattr(self._backend, "encode_batch_fast", self._backend.encode_batch)
        return list(batch([text], add_special_tokens=False)[0].ids)

    def decode(self, ids: Sequence[int]) -> str:
        """The text for ``ids``.

        Raises:
            ValueError: an id is outside ``0..vocab_size-1``.
        """
        checked = [self._check_id(token_id) for token_id in ids]
        return str(self._backend.decode(checked, skip_special_tokens=False))

    def _check_id(self, token_id: int) -> int:
        """``token_id`` as an int, or a ``ValueError`` if it is not a valid id."""
        try:
            value = operator.index(token_id)
        except TypeError:
            raise ValueError(
                f"token id {token_id!r} is not an integer; expected ints from encode()"
            ) from None
        if not 0 <= value < self._vocab_size:
            raise ValueError(
                f"token id {token_id!r} is not in {self.name} (valid ids: 0..{self._vocab_size - 1}); "
                "check the ids came from this tokenizer"
            )
        return value
