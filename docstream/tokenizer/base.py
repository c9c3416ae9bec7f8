"""The common tokenizer interface and small helpers shared by the implementations."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from docstream.checksum import sha256_bytes


@runtime_checkable
class Tokenizer(Protocol):
    """What the pipeline needs from a tokenizer.

    Implementations map text to token ids and back. ``fingerprint()`` identifies
    the vocabulary (sha256 hex digest of the vocabulary file's bytes), so a run
    can record exactly which tokenizer produced its tokens.
    """

    @property
    def name(self) -> str:
        """A short human-readable name, e.g. ``"world:rwkv_vocab_v20230424.txt"``."""
        ...

    @property
    def vocab_size(self) -> int:
        """One more than the largest token id this tokenizer can produce or decode."""
        ...

    def encode(self, text: str) -> list[int]:
        """Token ids for ``text``, with no special tokens added."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """The text for ``ids``."""
        ...

    def fingerprint(self) -> str:
        """The sha256 hex digest of the vocabulary file's bytes."""
        ...


class VocabFile:
    """What every tokenizer loaded from one file shares: the file, its sha256 fingerprint, the number of
    ids, and a name ``"<prefix>:<file name>"``. Subclasses call :meth:`_loaded` from ``__init__``."""

    prefix = "file"

    def _loaded(self, file: Path, data: bytes, vocab_size: int) -> None:
        self._path, self._fingerprint, self._vocab_size = file, sha256_bytes(data), vocab_size

    @property
    def name(self) -> str:
        """``"<prefix>:<file name>"``, e.g. ``"world:rwkv_vocab_v20230424.txt"``."""
        return f"{self.prefix}:{self._path.name}"

    @property
    def path(self) -> Path:
        """The file this tokenizer was loaded from."""
        return self._path

    @property
    def vocab_size(self) -> int:
        """One more than the largest token id this tokenizer can produce or decode."""
        return self._vocab_size

    def fingerprint(self) -> str:
        """The sha256 hex digest of the file's bytes."""
        return self._fingerprint

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self._path)!r}, vocab_size={self._vocab_size})"


def read_vocab_bytes(path: str | Path, kind: str, hint: str = "check the path") -> tuple[Path, bytes]:
    """Read a vocabulary file, with errors that name the file.

    ``kind`` describes the expected file (e.g. ``"RWKV World vocab"``) and
    ``hint`` what to do about a missing one, for the error messages. Returns the
    path as a ``Path`` and the file's bytes.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the path exists but is not a regular file.
    """
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"{kind} file not found: {str(file)!r}; {hint}")
    if not file.is_file():
        raise ValueError(f"{kind} path {str(file)!r} is not a regular file; pass the vocabulary file itself")
    return file, file.read_bytes()
