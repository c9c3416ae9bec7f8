"""Checks a run makes before any work: a tokenizer that fits the model, and a corpus with documents.

A wrong pairing otherwise shows late or never: a tokenizer with more ids than the model has
embeddings fails at the first forward pass, one with far fewer (a model trained with another
tokenizer) runs to the end and writes meaningless vectors, and a corpus with no readable document
ends in "documents processed 0" and an unrelated error from the index. Each check raises
``ValueError`` naming the files and saying what to pass instead.

Call :func:`check_run` (or the single checks) after the paths are known to exist and before the
output directory is created or written.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from docstream.checksum import sha256_file
from docstream.corpus import SUFFIXES, Document, Rejected, iter_corpus
from docstream.defaults import DEFAULT_MODEL_DIR
from docstream.tokenizer import WORLD_VOCAB_FILENAME, Tokenizer, load_tokenizer, resolve_tokenizer_path

#: a tokenizer may have fewer tokens than the model has embeddings (released models pad their
#: vocabulary: World models 65536 rows for 65530 ids, the built-in model exactly its 4096), but not
#: fewer than this fraction: a smaller one belongs to another model, whose ids mean other things here
MIN_VOCAB_FRACTION = 0.5
#: the tokenizers of known released vocabularies, by the model's vocabulary size, for hints
KNOWN_PAIRINGS = {
    65536: f"the World vocabulary {WORLD_VOCAB_FILENAME} (bundled: pass that bare name)",
    50277: "20B_tokenizer.json (GPT-NeoX), as RWKV-4 Pile models were trained with",
}
#: how many example suffixes a "no documents" message lists
_SHOWN_SUFFIXES = 5


def checkpoint_vocab_size(model_path: str | os.PathLike[str]) -> int:
    """The vocabulary size of a BlinkDL checkpoint (rows of ``emb.weight``), read without building a model.

    The file is memory-mapped, so only its index and no weights are read.
    """
    from docstream.model.loader import read_checkpoint

    sd = read_checkpoint(model_path)
    if "emb.weight" not in sd:
        raise ValueError(f"{str(model_path)!r} is not an RWKV checkpoint: it has no 'emb.weight'")
    return int(sd["emb.weight"].shape[0])


def check_pairing(model_vocab_size: int, tokenizer: Tokenizer, model_path: str | os.PathLike[str],
                  tokenizer_path: str | os.PathLike[str]) -> None:
    """``ValueError`` unless ``tokenizer`` plausibly belongs to the model of ``model_vocab_size`` tokens.

    Refused: a tokenizer that can produce an id the model has no embedding for (``vocab_size``
    above the model's), and one with fewer than :data:`MIN_VOCAB_FRACTION` of the model's
    tokens, which was made for another model. Real pairings are near 1: World 65530/65536,
    20B 50277/50277, the built-in model 4096/4096.
    """
    ours = tokenizer.vocab_size
    where = (f"tokenizer {str(tokenizer_path)!r} ({ours} tokens) and model {str(model_path)!r} "
             f"(vocabulary {model_vocab_size})")
    if ours > model_vocab_size:
        raise ValueError(f"{where} do not belong together: the tokenizer produces ids up to {ours - 1}, which the "
                         f"model has no embedding for, so the first document would fail; "
                         f"{_pairing_hint(model_vocab_size, model_path)}")
    if ours < MIN_VOCAB_FRACTION * model_vocab_size:
        raise ValueError(f"{where} do not belong together: the tokenizer has fewer than "
                         f"{MIN_VOCAB_FRACTION:.0%} of the model's tokens, so the model was trained with another "
                         f"tokenizer and its outputs would be meaningless; "
                         f"{_pairing_hint(model_vocab_size, model_path)}")


def _pairing_hint(model_vocab_size: int, model_path: str | os.PathLike[str]) -> str:
    """What to pass instead: the tokenizer known for this model, or the general rule."""
    if _same_file(model_path, DEFAULT_MODEL_DIR / "model.pth"):
        return f"the built-in model needs its own tokenizer {str(DEFAULT_MODEL_DIR / 'tokenizer.json')!r}"
    known = KNOWN_PAIRINGS.get(model_vocab_size)
    if known is not None:
        return f"a model with {model_vocab_size} tokens usually pairs with {known}"
    return "pass --tokenizer with the file the model was trained with (its vocabulary size should match)"


def check_default_pairing(model_path: str | os.PathLike[str], tokenizer_path: str | os.PathLike[str]) -> None:
    """``ValueError`` when ``model_path`` is the built-in default model and ``tokenizer_path`` is not
    its bundled tokenizer.

    This is what ``--tokenizer`` without ``--model`` gives (the built-in model is then used); the
    built-in model only understands the tokenizer it was trained with. Files are compared by
    content, so a copy of either counts as itself.
    """
    model_file = DEFAULT_MODEL_DIR / "model.pth"
    own = DEFAULT_MODEL_DIR / "tokenizer.json"
    if not _same_file(model_path, model_file) or _same_file(resolve_tokenizer_path(tokenizer_path), own):
        return
    raise ValueError(f"tokenizer {str(tokenizer_path)!r} cannot be used with the built-in default model "
                     f"{str(model_file)!r}, which only works with its own tokenizer {str(own)!r}: --tokenizer "
                     f"without --model uses the built-in model. Pass --model with the checkpoint this tokenizer "
                     f"belongs to (World vocabulary: RWKV-5/6/7 World models; 20B_tokenizer.json: RWKV-4 Pile "
                     f"models), or drop --tokenizer")


def _same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths hold the same bytes (the same file, or a copy); sizes are compared before hashing."""
    a, b = Path(a), Path(b)
    try:
        if a.resolve() == b.resolve():
            return True
        return a.stat().st_size == b.stat().st_size and sha256_file(a) == sha256_file(b)
    except OSError:
        return False


def check_corpus(path: str | os.PathLike[str], fmt: str = "auto", id_field: str = "id",
                 text_field: str = "text") -> Document:
    """The corpus's first readable document, or ``ValueError`` saying why it has none.

    Reads the corpus only up to its first readable document (for text files, a small read of
    each file before it), so it is cheap for any corpus worth running. With none, the message
    says what the folder holds (how many files, which suffixes) and which ``--format``,
    ``--id-field`` or ``--text-field`` would read it, or why each entry was rejected.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: no readable document, or the errors of
            :func:`~docstream.corpus.iter_corpus` (unknown format, missing Parquet columns).
    """
    reasons: Counter[str] = Counter()
    first: Rejected | None = None
    for item in iter_corpus(path, fmt, id_field, text_field):
        if isinstance(item, Document):
            return item
        reasons[item.reason] += 1
        first = first or item
    root = Path(path)
    kind = fmt if fmt != "auto" else _auto_kind(root)
    if first is None:
        raise ValueError(f"no documents found in {str(root)!r}: {_holdings(root, kind)}")
    counts = ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items()))
    hint = ""
    if reasons["missing_field"] or reasons["bad_id"]:
        hint = (f"; if the records keep their id or text under other names, pass --id-field / --text-field "
                f"(now {id_field!r} / {text_field!r})")
    raise ValueError(f"no readable documents in {str(root)!r}: all {sum(reasons.values())} entries were rejected "
                     f"({counts}); the first, {first.source}: {first.detail}{hint}")


def _auto_kind(root: Path) -> str:
    """The format ``fmt="auto"`` picked (``iter_corpus`` has already accepted the suffix)."""
    if root.is_dir():
        return "text"
    return next(kind for kind, suffixes in SUFFIXES.items() if root.name.lower().endswith(suffixes))


def _holdings(root: Path, kind: str) -> str:
    """What a folder without documents of format ``kind`` holds, and which format would read it."""
    wanted = "/".join(SUFFIXES[kind])
    if not root.is_dir():
        return f"the file has no readable content for format {kind!r}"
    suffixes: Counter[str] = Counter()
    for _, _, files in os.walk(root):
        suffixes.update(_suffix(name) for name in files)
    total = sum(suffixes.values())
    if total == 0:
        return ("the folder is empty (no files in it or below it); pass a folder of .txt/.md files, "
                "a .jsonl or a .parquet file")
    shown = ", ".join(f"{n} {suffix or '(no suffix)'}" for suffix, n in suffixes.most_common(_SHOWN_SUFFIXES))
    files = f"{total} file{'s' if total > 1 else ''}"
    message = f"it holds {files} ({shown}), none with a suffix {wanted} (format {kind!r})"
    other = [name for name, known in SUFFIXES.items()
             if name != kind and any(suffix in known for suffix in suffixes)]
    if other:
        return message + "; use " + " or ".join(f"--format {name}" for name in other)
    return message + "; rename the files, or convert them to .txt, JSON Lines or Parquet"


def _suffix(name: str) -> str:
    """A file name's suffix for counting, lower case, two-part for ``.jsonl.gz``."""
    lower = name.lower()
    if lower.endswith(".jsonl.gz"):
        return ".jsonl.gz"
    return os.path.splitext(lower)[1]


def check_run(config, tokenizer: Tokenizer | None = None) -> Document:
    """Every check above for a :class:`~docstream.store.config.RunConfig`; the corpus's first document.

    ``tokenizer`` is ``config.tokenizer`` loaded (loaded here when not given). Needs the model,
    tokenizer and input paths to exist (``run.check_inputs``).
    """
    check_default_pairing(config.model, config.tokenizer)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.tokenizer)
    check_pairing(checkpoint_vocab_size(config.model), tokenizer, config.model, config.tokenizer)
    return check_corpus(config.input, config.input_format, config.id_field, config.text_field)
