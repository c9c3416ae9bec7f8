"""How RunStore writes parts: built and hashed in memory, written once, with the settings of
WRITE_OPTIONS; parts written with the earlier settings still read."""
import hashlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import docstream.checksum
import docstream.files
from docstream.checksum import sha256_bytes
from docstream.model import State
from docstream.store.run_store import RunStore, SnapshotRef, StoreDamagedError
from docstream.store.schemas import SCHEMAS, WRITE_OPTIONS

#: the settings parts were written with before (zstd everywhere, statistics and dictionaries by default)
OLD_WRITE_OPTIONS = {
    "embeddings": dict(compression="zstd", row_group_size=8192),
    "snapshots": dict(compression="zstd", row_group_size=1, use_dictionary=["doc_id", "model_fingerprint"]),
}


def _blob(seed: int) -> bytes:
    g = torch.Generator().manual_seed(seed)
    return State("7", torch.randn(1, 2, 8, generator=g), torch.randn(1, 2, 2, 4, 4, generator=g),
                 torch.randn(1, 2, 8, generator=g)).to_bytes()


def _tables(n_docs: int = 4) -> dict[str, pa.Table]:
    blobs = [_blob(i) for i in range(n_docs)]
    snapshots = [dict(doc_id=f"doc{i}", chunk_index=2, token_start=32, token_end=48, is_final=False,
                      model_fingerprint="f" * 64, state=b, state_sha256=sha256_bytes(b)) for i, b in enumerate(blobs)]
    embeddings = [dict(doc_id=f"doc{i}", chunk_index=c, token_start=16 * c, token_end=16 * c + 16,
                       embedding=[float(i + c)] * 8, embedding_mean=[0.5] * 8, embedding_state=[-1.0] * 8)
                  for i in range(n_docs) for c in range(3)]
    return {"snapshots": pa.Table.from_pylist(snapshots, schema=SCHEMAS["snapshots"]),
            "embeddings": pa.Table.from_pylist(embeddings, schema=SCHEMAS["embeddings"])}


@pytest.fixture()
def store(tmp_path):
    store = RunStore(tmp_path / "out")
    store.acquire()
    yield store
    store.release()


def test_a_part_is_hashed_in_memory_and_its_record_holds_the_file_digest(store, monkeypatch):
    def no_read_back(path):
        raise AssertionError(f"{path} was read back from disk to hash it")

    monkeypatch.setattr(docstream.files, "sha256_file", no_read_back)
    monkeypatch.setattr(docstream.checksum, "sha256_file", no_read_back)
    tables = _tables()
    store.commit(1, tables, [], [], {})
    (record,) = store.commit_records()
    for name, table in tables.items():
        entry = record["files"][name]
        path = store.out / entry["path"]
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and entry["rows"] == table.num_rows
        assert store.read_table(name).equals(table)
    assert not [p for p in store.out.rglob("*") if p.name.startswith(".") and p.name != ".lock"], "no temp file left"


def test_snapshot_parts_are_uncompressed_one_row_per_group_with_statistics_for_the_filters(store):
    store.commit(1, _tables(), [], [], {})
    meta = pq.ParquetFile(store.out / "snapshots/part-00000001.parquet").metadata
    assert meta.num_row_groups == 4
    for g in range(meta.num_row_groups):
        columns = {meta.row_group(g).column(i).path_in_schema: meta.row_group(g).column(i)
                   for i in range(meta.num_columns)}
        assert columns["state"].compression == "UNCOMPRESSED" and not columns["state"].is_stats_set
        assert columns["doc_id"].statistics.min == f"doc{g}" and columns["chunk_index"].statistics.max == 2
    ref = SnapshotRef("snapshots/part-00000001.parquet", 2, 48)
    assert store.read_snapshot("doc3", ref)["state"] == _blob(3)


def test_embedding_parts_keep_floats_without_statistics(store):
    store.commit(1, _tables(), [], [], {})
    meta = pq.ParquetFile(store.out / "embeddings/part-00000001.parquet").metadata.row_group(0)
    columns = {meta.column(i).path_in_schema: meta.column(i) for i in range(meta.num_columns)}
    assert not columns["embedding.list.element"].is_stats_set and columns["doc_id"].is_stats_set
    assert columns["embedding.list.element"].compression == "ZSTD"
    assert "RLE_DICTIONARY" not in columns["embedding.list.element"].encodings


def test_parts_written_with_the_earlier_settings_still_read(store, monkeypatch):
    import docstream.store.run_store as run_store

    tables = _tables()
    monkeypatch.setattr(run_store, "WRITE_OPTIONS", {**WRITE_OPTIONS, **OLD_WRITE_OPTIONS})
    store.commit(1, tables, [], [], {"doc1": SnapshotRef("snapshots/part-00000001.parquet", 2, 48)})
    monkeypatch.undo()
    old = pq.ParquetFile(store.out / "snapshots/part-00000001.parquet").metadata.row_group(0)
    assert {old.column(i).compression for i in range(old.num_columns)} == {"ZSTD"}, "written the earlier way"
    new = _tables()
    store.commit(2, new, [], [], {})
    for name, table in tables.items():
        assert store.read_table(name).equals(pa.concat_tables([table, new[name]]))
    ref = store.progress().in_flight["doc1"]
    row = store.read_snapshot("doc1", ref)
    assert row["state"] == _blob(1) and row["state_sha256"] == sha256_bytes(_blob(1))


def test_a_changed_uncompressed_state_is_still_caught(store):
    """Without compression a flipped byte in a state still parses: the row's sha256 catches it."""
    store.commit(1, _tables(), [], [], {})
    path = store.out / "snapshots/part-00000001.parquet"
    data = bytearray(path.read_bytes())
    at = data.find(_blob(2))
    assert at > 0, "the state is stored as is"
    data[at + len(_blob(2)) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StoreDamagedError, match="doc2.*fails its checksum"):
        store.read_snapshot("doc2", SnapshotRef("snapshots/part-00000001.parquet", 2, 48))
    with pytest.raises(StoreDamagedError, match="fails its checksum"):
        store.read_table("snapshots")
