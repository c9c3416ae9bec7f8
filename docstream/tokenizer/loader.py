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


#: vocabularies that ship inside docstream, found by their bare file name
BUNDLED_DIR = Path(__file__).resolve().parent / "data"


def bundled_vocabularies() -> list[str]:
    """File names of the vocabularies bundled with docstream (e.g. ``rwkv_vocab_v20230424.txt``)."""
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if p.is_file()) if BUNDLED_DIR.is_dir() else []


def resolve_tokenizer_path(path: str | Path) -> Path:
    """``path`` itself when it exists; else, for a bare file name (no directory part) of a bundled
    vocabulary, docstream's copy. A file of that name in the working directory takes precedence."""
    file = Path(path)
    if file.exists() or file.name != str(path) or file.name not in bundled_vocabularies():
        return file
    return BUNDLED_DIR / file.name


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load the tokenizer stored in ``path``, choosing the kind from the file.

    ``.json`` files load as :class:`HFTokenizer`; ``.txt`` files whose first
    lines have the World vocab shape load as :class:`WorldTokenizer`. A bare name of a bundled
    vocabulary (``"rwkv_vocab_v20230424.txt"``) loads docstream's copy unless the working directory
    holds a file of that name.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is of neither kind, or is malformed.
    """
    file = resolve_tokenizer_path(path)
    if not file.exists():
        bundled = ", ".join(bundled_vocabularies()) or "none"
        raise FileNotFoundError(f"tokenizer file not found: {str(file)!r}; expected {_SUPPORTED}. "
                                f"Bundled vocabularies, loadable by bare name: {bundled}")
    if not file.is_file():
        raise ValueError(f"tokenizer path {str(file)!r} is not a regular file; expected {_SUPPORTED}")
    suffix = file.suffix.lower()
    if suffix == ".json":
        return HFTokenizer(file)
    if suffix == ".txt" and looks_like_world_vocab(file):
        return WorldTokenizer(file)
    raise ValueError(f"cannot tell which tokenizer {str(file)!r} holds; expected {_SUPPORTED}")
