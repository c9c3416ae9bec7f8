"""The Stream engine's Python API: what run() accepts."""
from __future__ import annotations

import time

import pytest

from docstream.model import build_model
from docstream.testing.checkpoints import make_random_checkpoint
from docstream.stream import ChunkRecord, Document, DocumentDone, Rejected, Stream
from docstream.stream import engine
from docstream.stream.prefetch import Prefetcher
from docstream.tokenizer import default_world_vocab_path, load_tokenizer

LORA = {"decay": 16, "iclr": 16, "value": 16, "gate": 16}


@pytest.fixture(scope="module")
def stream():
    model = build_model(make_random_checkpoint("7", n_layer=1, n_embd=32, head_size=16, vocab_size=65536,
                                               seed=1, lora=LORA))
    return Stream(model, load_tokenizer(default_world_vocab_path()), chunk_len=4, batch_size=2)


def test_plain_strings_are_documents_with_ids_from_their_position(stream):
    texts = ["The first text, long enough for a few chunks.", "Second.", "And a third one."]
    events = list(stream.run(texts))
    done = {e.doc_id: e for e in events if isinstance(e, DocumentDone)}
    assert sorted(done) == ["doc-0", "doc-1", "doc-2"]
    # the same as documents made from the texts with those ids
    docs = [Document.from_text(f"doc-{i}", t) for i, t in enumerate(texts)]
    want = [(e.doc_id, e.chunk_index, e.token_end) for e in stream.run(docs) if isinstance(e, ChunkRecord)]
    assert [(e.doc_id, e.chunk_index, e.token_end) for e in events if isinstance(e, ChunkRecord)] == want
    assert done["doc-0"].n_chunks > 1


def test_one_string_or_another_type_is_refused(stream):
    with pytest.raises(ValueError, match=r"wrap it in a list"):
        next(stream.run("one text"))
    with pytest.raises(ValueError, match=r"input 1 is a bytes"):
        list(stream.run(["fine", b"bytes"]))


def _events(stream, texts):
    """Each event as comparable values (vectors and states as bytes)."""
    out = []
    for e in stream.run(texts):
        if isinstance(e, ChunkRecord):
            out.append((e.doc_id, e.chunk_index, e.token_end, e.is_last,
                        tuple(e.vectors[k].tobytes() for k in sorted(e.vectors)),
                        None if e.state is None else e.state.to_bytes()))
        else:
            out.append(e)
    return out


TEXTS = ["A longer text that runs over many chunks of four tokens each, and on.", "Short.",
         "Another, of medium length, for the batch.", "The fourth and the last document here."]


def test_the_device_to_host_path_gives_the_same_events(stream, monkeypatch):
    """The branch a GPU takes (snapshot rows stacked and copied, vectors and flags copied without
    blocking) runs here on the CPU and must give every event unchanged."""
    want = _events(stream, TEXTS)
    monkeypatch.setattr(engine, "_copies_to_host", lambda device: True)
    assert _events(stream, TEXTS) == want


def test_events_do_not_depend_on_how_far_reading_runs_ahead(stream):
    want = _events(stream, TEXTS)
    for prefetch in (1, 2, 16):
        ahead = Stream(stream.model, stream.tokenizer, chunk_len=4, batch_size=2, prefetch=prefetch)
        assert _events(ahead, TEXTS) == want
    with pytest.raises(ValueError, match="prefetch"):
        Stream(stream.model, stream.tokenizer, prefetch=0)


def test_reading_ahead_is_bounded_and_stops_with_the_consumer():
    taken = []

    def source():
        for i in range(100):
            taken.append(i)
            yield i

    with Prefetcher(ahead=3) as prefetcher:
        feed = prefetcher.open(source())
        assert next(feed) == 0
        time.sleep(0.2)
        assert len(taken) <= 1 + 3 + 1  # the one taken, three waiting, at most one in progress
        feed.close()
        assert next(feed, "closed") == "closed"


def test_an_error_while_reading_ahead_is_raised_where_it_happened():
    def source():
        yield 1
        yield 2
        raise OSError("the disk went away")

    with Prefetcher(ahead=4) as prefetcher:
        feed = prefetcher.open(source())
        assert [next(feed), next(feed)] == [1, 2]
        with pytest.raises(OSError, match="went away"):
            next(feed)


def test_an_unreadable_document_is_rejected_after_its_chunks_so_far(stream):
    """A read error in the middle of a document (raised on the prefetch thread) reaches the engine
    at the chunk where it happened: the chunks before it come first, then the rejection."""
    def fragments(stats):
        yield "a few words on a line\n" * 800  # a piece's worth (16K characters) before the failure
        raise OSError("read error in the middle")

    long_chunks = Stream(stream.model, stream.tokenizer, chunk_len=512, batch_size=2)
    events = list(long_chunks.run([Document("flaky", "flaky.txt", fragments), "A second document."]))
    mine = [e for e in events if getattr(e, "doc_id", None) == "flaky"]
    assert isinstance(mine[-1], Rejected) and mine[-1].reason == "unreadable", mine[-1]
    assert len(mine) > 2 and all(isinstance(e, ChunkRecord) for e in mine[:-1])
    assert [e.chunk_index for e in mine[:-1]] == list(range(len(mine) - 1))
    assert any(isinstance(e, DocumentDone) and e.doc_id == "doc-1" for e in events)
