"""One chunk identity: every record of a chunk is a ChunkId, every table of chunks ChunkIdColumns."""
import numpy as np
import pytest

from docstream.corpus.chunk_id import ID_FIELDS, ChunkId, ChunkIdColumns
from docstream.store.reader import EmbeddingRows
from docstream.store.snapshots import SnapshotInfo
from docstream.stream.engine import ChunkRecord
from docstream.tasks.index_files import IdTable


def _rows(doc_ids, start):
    n = len(doc_ids)
    return EmbeddingRows(np.asarray(doc_ids, dtype=object), np.arange(n, dtype=np.int32),
                         np.arange(start, start + n, dtype=np.int64) * 8, np.arange(start + 1, start + n + 1) * 8,
                         np.ones((n, 3), np.float32))


def test_records_of_a_chunk_are_chunk_ids():
    record = ChunkRecord("doc", 2, 16, 24, False, {}, None)
    info = SnapshotInfo("doc", 2, 16, 24, is_final=False, model_fingerprint="f", part="p")
    assert record.chunk_id == info.chunk_id == ChunkId("doc", 2, 16, 24)
    assert isinstance(record.chunk_id, ChunkId) and type(record.chunk_id) is ChunkId
    assert [getattr(record, name) for name in ID_FIELDS] == ["doc", 2, 16, 24]


def test_tables_of_chunks_share_their_columns_and_rows():
    rows = EmbeddingRows.concat([_rows(["a", "b"], 0), EmbeddingRows.empty(3), _rows(["c"], 2)])
    assert isinstance(rows, ChunkIdColumns) and len(rows) == 3 and rows.dimension == 3
    ids = IdTable.of_rows(rows)
    assert type(ids) is IdTable and ids.row(2) == ChunkId("c", 0, 16, 24) == rows.row(2)
    both = IdTable.concat(ids, ids)
    assert len(both) == 6 and both.row(5) == ids.row(2) and both.chunk_index.dtype == np.int32
    assert len(EmbeddingRows.concat([])) == 0
    with pytest.raises(IndexError, match="outside the id table"):
        ids.row(3)
