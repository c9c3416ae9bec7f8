"""Checks every file of a run folder against the records that name it (``docstream verify``'s run half).

Unlike reading, which stops at the first damaged file, the check goes on and lists every problem with
the file, what is wrong and how to repair it. It never changes anything.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from docstream.checksum import sha256_bytes, sha256_file
from docstream.store.run_store import MARKER_NAME, Problem, RunStore
from docstream.store.schemas import SCHEMAS, TABLES

_PART_NAME = re.compile(r"^part-(\d{8})\.parquet$")
RESTORE = "restore it from a backup of the run folder, or run again into a new --out"


def verify_store(store: RunStore) -> list[Problem]:
    """Every damaged or missing file of the run itself, each with how to repair it (the run half of
    ``docstream verify``; the indexes are checked in :mod:`docstream.tasks.verify`)."""
    out = store.out
    if not (out / MARKER_NAME).exists() and not (out / "commits").is_dir():
        return [Problem(str(out), "is not a docstream run folder (no docstream-run.json, no commits/)",
                        "pass the --out folder of a `docstream run`")]
    problems: list[Problem] = []
    problems += _check_json(out / "config.json", "the run's settings", required=True)
    records, record_problems = _records(out)
    problems += record_problems
    named: set[str] = set()
    for record in records:
        for table, entry in record.get("files", {}).items():
            named.add(entry["path"])
            problems += _check_part(out / entry["path"], entry["sha256"], table, entry.get("rows"))
    last = max((r["seq"] for r in records), default=0)
    for table in TABLES:
        directory = out / table
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            match = _PART_NAME.match(path.name)
            if match and int(match.group(1)) <= last and f"{table}/{path.name}" not in named:
                problems.append(Problem(str(path), "no commit record names this part, though its number is "
                                                   "committed: the record that named it is missing or damaged",
                                        RESTORE))
    return problems


def _check_json(path: Path, what: str, required: bool) -> list[Problem]:
    if not path.exists():
        return [Problem(str(path), f"{what}: missing", RESTORE)] if required else []
    try:
        json.loads(path.read_bytes())
    except (OSError, ValueError) as err:
        return [Problem(str(path), f"{what}: cannot be parsed ({err})", RESTORE)]
    return []


def _records(out: Path) -> tuple[list[dict], list[Problem]]:
    """The readable commit records, and the problems of the record sequence."""
    problems: list[Problem] = []
    directory = out / "commits"
    numbers = sorted(int(p.stem) for p in directory.glob("*.json") if p.stem.isdigit() and len(p.stem) == 8)
    latest_path = directory / "LATEST"
    newest = numbers[-1] if numbers else 0
    if latest_path.exists():
        text = latest_path.read_text(errors="replace").strip()
        if not text.isdigit():
            problems.append(Problem(str(latest_path), f"holds {text[:40]!r}, not a commit number",
                                    f"write the newest commit number ({newest}) into it"))
        elif int(text) > newest:
            missing = ", ".join(str(n) for n in range(newest + 1, int(text) + 1))
            problems.append(Problem(str(directory / f"{int(text):08d}.json"),
                                    f"commit record(s) {missing} are missing (LATEST says {text})",
                                    RESTORE))
    records = []
    for expected in range(1, newest + 1):
        path = directory / f"{expected:08d}.json"
        if expected not in numbers:
            problems.append(Problem(str(path), f"commit record {expected} is missing (the records jump past it)",
                                    RESTORE))
            continue
        try:
            record = json.loads(path.read_bytes())
        except (OSError, ValueError) as err:
            problems.append(Problem(str(path), f"cannot be parsed ({err})", RESTORE))
            continue
        if not isinstance(record, dict) or record.get("seq") != expected or not isinstance(record.get("files"), dict):
            problems.append(Problem(str(path), f"is not commit record {expected}", RESTORE))
            continue
        records.append(record)
    return records, problems


def _check_part(path: Path, sha256: str, table: str, rows: int | None) -> list[Problem]:
    if not path.is_file():
        return [Problem(str(path), "is missing (a commit record names it)", RESTORE)]
    if sha256_file(path) != sha256:
        return [Problem(str(path), "fails its checksum: its bytes changed since it was committed",
                        RESTORE)]
    try:
        table_data = pq.read_table(path, schema=SCHEMAS[table])
    except (OSError, pa.ArrowException) as err:
        return [Problem(str(path), f"cannot be read as Parquet ({err})", RESTORE)]
    problems = []
    if rows is not None and table_data.num_rows != rows:
        problems.append(Problem(str(path), f"holds {table_data.num_rows} rows, its commit record says {rows}", RESTORE))
    if table == "snapshots":
        states = table_data.column("state").to_pylist()
        sums = table_data.column("state_sha256").to_pylist()
        docs = table_data.column("doc_id").to_pylist()
        bad = [doc for doc, state, digest in zip(docs, states, sums) if sha256_bytes(state) != digest]
        if bad:
            problems.append(Problem(str(path), f"{len(bad)} snapshot state(s) fail their checksum "
                                               f"(documents {', '.join(map(repr, bad[:3]))})", RESTORE))
    return problems
