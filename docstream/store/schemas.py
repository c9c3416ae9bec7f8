"""The schemas of every table docstream writes: a run's four tables, the summaries, and an index's id
table. Readers and writers take them from here, so a column's type is stated once."""
from __future__ import annotations

import pyarrow as pa

TABLES = ("embeddings", "snapshots", "documents", "errors")

SCHEMAS = {
    "embeddings": pa.schema([("doc_id", pa.string()), ("chunk_index", pa.int32()), ("token_start", pa.int64()),
                             ("token_end", pa.int64()), ("embedding", pa.list_(pa.float32())),
                             ("embedding_mean", pa.list_(pa.float32())), ("embedding_state", pa.list_(pa.float32())),
                             ("tokens", pa.list_(pa.int32()))]),
    "snapshots": pa.schema([("doc_id", pa.string()), ("chunk_index", pa.int32()), ("token_start", pa.int64()),
                            ("token_end", pa.int64()), ("is_final", pa.bool_()), ("model_fingerprint", pa.string()),
                            ("state", pa.binary()), ("state_sha256", pa.string())]),
    "documents": pa.schema([("doc_id", pa.string()), ("source", pa.string()), ("n_tokens", pa.int64()),
                            ("n_chunks", pa.int32()), ("invalid_utf8_bytes", pa.int64()), ("nul_chars", pa.int64())]),
    "errors": pa.schema([("doc_id", pa.string()), ("source", pa.string()), ("reason", pa.string()),
                         ("detail", pa.string())]),
}
# Write settings chosen with bench/bench_snapshots.py (numbers: bench/RESULTS.md, "Snapshot size"). All
# are per file, so parts written with earlier settings (zstd everywhere, default statistics) still read.
# Snapshots: one row per row group makes reading one document's state ~15x faster than groups of 16.
# States barely compress: zstd saved 7% of the bytes for 5x the write time (6.0 vs 1.2 ms per RWKV-7
# 169M state), and with one row per group each small column holds one value, so nothing is compressed.
# Min/max statistics of a multi-MB state cost more than writing it: statistics only for the small
# columns (doc_id and chunk_index are what read_snapshot's filters skip row groups by).
# Embeddings: zstd saves 8% of the float lists at little cost; dictionary encoding of the floats made
# parts 12% larger than raw and 2.5x slower to write, so only doc_id gets a dictionary; no statistics
# for the float lists. The chunk's token ids (``tokens``, added after the first release: older parts lack the
# column) are what search indexes the chunk's text from.
_SNAPSHOT_SMALL = [name for name in SCHEMAS["snapshots"].names if name != "state"]
_EMBEDDING_FLOATS = ("embedding", "embedding_mean", "embedding_state", "tokens")
WRITE_OPTIONS = {
    "embeddings": dict(compression="zstd", row_group_size=8192, use_dictionary=["doc_id"],
                       write_statistics=[n for n in SCHEMAS["embeddings"].names if n not in _EMBEDDING_FLOATS]),
    "snapshots": dict(compression="none", row_group_size=1, use_dictionary=["doc_id", "model_fingerprint"],
                      write_statistics=_SNAPSHOT_SMALL),
    "documents": dict(compression="zstd"),
    "errors": dict(compression="zstd"),
}

#: ``docstream summarize`` output: one row per summary
SUMMARY_SCHEMA = pa.schema([
    ("doc_id", pa.string()), ("chunk_index", pa.int32()), ("token_end", pa.int64()), ("is_final", pa.bool_()),
    ("template", pa.string()), ("instruction_first", pa.bool_()), ("prefix", pa.string()), ("prompt", pa.string()),
    ("sampling", pa.string()), ("seed", pa.int64()), ("text", pa.string()), ("n_tokens", pa.int32()),
    ("finish_reason", pa.string()), ("model_fingerprint", pa.string()), ("created_at", pa.string()),
])
#: an index's id table: row i describes the vector with FAISS id i
ID_TABLE_SCHEMA = pa.schema([("doc_id", pa.string()), ("chunk_index", pa.int32()), ("token_start", pa.int64()),
                             ("token_end", pa.int64())])
