"""Read-only access to a run's settings and committed snapshots (document states), for the task heads.

A run stores one snapshot per document every ``snapshot_every`` chunks and at the document's end
(see :mod:`docstream.store.run_store`). Here they are listed without reading the state bytes, and
loaded one at a time through :meth:`RunStore.read_snapshot`, which verifies each state's checksum.
Only rows that a commit record names are seen, so a run still writing the directory does no harm.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from docstream.corpus.chunk_id import ID_FIELDS, ChunkId
from docstream.model import State
from docstream.store.run_store import RunStore, SnapshotRef, drop_retracted, retracted_before
from docstream.store.schemas import SCHEMAS

_INFO_COLUMNS = [*ID_FIELDS, "is_final", "model_fingerprint"]


@dataclass(frozen=True)
class SnapshotInfo(ChunkId):
    """Where one committed snapshot lives and what it covers: the state after tokens ``[0, token_end)``,
    taken at the end of the chunk its :class:`~docstream.corpus.chunk_id.ChunkId` fields name."""

    is_final: bool
    model_fingerprint: str
    part: str

    @property
    def ref(self) -> SnapshotRef:
        return SnapshotRef(self.part, self.chunk_index, self.token_end)


def list_snapshots(out: str | Path, doc_ids: Iterable[str] | None = None) -> dict[str, list[SnapshotInfo]]:
    """Every committed snapshot of the run at ``out`` (of ``doc_ids`` only, when given), per document,
    sorted by chunk index; documents in order of their first committed snapshot. State bytes are not read."""
    wanted = None if doc_ids is None else set(doc_ids)
    by_doc: dict[str, list[SnapshotInfo]] = {}
    store = RunStore(out)
    records = list(store.commit_records())
    dead = retracted_before(records)
    for seq, path, sha in store.committed_parts("snapshots", records):
        table = store.read_part(path, sha, columns=_INFO_COLUMNS, schema=SCHEMAS["snapshots"])
        part = path.relative_to(store.out).as_posix()
        for row in drop_retracted(table, seq, dead).to_pylist():
            if wanted is None or row["doc_id"] in wanted:
                by_doc.setdefault(row["doc_id"], []).append(SnapshotInfo(**row, part=part))
    for infos in by_doc.values():
        infos.sort(key=lambda info: info.chunk_index)
    return by_doc


def final_snapshot(doc_id: str, infos: list[SnapshotInfo]) -> SnapshotInfo:
    """The snapshot taken at the end of the document; ``ValueError`` when the run has not finished it."""
    for info in infos:
        if info.is_final:
            return info
    raise ValueError(f"document {doc_id!r} has no final snapshot yet (the run has not finished it); its "
                     f"snapshots are at chunks {describe_chunks(infos)}: pass one of them as the chunk")


def snapshot_at(doc_id: str, infos: list[SnapshotInfo], chunk_index: int) -> SnapshotInfo:
    """The snapshot taken after chunk ``chunk_index``; ``ValueError`` naming the chunks that have one."""
    for info in infos:
        if info.chunk_index == chunk_index:
            return info
    raise ValueError(f"document {doc_id!r} has no snapshot at chunk {chunk_index}; snapshots exist only at "
                     f"chunks {describe_chunks(infos)} (every snapshot_every chunks and at the end): "
                     f"pick one of those")


def describe_chunks(infos: list[SnapshotInfo]) -> str:
    """``"1, 3, 5 (final)"``: the chunk indices of ``infos`` for messages."""
    if not infos:
        return "(none)"
    return ", ".join(f"{i.chunk_index}{' (final)' if i.is_final else ''}" for i in infos)


def load_snapshot(out: str | Path, info: SnapshotInfo, device: str = "cpu") -> State:
    """The state of ``info`` (one batch row), its checksum verified."""
    row = RunStore(out).read_snapshot(info.doc_id, info.ref)
    return State.from_bytes(row["state"], device)
