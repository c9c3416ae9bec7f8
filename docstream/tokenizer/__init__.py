"""Tokenizers for RWKV models: the World vocabulary and Hugging Face JSON files.

Use :func:`load_tokenizer` to load either kind from its file, or
:func:`default_world_vocab_path` for the World vocabulary bundled with docstream.
"""

from docstream.tokenizer.base import Tokenizer
from docstream.tokenizer.hf import HFTokenizer
from docstream.tokenizer.loader import bundled_vocabularies, load_tokenizer, resolve_tokenizer_path
from docstream.tokenizer.world import (
    END_OF_TEXT_ID,
    WORLD_VOCAB_FILENAME,
    WorldTokenizer,
    default_world_vocab_path,
    parse_world_vocab,
    rwkv_package_vocab_path,
)

__all__ = [
    "END_OF_TEXT_ID",
    "WORLD_VOCAB_FILENAME",
    "HFTokenizer",
    "Tokenizer",
    "WorldTokenizer",
    "bundled_vocabularies",
    "default_world_vocab_path",
    "load_tokenizer",
    "parse_world_vocab",
    "resolve_tokenizer_path",
    "rwkv_package_vocab_path",
]
