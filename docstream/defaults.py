"""The built-in default model: a small RWKV-7 trained by ``docstream train`` that ships inside the package.

Its files live in ``docstream/data/default_model/``: ``model.pth`` (BlinkDL layout), ``tokenizer.json``
(byte-level BPE, Hugging Face ``tokenizers``) and ``MODEL_CARD.md``, which says how it was made.
"""
from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "data" / "default_model"


def default_model_path() -> Path:
    """The shipped checkpoint; ``FileNotFoundError`` naming the path if the package lacks it."""
    return _existing(DEFAULT_MODEL_DIR / "model.pth")


def default_tokenizer_path() -> Path:
    """The shipped model's tokenizer (``tokenizer.json``)."""
    return _existing(DEFAULT_MODEL_DIR / "tokenizer.json")


def _existing(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"the built-in default model file {path} is missing; reinstall docstream "
                                "or pass --model and --tokenizer")
    return path


def resolve_model_files(model: str | Path | None, tokenizer: str | Path | None) -> tuple[Path, Path]:
    """The checkpoint and tokenizer to use: the built-in model when ``model`` is None (with its own
    tokenizer unless one is given); a given model needs its tokenizer named too."""
    if model is None:
        return default_model_path(), Path(tokenizer) if tokenizer is not None else default_tokenizer_path()
    if tokenizer is None:
        raise ValueError(f"model {str(model)!r} needs its tokenizer: pass --tokenizer (the World vocabulary "
                         f".txt for RWKV-5/6/7 World models, 20B_tokenizer.json for RWKV-4 Pile models)")
    return Path(model), Path(tokenizer)


#: the built-in embedder: the default model's first layers tuned contrastively for search (see its MODEL_CARD.md)
DEFAULT_EMBEDDER_DIR = Path(__file__).resolve().parent / "data" / "default_embedder"


def default_embedder_path() -> Path:
    """The shipped embedder checkpoint (``model.pth``, described by ``model.embedder.json`` beside it)."""
    return _existing(DEFAULT_EMBEDDER_DIR / "model.pth")
