"""Checks before a run: a tokenizer that fits its model, and a corpus that has documents."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from tokenizers import Tokenizer as HFBackend
from tokenizers.models import WordLevel

from docstream.corpus import Document
from docstream.defaults import default_model_path, default_tokenizer_path
from docstream.testing.checkpoints import save_random_checkpoint
from docstream.store.config import build_config
from docstream.stream import preflight
from docstream.stream.preflight import (
    check_corpus,
    check_default_pairing,
    check_pairing,
    check_run,
    checkpoint_vocab_size,
)
from docstream.tokenizer import default_world_vocab_path, load_tokenizer

LORA = {"decay": 16, "iclr": 16, "value": 16, "gate": 16}


def _small_tokenizer(path: Path, size: int) -> Path:
    """A Hugging Face tokenizer file of ``size`` tokens (made for no model here)."""
    HFBackend(WordLevel({f"t{i}": i for i in range(size)}, unk_token="t0")).save(str(path))
    return path


def _fake(size: int) -> SimpleNamespace:
    return SimpleNamespace(vocab_size=size)


# --- tokenizer and model --------------------------------------------------------------------------


@pytest.mark.parametrize("model_vocab, tokens", [(65536, 65530), (50277, 50277), (4096, 4096), (61, 61)])
def test_real_pairings_pass(model_vocab, tokens):
    check_pairing(model_vocab, _fake(tokens), "model.pth", "tokenizer")


def test_a_tokenizer_with_ids_beyond_the_model_is_refused_naming_both_files(tmp_path):
    world = load_tokenizer(default_world_vocab_path())
    with pytest.raises(ValueError) as err:
        check_pairing(4096, world, "small.pth", default_world_vocab_path())
    message = str(err.value)
    assert "'small.pth'" in message and str(default_world_vocab_path()) in message
    assert "65529" in message and "4096" in message and "no embedding" in message


def test_a_much_smaller_tokenizer_is_refused_with_the_right_pairing_as_hint(tmp_path):
    small = load_tokenizer(_small_tokenizer(tmp_path / "tok300.json", 300))
    with pytest.raises(ValueError) as err:
        check_pairing(4096, small, default_model_path(), tmp_path / "tok300.json")
    message = str(err.value)
    assert "300 tokens" in message and "tok300.json" in message and "another tokenizer" in message
    assert str(default_tokenizer_path()) in message  # the built-in model's own tokenizer
    with pytest.raises(ValueError, match="World vocabulary"):
        check_pairing(65536, _fake(300), "world.pth", "tok300.json")
    check_pairing(4096, _fake(2048), "model.pth", "tok.json")  # half the model's vocabulary is the limit
    with pytest.raises(ValueError):
        check_pairing(4096, _fake(2047), "model.pth", "tok.json")


def test_checkpoint_vocab_size_reads_the_embedding_rows(tmp_path):
    path = save_random_checkpoint(tmp_path / "m.pth", "7", n_layer=1, n_embd=32, head_size=16, vocab_size=77,
                                  lora=LORA)
    assert checkpoint_vocab_size(path) == 77
    assert checkpoint_vocab_size(default_model_path()) == load_tokenizer(default_tokenizer_path()).vocab_size


def test_the_built_in_model_refuses_any_tokenizer_but_its_own(tmp_path):
    check_default_pairing(default_model_path(), default_tokenizer_path())
    copy = shutil.copy(default_tokenizer_path(), tmp_path / "copy.json")
    check_default_pairing(default_model_path(), copy)  # compared by content
    same_size = _small_tokenizer(tmp_path / "other4096.json", 4096)  # passes the size rule, still wrong
    check_pairing(4096, load_tokenizer(same_size), default_model_path(), same_size)
    with pytest.raises(ValueError) as err:
        check_default_pairing(default_model_path(), same_size)
    message = str(err.value)
    assert "other4096.json" in message and str(default_tokenizer_path()) in message and "--model" in message
    other_model = save_random_checkpoint(tmp_path / "m.pth", "7", n_layer=1, n_embd=32, head_size=16,
                                         vocab_size=4096, lora=LORA)
    check_default_pairing(other_model, same_size)  # another model may use any tokenizer of its size


def test_run_config_with_tokenizer_but_no_model_is_refused_before_any_output(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("some text\n")
    out = tmp_path / "out"
    config = build_config(None, dict(tokenizer=default_world_vocab_path(), input=corpus, out=out, quiet=True))
    with pytest.raises(ValueError, match="built-in default model"):
        check_run(config)
    assert not out.exists()
    config = build_config(None, dict(input=corpus, out=out, quiet=True))
    assert check_run(config).doc_id == "a.txt"


def test_run_config_with_a_mismatched_model_is_refused(tmp_path):
    model = save_random_checkpoint(tmp_path / "m.pth", "7", n_layer=1, n_embd=32, head_size=16, vocab_size=4096,
                                   lora=LORA)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"id": 1, "text": "hello"}) + "\n")
    config = build_config(None, dict(model=model, tokenizer=default_world_vocab_path(), input=corpus,
                                     out=tmp_path / "out", quiet=True))
    with pytest.raises(ValueError, match="do not belong together"):
        check_run(config)


# --- corpus -----------------------------------------------------------------------------------------


def _files(root: Path, names: dict[str, str]) -> Path:
    for name, text in names.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_an_empty_folder_has_no_documents(tmp_path):
    with pytest.raises(ValueError, match=r"no documents found in .*: the folder is empty"):
        check_corpus(tmp_path)


def test_a_folder_of_other_suffixes_says_what_it_holds(tmp_path):
    _files(tmp_path, {"a.pdf": "x", "b.pdf": "x", "sub/c.html": "x"})
    with pytest.raises(ValueError) as err:
        check_corpus(tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message and "3 files" in message and "2 .pdf" in message and ".txt/.md" in message


def test_a_folder_of_jsonl_suggests_the_format(tmp_path):
    _files(tmp_path, {"a.jsonl": json.dumps({"id": "a", "text": "t"}) + "\n"})
    with pytest.raises(ValueError, match="--format jsonl"):
        check_corpus(tmp_path)
    assert check_corpus(tmp_path, fmt="jsonl").doc_id == "a"
    with pytest.raises(ValueError, match=r"none with a suffix \.parquet.*--format jsonl"):
        check_corpus(tmp_path, fmt="parquet")


def test_jsonl_without_the_id_field_names_the_field_and_the_option(tmp_path):
    path = _files(tmp_path, {"c.jsonl": "".join(json.dumps({"doc": i, "text": "t"}) + "\n" for i in range(3))})
    with pytest.raises(ValueError) as err:
        check_corpus(path / "c.jsonl")
    message = str(err.value)
    assert "all 3 entries were rejected (missing_field 3)" in message and "c.jsonl:1" in message
    assert "'id'" in message and "--id-field" in message
    assert check_corpus(path / "c.jsonl", id_field="doc").doc_id == "0"


def test_only_blank_files_are_reported_with_their_reasons(tmp_path):
    _files(tmp_path, {"a.txt": "", "b.md": "  \n"})
    with pytest.raises(ValueError, match=r"all 2 entries were rejected \(empty 2\)"):
        check_corpus(tmp_path)


def test_check_corpus_stops_at_the_first_readable_document(tmp_path, monkeypatch):
    _files(tmp_path, {"a.txt": "", "b.txt": "text\n", "c.txt": "more\n", "d.txt": "more\n"})
    pulled = []

    def spy(*args, **kwargs):
        for item in real(*args, **kwargs):
            pulled.append(item.doc_id)
            yield item

    real = preflight.iter_corpus
    monkeypatch.setattr(preflight, "iter_corpus", spy)
    found = check_corpus(tmp_path)
    assert isinstance(found, Document) and found.doc_id == "b.txt" and pulled == ["a.txt", "b.txt"]
