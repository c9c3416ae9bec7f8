"""Checks every file of a run folder against the records that name it (``docstream verify``'s run half).

Unlike reading, which stops at the first damaged file, the check goes on and lists every problem with
the file, what is wrong and how to repair it. It never changes anything.
"""
from __future__ import annotations

import json
from pathlib import Path


from docstream.checksum import sha256_bytes
from docstream.store.run_store import MARKER_NAME, PART_NAME, RESTORE, Problem, RunStore, StoreDamagedError
from docstream.store.schemas import SCHEMAS, TABLES

def verify_store(store: RunStore) -> list[Problem]:
    """Every damaged or missing file of the run itself, each with how to repair it (the run half of
    ``docstream verify``; the indexes are checked in :mod:`docstream.tasks.verify`)."""
    out = store.out
    if not (out / MARKER_NAME).exists() and not (out / "commits").is_dir():
        return [Problem(str(out), "is not a docstream run folder (no docstream-run.json, no commits/)",
                        "pass the --out folder of a `docstream run`")]
    problems: list[Problem] = []
    problems += _check_json(out / "config.json", "the run's settings", required=True)
    records, record_problems = store.scan_records()
    problems += record_problems
    named: set[str] = set()
    for record in records:
        for table, entry in record.get("files", {}).items():
            named.add(entry["path"])
            problems += _check_part(store, out / entry["path"], entry["sha256"], table, entry.get("rows"))
    last = max((r["seq"] for r in records), default=0)
    for table in TABLES:
        directory = out / table
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            match = PART_NAME.match(path.name)
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


def _check_part(store: RunStore, path: Path, sha256: str, table: str, rows: int | None) -> list[Problem]:
    try:
        table_data = store.read_part(path, sha256, schema=SCHEMAS[table])
    except StoreDamagedError as err:
        return [Problem(str(path), err.problem, RESTORE)]
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
