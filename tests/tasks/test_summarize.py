"""Summaries from a run's snapshots: equal to streaming the prefix, seeded, batch-independent, written."""
from __future__ import annotations

import json
import random

import pyarrow.parquet as pq
import pytest

from docstream.cli import build_parser
from docstream.corpus import Document
from docstream.corpus.chunker import iter_tokens
from docstream.model import load_model
from docstream.store.config import build_config
from docstream.stream.run import run
from docstream.tasks.generate import SamplingConfig, generate
from docstream.tasks.summarize import (
    TEMPLATES,
    build_prompt,
    prefix_state,
    row_seed,
    summarize,
    summarize_text,
)
from docstream.tokenizer import load_tokenizer
from tests.tasks.test_generate import byte_tokenizer_file, tiny_model_file

WORDS = "river stone light quiet morning paper signal garden winter engine the a of and to in is".split()
CHUNK = 16
SAMPLING = SamplingConfig(temperature=1.0, max_tokens=10, seed=5)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    """A finished run over three documents of 5 to 12 chunks, snapshots every 2 chunks."""
    root = tmp_path_factory.mktemp("summ")
    model_path, tok_path = tiny_model_file(root / "tiny7.pth"), byte_tokenizer_file(root / "bytes.json")
    corpus = root / "corpus"
    corpus.mkdir()
    rng = random.Random(0)
    texts = {}
    for i, n_words in enumerate((14, 30, 22)):
        texts[f"doc{i}.txt"] = " ".join(rng.choice(WORDS) for _ in range(n_words)) + "."
        (corpus / f"doc{i}.txt").write_text(texts[f"doc{i}.txt"])
    out = root / "out"
    run(build_config(None, dict(model=model_path, tokenizer=tok_path, input=corpus, out=out, chunk_len=CHUNK,
                                batch_size=2, snapshot_every=2, quiet=True)))
    return out, load_model(model_path), load_tokenizer(tok_path), texts


def _tokens(tok, text):
    return [t for ids in iter_tokens(Document.from_text("d", text), tok) for t in ids]


def test_mid_document_snapshot_equals_streaming_only_that_prefix(streamed):
    out, model, tok, texts = streamed
    result = summarize(out, ["doc1.txt"], at_chunk=3, template="tldr", sampling=SAMPLING, name="mid", progress=False)
    s = result.summaries[0]
    assert (s.doc_id, s.chunk_index, s.token_end, s.is_final) == ("doc1.txt", 3, 4 * CHUNK, False)
    prefix = _tokens(tok, texts["doc1.txt"])[:s.token_end]
    state = model.forward(prefix)[1]
    ref = generate(model, tok, state, [tok.encode("\n\nTL;DR:")], result.sampling, seeds=[row_seed(5, "doc1.txt")])[0]
    assert s.tokens == ref.tokens and s.text == ref.text and s.finish_reason == ref.finish_reason
    assert result.sampling.stop == list(TEMPLATES["tldr"].stop)  # the template's stops when none are given


def test_final_snapshot_is_the_whole_document(streamed):
    out, model, tok, texts = streamed
    greedy = SamplingConfig(temperature=0, max_tokens=8)
    s = summarize(out, ["doc0.txt"], sampling=greedy, name="final", progress=False).summaries[0]
    tokens = _tokens(tok, texts["doc0.txt"])
    assert s.is_final and s.token_end == len(tokens)
    suffix = tok.encode(build_prompt("world").suffix)
    ref = generate(model, tok, model.forward(tokens)[1], [suffix], greedy.model_copy(update={"stop": ["\n\n"]}))[0]
    assert s.tokens == ref.tokens


def test_seeded_sampling_is_deterministic(streamed):
    out = streamed[0]
    runs = [summarize(out, template="tldr", sampling=SAMPLING.model_copy(update={"seed": seed}), name=f"s{i}",
                      progress=False).summaries for i, seed in enumerate((5, 5, 6))]
    assert [s.tokens for s in runs[0]] == [s.tokens for s in runs[1]]
    assert [s.tokens for s in runs[0]] != [s.tokens for s in runs[2]]
    assert [s.doc_id for s in runs[0]] == ["doc0.txt", "doc1.txt", "doc2.txt"]


def test_batch_equals_one_by_one(streamed):
    out = streamed[0]
    batch = summarize(out, sampling=SAMPLING, batch_size=3, name="batch", progress=False).summaries
    alone = [summarize(out, [s.doc_id], sampling=SAMPLING, name=f"one{i}", progress=False).summaries[0]
             for i, s in enumerate(batch)]
    assert batch == alone
    assert len({s.seed for s in batch}) == 3


def test_stop_strings_cut_the_summary(streamed):
    out = streamed[0]
    free = summarize(out, ["doc2.txt"], sampling=SAMPLING.model_copy(update={"stop": ["<none>"]}), name="free",
                     progress=False).summaries[0]
    stop = free.text[4:6]
    cut = summarize(out, ["doc2.txt"], sampling=SAMPLING.model_copy(update={"stop": [stop]}), name="cut",
                    progress=False).summaries[0]
    assert cut.finish_reason == "stop" and cut.text == free.text[:free.text.find(stop)]


def test_a_chunk_without_snapshot_is_refused_with_the_chunks_that_have_one(streamed):
    out = streamed[0]
    with pytest.raises(ValueError, match=r"no snapshot at chunk 2; snapshots exist only at chunks 1, 3, 5, "):
        summarize(out, ["doc1.txt"], at_chunk=2, progress=False)
    parser = build_parser()
    args = parser.parse_args(["summarize", "--run", str(out), "--doc", "doc1.txt", "--at", "2"])
    with pytest.raises(ValueError, match=r"doc1.txt.*no snapshot at chunk 2.*chunks 1, 3, 5"):
        args.func(args)
    with pytest.raises(ValueError, match="no committed snapshot"):
        summarize(out, ["nope.txt"], progress=False)
    with pytest.raises(ValueError, match="no document of the run .* has a snapshot at chunk 99; chunks with "
                                         "snapshots: 1, 3"):
        summarize(out, at_chunk=99, progress=False)


def test_parquet_rows_and_the_command_line(streamed, capsys):
    out = streamed[0]
    parser = build_parser()
    args = parser.parse_args(["summarize", "--run", str(out), "--template", "instruct", "--max-tokens", "6",
                              "--temperature", "0", "--name", "cli", "--stop", "\n"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    path = out / "summaries" / "cli.parquet"
    rows = pq.read_table(path).to_pylist()
    assert [r["doc_id"] for r in rows] == ["doc0.txt", "doc1.txt", "doc2.txt"]
    for r in rows:
        assert r["template"] == "instruct" and r["prompt"] == "\n\nInstruction: Summarize the text above.\n\nResponse:"
        assert json.loads(r["sampling"])["max_tokens"] == 6 and json.loads(r["sampling"])["stop"] == ["\n"]
        assert r["is_final"] and r["finish_reason"] in ("stop", "length", "eos")
        assert f"== {r['doc_id']} ==\n{r['text']}\n[{r['finish_reason']}, {r['n_tokens']} tokens]" in printed
    assert f"3 summaries written to {path}" in printed
    assert not list((out / "summaries").glob(".*"))  # no temp file left behind


def test_instruction_first_streams_the_prefix_then_the_document(streamed):
    out, model, tok, texts = streamed
    greedy = SamplingConfig(temperature=0, max_tokens=8)
    prompt = build_prompt("world", instruction_first=True)
    assert prompt.prefix == "User: Summarize the following text in a few sentences.\n\n"
    assert prompt.suffix == "\n\nAssistant:"
    g = summarize_text(model, tok, texts["doc2.txt"], instruction_first=True, sampling=greedy, chunk_len=CHUNK)
    whole = tok.encode(prompt.prefix) + _tokens(tok, texts["doc2.txt"])
    ref = generate(model, tok, model.forward(whole)[1], [tok.encode(prompt.suffix)],
                   greedy.model_copy(update={"stop": ["\n\n"]}))[0]
    assert g.tokens == ref.tokens
    from_run = summarize(out, ["doc2.txt"], instruction_first=True, sampling=greedy, name="first",
                         progress=False).summaries[0]
    assert from_run.tokens == g.tokens and from_run.is_final
    part = summarize(out, ["doc2.txt"], at_chunk=2, instruction_first=True, sampling=greedy, name="first2",
                     progress=False).summaries[0]
    assert (part.chunk_index, part.token_end, part.is_final) == (2, 3 * CHUNK, False)


def test_prompts_and_prefix_state(streamed):
    _, model, tok, _ = streamed
    assert build_prompt("world").suffix == "\n\nUser: Summarize the text above in a few sentences.\n\nAssistant:"
    assert build_prompt("instruct", "List the names.").suffix == "\n\nInstruction: List the names.\n\nResponse:"
    assert build_prompt("tldr").suffix == "\n\nTL;DR:"
    assert build_prompt("\n\nQ: {instruction}\nA:", "Who?").suffix == "\n\nQ: Who?\nA:"
    with pytest.raises(ValueError, match="'tldr' has no instruction"):
        build_prompt("tldr", "Summarize.")
    with pytest.raises(ValueError, match="instruction_first needs a built-in template"):
        build_prompt("custom prompt", instruction_first=True)
    assert prefix_state(model, tok, "").equal(model.init_state(1))
    assert prefix_state(model, tok, "Read this:").equal(model.forward(tok.encode("Read this:"))[1])


def test_cuda_graphs_on_a_cpu_run_are_refused_before_any_summary(streamed, capsys):
    from docstream.cli import main

    out = streamed[0]
    with pytest.raises(ValueError, match="CUDA graphs need a model on a CUDA device; this one is on cpu"):
        summarize(out, ["doc0.txt"], sampling=SAMPLING, name="graphs", progress=False, cuda_graphs=True)
    assert not (out / "summaries" / "graphs.parquet").exists()
    assert main(["summarize", "--run", str(out), "--doc", "doc0.txt", "--cuda-graphs", "--name", "g2"]) == 2
    assert "CUDA graphs need a model on a CUDA device" in capsys.readouterr().err
