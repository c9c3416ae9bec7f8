"""The schemas of every table docstream writes: a run's four tables, the summaries, and an index's id
table. Readers and writers take them from here, so a column's type is stated once."""
from __future__ import annotations

import pyarrow as pa

TABLES = ("embeddings", "snapshots", "documents", "errors")

SCHEMAS = {
    "embeddings": pa.schema([("doc_id", pa.string()), ("chunk_index", pa.int32()), ("token_start", pa.int64()),
                             ("token_end", pa.int64()), ("embedding", pa.list_(pa.float32())),
                             ("embedding_mean", pa.list_(pa.float32())), ("embedding_state", pa.list_(pa.float32()))]),
    "snapshots": pa.schema([("doc_id", pa.string()), ("chunk_index", pa.int32()), ("token_start", pa.int64()),
                            ("token_end", pa.int64()), ("is_final", pa.bool_()), ("model_fingerprint", pa.string()),
                            ("state", pa.binary()), ("state_sha256", pa.string())]),
    "documents": pa.schema([("doc_id", pa.string()), ("source", pa.string()), ("n_tokens", pa.int64()),
                            ("n_chunks", pa.int32()), ("invalid_utf8_bytes", pa.int64()), ("nul_chars", pa.int64())]),
    "errors": pa.schema([("doc_id", pa.string()), ("source", pa.string()), ("reason", pa.string()),
                         ("detail", pa.string())]),
}
# Snapshot settings chosen with bench/bench_snapshots.py on 169M-shape fp32 states (see bench/RESULTS.md):
# zstd saves ~7% over raw (recurrent states barely compress) and one row per row group makes reading a
# single document's snapshot ~15x faster than groups of 16, for ~1% more bytes.
WRITE_OPTIONS = {
    "embeddings": dict(compression="zstd", row_group_size=8192),
    "snapshots": dict(compression="zstd", row_group_size=1, use_dictionary=["doc_id", "model_fingerprint"]),
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
