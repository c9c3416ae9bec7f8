"""The output directory of a run: Parquet parts committed through an append-only log of commit records.

Layout of ``OUT``::

    docstream-run.json       marks the folder as a docstream run folder (format version); docstream
                             writes into, and cleans up, only folders that are new, empty, or marked
    config.json              the run's settings and the fingerprints of its model and tokenizer
    .lock                    held (flock) by the one run writing here
    commits/00000001.json    commit records 1, 2, 3, ... each written atomically
    commits/LATEST           the sequence number of the newest record (so a deleted record is noticed)
    embeddings/part-00000001.parquet   per-chunk vectors   (doc_id, chunk_index, token_start, token_end,
                                       embedding = last-token hidden state, embedding_mean, embedding_state)
    snapshots/part-00000001.parquet    per-document states (..., model_fingerprint, state, state_sha256)
    documents/part-00000001.parquet    one row per finished document (token counts, repairs made)
    errors/part-00000001.parquet       one row per rejected document (reason, detail)

A part file counts only once a commit record names it; the record is written after its parts, each
with temp file + fsync + rename, so a crash at any moment leaves either a complete commit or files no
record names: parts numbered past the newest record and ``.NAME.tmp-PID`` temp files, the only files
clean-up removes. The record carries each part's sha256 (checked whenever a part is read) and the
progress needed to resume: finished documents, rejected sources, each unfinished document's latest
snapshot, the content hash of each document, and the documents whose earlier rows are retracted
(their rows in parts older than the record no longer count).
"""
from __future__ import annotations

import fcntl
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from docstream.checksum import sha256_bytes
from docstream.files import DamagedFileError, atomic_write_bytes, is_temp_name, read_json, try_lock
from docstream.store.schemas import SCHEMAS, TABLES, WRITE_OPTIONS

__all__ = ["MARKER_NAME", "EncodedPart", "Problem", "Progress", "RunFolderError", "RunLockedError", "RunStore",
           "SnapshotRef", "StoreDamagedError", "encode_part"]

MARKER_NAME = "docstream-run.json"
MARKER = {"format": "docstream run folder", "version": 2}
PART_NAME = re.compile(r"^part-(\d{8})\.parquet$")
#: how to repair a damaged file of the run itself (docstream never rewrites committed files)
RESTORE = "restore it from a backup of the run folder, or run again into a new --out"
_RECORD_NAME = re.compile(r"^(\d{8})\.json$")


class RunLockedError(RuntimeError):
    """Another process is writing the same output directory."""


class RunFolderError(ValueError):
    """The output folder is not one docstream may write into."""


class StoreDamagedError(DamagedFileError):
    """A committed file of the run is missing, unreadable or fails its checksum: ``path`` and ``problem``
    say which and what."""

    def __init__(self, message: str, path: Path | None = None, problem: str = ""):
        super().__init__(message)
        self.path, self.problem = path, problem


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a run folder: the file, what is wrong, and how to repair it."""

    path: str
    problem: str
    fix: str


@dataclass(frozen=True)
class SnapshotRef:
    """Where the latest committed snapshot of an unfinished document lives."""

    part: str
    chunk_index: int
    token_end: int


@dataclass
class Progress:
    """What the committed records say has been done."""

    finished: set[str] = field(default_factory=set)
    rejected_sources: set[str] = field(default_factory=set)
    in_flight: dict[str, SnapshotRef] = field(default_factory=dict)
    #: content sha256 of each document the run has rows of (finished or in flight)
    content: dict[str, str] = field(default_factory=dict)
    #: documents recorded as gone from the input while unfinished (their rows retracted)
    gone: set[str] = field(default_factory=set)
    #: content sha256 of sources the engine rejected (the same content is not tried again)
    rejected_content: dict[str, str] = field(default_factory=dict)
    last_seq: int = 0


def damaged(path: Path, what: str) -> StoreDamagedError:
    """The error for a damaged file of the run at ``path``'s run folder."""
    return StoreDamagedError(f"{path}: {what}. The run folder is damaged: see `docstream verify --run "
                             f"{_run_root(path)}` for what is wrong and how to repair it", path, what)


def _run_root(path: Path) -> Path:
    for parent in path.parents:
        if (parent / MARKER_NAME).exists() or (parent / "commits").is_dir():
            return parent
    return path.parent


class RunStore:
    """Reads and writes one run's output directory."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self._lock_fd: int | None = None

    # -- ownership and locking -----------------------------------------------------------------
    def acquire(self) -> None:
        """Take the directory's lock (released by :meth:`release` or when the process dies), after
        checking that the folder is new, empty, or a docstream run folder; remove what an interrupted
        commit left."""
        self.check_folder()
        self.out.mkdir(parents=True, exist_ok=True)
        fd = try_lock(self.out / ".lock")
        if fd is None:
            raise RunLockedError(f"{self.out} is being written by another docstream run "
                                 f"(its lock {self.out / '.lock'} is held); wait for it to finish")
        self._lock_fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._upgrade_marker()
            for table in (*TABLES, "commits"):
                (self.out / table).mkdir(exist_ok=True)
            self._remove_uncommitted()
        except BaseException:
            self.release()
            raise

    def check_folder(self) -> None:
        """``RunFolderError`` unless ``out`` is missing, empty, or a folder docstream made."""
        if not self.out.exists():
            return
        if not self.out.is_dir():
            raise RunFolderError(f"--out {self.out} is a file, not a folder; pass a new or empty folder")
        marker = self.out / MARKER_NAME
        if marker.exists():
            data = read_json(marker, "the run folder marker", "restore it, or use a new --out folder")
            if not isinstance(data, dict) or data.get("format") != MARKER["format"]:
                raise RunFolderError(f"{marker} is not a docstream run folder marker; use a new or empty --out")
            if data.get("version", 0) > MARKER["version"]:
                raise RunFolderError(f"{self.out} was written by a newer docstream (folder format "
                                     f"{data.get('version')}, this one reads {MARKER['version']}); upgrade docstream")
            return
        if self._is_legacy_run():
            return
        entries = sorted(p.name for p in self.out.iterdir() if p.name != ".lock")
        if entries:
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise RunFolderError(f"--out {self.out} is not empty and was not made by docstream (it has no "
                                 f"{MARKER_NAME}; it holds {shown}); docstream writes only into a new or empty "
                                 f"folder or one of its own run folders: pass another --out")

    def _is_legacy_run(self) -> bool:
        """A run folder written before the marker existed: config.json plus commit records."""
        return (self.out / "config.json").is_file() and (self.out / "commits").is_dir()

    def _upgrade_marker(self) -> None:
        marker = self.out / MARKER_NAME
        if marker.exists():
            return
        legacy = self._is_legacy_run()
        atomic_write_bytes(marker, _dumps(MARKER))
        if legacy and not (self.out / "commits" / "LATEST").exists():
            records = self._record_paths()
            if records:
                atomic_write_bytes(self.out / "commits" / "LATEST", f"{records[-1][0]}\n".encode())

    def release(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- config --------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.out / "config.json"

    def read_config(self) -> dict[str, Any] | None:
        if not self.config_path.exists():
            if self._record_paths():
                raise damaged(self.config_path, "missing, although the folder holds commits (the settings "
                                                "a resume must match are gone)")
            return None
        config = read_json(self.config_path, "the run's settings", RESTORE)
        if not isinstance(config, dict) or "identity" not in config:
            raise damaged(self.config_path, "does not hold a run's settings")
        return config

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_bytes(self.config_path, _dumps(config, indent=2))

    # -- commits -------------------------------------------------------------------------------
    def _record_paths(self) -> list[tuple[int, Path]]:
        directory = self.out / "commits"
        if not directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _RECORD_NAME.match(p.name))]
        return sorted(found)

    def newest_record(self) -> int:
        """The number of the newest commit record file (0 when there is none), from the file names alone: a
        cheap check of whether something derived from the run is up to date. Reading the records
        (:meth:`commit_records`) is what checks them."""
        return max((seq for seq, _ in self._record_paths()), default=0)

    def scan_records(self) -> tuple[list[dict[str, Any]], list[Problem]]:
        """Every readable commit record in order, and each problem of the record sequence: a gap, an
        unreadable record, or a ``commits/LATEST`` that disagrees with the records (a missing newest
        record). :meth:`commit_records` refuses the first problem; ``docstream verify`` lists them all."""
        directory = self.out / "commits"
        found = dict(self._record_paths())
        newest = max(found, default=0)
        problems: list[Problem] = []
        latest = directory / "LATEST"
        if latest.exists():
            text = latest.read_text(errors="replace").strip()
            if not text.isdigit():
                problems.append(Problem(str(latest), f"holds {text[:40]!r}, not a commit number",
                                        f"write the newest commit number ({newest}) into it"))
            elif int(text) > newest:
                problems.append(Problem(str(directory / f"{int(text):08d}.json"),
                                        f"commit {text} is the newest recorded (commits/LATEST), but the records "
                                        f"end at {newest}", RESTORE))
            elif newest > int(text) + 1:
                problems.append(Problem(str(latest), f"says commit {text} is the newest, but the records go to "
                                                     f"{newest}", f"write the newest commit number ({newest}) into it"))
        records = []
        for seq in range(1, newest + 1):
            path = directory / f"{seq:08d}.json"
            if seq not in found:
                problems.append(Problem(str(path), f"commit record {seq} is missing (the records jump past it); "
                                                   f"the parts it named would be lost", RESTORE))
                continue
            try:
                record = json.loads(path.read_bytes())
            except (OSError, ValueError) as err:
                problems.append(Problem(str(path), f"commit record {seq} cannot be parsed ({err})", RESTORE))
                continue
            if not isinstance(record, dict) or record.get("seq") != seq or not isinstance(record.get("files"), dict):
                problems.append(Problem(str(path), f"is not commit record {seq}", RESTORE))
                continue
            records.append(record)
        return records, problems

    def commit_records(self) -> list[dict[str, Any]]:
        """Committed records in order of their sequence number, after checking that none is missing:
        :class:`StoreDamagedError` names the first gap, unreadable record or missing newest record."""
        records, problems = self.scan_records()
        if problems:
            raise damaged(Path(problems[0].path), problems[0].problem)
        return records

    def progress(self) -> Progress:
        progress = Progress()
        for record in self.commit_records():
            progress.last_seq = record["seq"]
            for doc_id in record.get("retracted", []):
                progress.finished.discard(doc_id)
                progress.in_flight.pop(doc_id, None)
                progress.content.pop(doc_id, None)
            progress.gone.update(record.get("gone", []))
            progress.rejected_sources.difference_update(record.get("cleared", []))
            progress.finished.update(record["finished"])
            progress.rejected_sources.update(record["rejected_sources"])
            progress.rejected_content.update(record.get("rejected_content", {}))
            progress.content.update(record.get("content", {}))
            for doc_id in record["finished"]:
                progress.in_flight.pop(doc_id, None)
                progress.gone.discard(doc_id)
            for doc_id, ref in record["in_flight"].items():
                progress.in_flight[doc_id] = SnapshotRef(**ref)
                progress.gone.discard(doc_id)
        return progress

    def commit(self, seq: int, tables: dict[str, pa.Table | EncodedPart], finished: list[str],
               rejected_sources: list[str], in_flight: dict[str, SnapshotRef], content: dict[str, str] | None = None,
               retracted: list[str] = (), gone: list[str] = (),
               rejected_content: dict[str, str] | None = None, cleared: list[str] = ()) -> None:
        """Write the non-empty ``tables`` (Arrow tables, or parts :func:`encode_part` made) as part ``seq``,
        then the commit record that makes them count.

        ``retracted`` documents' rows in earlier parts stop counting from this commit on; ``gone``
        records documents that left the input unfinished; ``content`` maps documents to content hashes,
        ``rejected_content`` sources the engine rejected to theirs; ``cleared`` sources rejected before
        are processed again (their earlier error rows stop counting).
        """
        files = {}
        for name, table in tables.items():
            part = table if isinstance(table, EncodedPart) else encode_part(name, table)
            if part.rows == 0:
                continue
            rel = f"{name}/part-{seq:08d}.parquet"
            # snapshot parts are big and read back rarely: they leave the page cache once durable
            atomic_write_bytes(self.out / rel, part.data, drop_cache=name == "snapshots")
            files[name] = {"path": rel, "rows": part.rows, "sha256": part.sha256 or sha256_bytes(part.data)}
        record = {"seq": seq, "files": files, "finished": finished, "rejected_sources": rejected_sources,
                  "in_flight": {d: vars(ref) for d, ref in in_flight.items()}, "content": content or {},
                  "retracted": list(retracted), "gone": list(gone), "rejected_content": rejected_content or {},
                  "cleared": list(cleared)}
        atomic_write_bytes(self.out / "commits" / f"{seq:08d}.json", _dumps(record))
        atomic_write_bytes(self.out / "commits" / "LATEST", f"{seq}\n".encode())

    # -- reading -------------------------------------------------------------------------------
    def committed_parts(self, table: str, records: list[dict[str, Any]] | None = None) -> list[tuple[int, Path, str]]:
        """``(seq, path, sha256)`` of every committed part of ``table``, in commit order."""
        records = list(self.commit_records()) if records is None else records
        return [(r["seq"], self.out / r["files"][table]["path"], r["files"][table]["sha256"])
                for r in records if table in r["files"]]

    def committed_files(self, table: str) -> list[Path]:
        return [path for _, path, _ in self.committed_parts(table)]

    def read_part(self, path: Path, sha256: str, **read_options: Any) -> pa.Table:
        """A committed part, after checking its sha256 against its commit record (the file is read once:
        hashed and parsed from the same bytes)."""
        if not path.is_file():
            raise damaged(path, "is missing (a commit record names it)")
        data = path.read_bytes()
        if sha256_bytes(data) != sha256:
            raise damaged(path, "fails its checksum (its bytes changed since it was committed)")
        try:
            return pq.read_table(pa.BufferReader(data), **read_options)
        except (OSError, pa.ArrowException) as err:
            raise damaged(path, f"cannot be read as Parquet ({err})") from err

    def read_table(self, table: str, columns: list[str] | None = None) -> pa.Table:
        """Every committed, live row of ``table`` (rows of retracted documents left out; an empty table
        with the schema when there are none). Each part is checked against its checksum."""
        records = list(self.commit_records())
        dead = retracted_before(records, "cleared" if table == "errors" else "retracted")
        key = "source" if table == "errors" else "doc_id"
        wanted = None if columns is None else list(dict.fromkeys([key, *columns]))
        pieces = []
        for seq, path, sha in self.committed_parts(table, records):
            part = self.read_part(path, sha, schema=SCHEMAS[table], columns=wanted)
            part = drop_retracted(part, seq, dead, "source" if table == "errors" else "doc_id")
            pieces.append(part.select(columns) if columns else part)
        if not pieces:
            empty = SCHEMAS[table].empty_table()
            return empty.select(columns) if columns else empty
        return pa.concat_tables(pieces)

    def read_snapshot(self, doc_id: str, ref: SnapshotRef) -> dict[str, Any]:
        """The committed snapshot row ``ref`` points at, its state checksum verified (the row's own
        sha256 covers the state bytes, so the rest of the part is not read)."""
        path = self.out / ref.part
        if not path.is_file():
            raise damaged(path, "is missing (a commit record names it)")
        try:
            table = pq.read_table(path, schema=SCHEMAS["snapshots"],
                                  filters=[("doc_id", "=", doc_id), ("chunk_index", "=", ref.chunk_index)])
        except (OSError, pa.ArrowException) as err:
            raise damaged(path, f"cannot be read as Parquet ({err})") from err
        rows = table.to_pylist()
        if len(rows) != 1:
            raise damaged(path, f"holds {len(rows)} snapshots of {doc_id!r} at chunk {ref.chunk_index}, not 1")
        row = rows[0]
        if sha256_bytes(row["state"]) != row["state_sha256"]:
            raise damaged(path, f"the snapshot of {doc_id!r} at chunk {ref.chunk_index} fails its checksum")
        return row

    # -- clean-up ------------------------------------------------------------------------------
    def _remove_uncommitted(self) -> None:
        """Delete what an interrupted commit left: docstream's temp files, and parts numbered past the
        newest commit record. Nothing else is ever removed (a part no record names below that number
        means a record is missing: :meth:`commit_records` reports it)."""
        last = max((r["seq"] for r in self.commit_records()), default=0)
        for directory in (self.out, *(self.out / t for t in (*TABLES, "commits"))):
            for path in directory.iterdir():
                if not path.is_file() or path.is_symlink():
                    continue
                match = PART_NAME.match(path.name)
                if is_temp_name(path.name) or (directory != self.out and match and int(match.group(1)) > last):
                    path.unlink()


@dataclass(frozen=True)
class EncodedPart:
    """A part's Parquet bytes, built in memory, with their sha256 and row count: everything
    :meth:`RunStore.commit` needs to write it (so encoding can run apart from the disk writes)."""

    data: Any  # bytes-like (a pyarrow Buffer)
    sha256: str | None  # None: not hashed yet (RunStore.commit hashes it)
    rows: int


def encode_part(name: str, table: pa.Table, hashed: bool = True) -> EncodedPart:
    """``table`` as the Parquet bytes of a part of table ``name`` (its write settings), hashed once in
    memory (unless not ``hashed``: then :meth:`RunStore.commit` hashes them): the file is never read
    back to hash it."""
    if table.num_rows == 0:
        return EncodedPart(b"", "", 0)
    sink = pa.BufferOutputStream()
    pq.write_table(table.cast(SCHEMAS[name]), sink, **WRITE_OPTIONS[name])
    data = sink.getvalue()  # pa.Buffer: hashed and written through the buffer protocol, not copied
    return EncodedPart(data, sha256_bytes(data) if hashed else None, table.num_rows)


def retracted_before(records: list[dict[str, Any]], field_name: str = "retracted") -> dict[str, int]:
    """For each retracted document (or, with ``field_name="cleared"``, each cleared rejected source), the
    newest commit that retracted it: its rows in parts older than that commit no longer count."""
    dead: dict[str, int] = {}
    for record in records:
        for key in record.get(field_name, []):
            dead[key] = record["seq"]
    return dead


def drop_retracted(table: pa.Table, seq: int, dead: dict[str, int], column: str = "doc_id") -> pa.Table:
    """``table`` (rows of part ``seq``) without the rows whose ``column`` a later commit retracted."""
    victims = [key for key, at in dead.items() if at > seq]
    if not victims or column not in table.column_names:
        return table
    import pyarrow.compute as pc

    return table.filter(pc.invert(pc.is_in(table.column(column), value_set=pa.array(victims, pa.string()))))


def _dumps(value: Any, indent: int | None = None) -> bytes:
    import json

    return json.dumps(value, sort_keys=True, indent=indent).encode()
