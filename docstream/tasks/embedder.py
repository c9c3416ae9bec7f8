"""The embedder search's dense retriever uses: which checkpoint, and how it embeds passages and queries.

An embedder is a BlinkDL-layout checkpoint with an ``embedder.json`` beside it
(:mod:`docstream.model.embedding`): the built-in one (``docstream/data/default_embedder``, the default
model's first layers tuned by ``docstream train --objective contrastive``), or any checkpoint that
``docstream train --objective contrastive`` wrote. Each chunk is embedded on its own, from its text, when
the index is updated (torch, batched); a query is embedded the same way when it is searched -- by the
NumPy RWKV-7 of :mod:`docstream.model.numpy_v7` when the embedder is an RWKV-7, so a query never waits
for torch to import.

Importing this module imports neither torch nor FAISS.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from docstream.model.embedding import EmbedderSpec

__all__ = ["BUILTIN", "EmbedderFiles", "PassageEmbedder", "QueryEncoder", "resolve_embedder"]

#: the name of the built-in embedder wherever an embedder can be named
BUILTIN = "builtin"


@dataclass(frozen=True)
class EmbedderFiles:
    """An embedder on disk: its checkpoint, its spec, and a fingerprint of both (what an index records)."""

    model: Path
    spec: EmbedderSpec
    fingerprint: str

    @property
    def name(self) -> str:
        return BUILTIN if self.model == _builtin_path() else str(self.model)


def _builtin_path() -> Path:
    from docstream.defaults import DEFAULT_EMBEDDER_DIR

    return DEFAULT_EMBEDDER_DIR / "model.pth"


def resolve_embedder(embedder: str | Path | None = None) -> EmbedderFiles:
    """The embedder named by ``embedder``: None or ``"builtin"`` for the built-in one, else a checkpoint path
    (or a folder holding ``model.pth``) with its ``embedder.json`` beside it."""
    from docstream.checksum import sha256_file
    from docstream.defaults import default_embedder_path
    from docstream.model.embedding import read_embedder_spec

    if embedder is None or str(embedder) == BUILTIN:
        path = default_embedder_path()
    else:
        path = Path(embedder)
        if path.is_dir():
            path = path / "model.pth"
        if not path.is_file():
            raise FileNotFoundError(f"embedder checkpoint {str(path)!r} does not exist; name a model.pth written "
                                    f"by `docstream train --objective contrastive`, or use the built-in one")
    spec = read_embedder_spec(path)
    if spec is None:
        raise ValueError(f"{str(path)!r} has no embedder.json beside it, so how it embeds a passage is unknown; "
                         f"use a checkpoint written by `docstream train --objective contrastive`, or write its "
                         f"<name>.embedder.json (see docstream/model/embedding.py)")
    digest = hashlib.sha256(sha256_file(path).encode())
    digest.update(spec.model_dump_json(exclude={"tokenizer"}).encode())
    digest.update(_tokenizer_digest(spec.tokenizer).encode())
    return EmbedderFiles(path, spec, digest.hexdigest())


def _tokenizer_digest(tokenizer: str) -> str:
    """The tokenizer file's sha256 (a bundled vocabulary is named by its name)."""
    from docstream.checksum import sha256_file

    path = Path(tokenizer)
    return sha256_file(path) if path.is_file() else tokenizer


class PassageEmbedder:
    """Embeds passages with torch, batched (what an index update uses)."""

    def __init__(self, files: EmbedderFiles, device: str = "cpu", batch_size: int = 16):
        from docstream.model import load_model
        from docstream.tokenizer import load_tokenizer

        self.files, self.batch_size = files, batch_size
        self.model = load_model(files.model, device=device)
        self.tokenizer = load_tokenizer(files.spec.tokenizer)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``[len(texts), dimension]`` float32 vectors (not normalized); an empty text is embedded as one
        space, so every chunk gets a vector."""
        from docstream.model.embedding import embed_tokens

        tokens = [self.tokenizer.encode(text or " ") for text in texts]  # embed_tokens keeps the first max_tokens
        return embed_tokens(self.model, tokens, self.files.spec, self.batch_size)


class QueryEncoder:
    """Embeds queries: NumPy for an RWKV-7 embedder (no torch import), torch otherwise."""

    def __init__(self, files: EmbedderFiles):
        self.files = files
        try:
            from docstream.tasks.query_vector import QueryEncoder as NumpyEncoder

            self._encoder = NumpyEncoder(files.model, files.spec)
        except ValueError:  # not an RWKV-7: the torch path embeds it
            self._encoder = PassageEmbedder(files)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``[len(texts), dimension]`` float32 vectors (not normalized)."""
        if isinstance(self._encoder, PassageEmbedder):
            return self._encoder.embed(texts)
        return self._encoder.encode([text or " " for text in texts])
