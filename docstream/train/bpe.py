"""Byte-level BPE tokenizers trained with Hugging Face ``tokenizers`` and saved as ``tokenizer.json``.

Byte-level means every string encodes (no unknown tokens) and decodes back exactly. Id 0 is
``<|endoftext|>``, the separator training puts between documents.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from docstream.files import atomic_write
from docstream.train.data import read_texts

END_OF_TEXT = "<|endoftext|>"


def train_bpe(paths: Iterable[Path], vocab_size: int, out: str | Path) -> Path:
    """Train a byte-level BPE of ``vocab_size`` ids on the text files under ``paths``; write it to ``out``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 1:
        raise ValueError(f"vocab_size {vocab_size} is too small: byte-level BPE needs at least "
                         f"{len(alphabet) + 1} ids (256 bytes and {END_OF_TEXT})")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT], initial_alphabet=alphabet,
                                  show_progress=False)
    tokenizer.train_from_iterator(read_texts(paths), trainer=trainer)
    if tokenizer.token_to_id(END_OF_TEXT) != 0:
        raise RuntimeError(f"{END_OF_TEXT} did not get id 0 in the trained tokenizer")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: tokenizer.save(str(tmp)))
    return out
