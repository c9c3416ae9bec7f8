"""``docstream verify``: is a run folder sound -- its own committed files and the indexes derived from them
(the FAISS indexes of vectors and the lexical index)?

Python use::

    from docstream.tasks.verify import verify_run

    report = verify_run("out/")                 # checks only, changes nothing
    for problem in report.problems:
        print(problem.path, problem.problem, problem.fix)
    report = verify_run("out/", repair=True)    # also rebuilds damaged indexes and updates stale ones

The run's own files (commit records, parts, snapshots, config.json) are checked by
:meth:`RunStore.verify <docstream.store.run_store.RunStore.verify>` and are never changed here: for them
the report only says what the user can do. Indexes are derived data, so repairing one means
rebuilding it from the run's committed embeddings.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

from docstream.files import locked
from docstream.model.pooling import POOLINGS
from docstream.store.check import verify_store
from docstream.store.reader import last_seq
from docstream.store.run_store import Problem, RunStore
from docstream.tasks.index import (
    DEFAULT_FACTORY,
    EMBEDDER,
    META_NAME,
    IndexMeta,
    embedder_identity,
    index_dir,
    read_generation,
    run_identity,
    update_index,
)
from docstream.tasks.index_files import IndexDamagedError, file_problems, rebuild_hint

#: the folders under ``OUT/index/`` docstream writes: one per dense vector kind, and the lexical index
DENSE = (*POOLINGS, EMBEDDER)
LEXICAL = "lexical"
INDEXES = (*DENSE, LEXICAL)

__all__ = ["EXIT_PROBLEMS", "EXIT_SOUND", "VerifyReport", "check_index", "print_report", "verify_run"]

#: exit status of ``docstream verify`` when everything checked is sound
EXIT_SOUND = 0
#: exit status when problems were found (and, with --repair, some remain)
EXIT_PROBLEMS = 1


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify_run` found: ``problems`` left (after repairs, with ``repair``), what it
    ``repaired``, ``notes`` that need no action, and how much was checked."""

    out: Path
    problems: tuple[Problem, ...]
    repaired: tuple[str, ...]
    notes: tuple[str, ...]
    commits: int
    parts: int
    indexes: int

    @property
    def sound(self) -> bool:
        return not self.problems

    @property
    def exit_code(self) -> int:
        return EXIT_SOUND if self.sound else EXIT_PROBLEMS

    def lines(self) -> list[str]:
        """One line per repair, note and problem (the file, what is wrong, how to repair it), then the
        summary when sound."""
        lines = [f"repaired: {line}" for line in self.repaired] + [f"note: {line}" for line in self.notes]
        lines += [f"{p.path}: {p.problem}; fix: {p.fix}" for p in self.problems]
        if self.sound:
            lines.append(f"sound: {_count(self.commits, 'commit')}, {_count(self.parts, 'part')}, "
                         f"{_count(self.indexes, 'index', 'indexes')} checked")
        return lines

    def to_json(self) -> dict:
        return {"out": str(self.out), "sound": self.sound, "problems": [asdict(p) for p in self.problems],
                "repaired": list(self.repaired), "notes": list(self.notes), "commits": self.commits,
                "parts": self.parts, "indexes": self.indexes}


def verify_run(out: str | Path, repair: bool = False) -> VerifyReport:
    """Check the run at ``out`` and every index under ``out/index/``; with ``repair``, rebuild the indexes
    that have problems, bring those behind the run up to date, and check again.

    Never deletes or rewrites the run's own committed files.
    """
    out = Path(out)
    run_problems = verify_store(RunStore(out))
    checks = _check_indexes(out)
    repaired: list[str] = []
    if repair:
        failed = []
        for pooling, (problems, behind) in checks.items():
            if pooling in INDEXES and (problems or behind):
                outcome = _repair(out, pooling, rebuild=bool(problems))
                (repaired if isinstance(outcome, str) else failed).append(outcome)
        checks = _check_indexes(out)
        run_problems += failed
    problems = list(run_problems) + [p for found, _ in checks.values() for p in found]
    notes = [f"{out / 'index' / pooling}: {behind} commits behind the run; the next `docstream index` or search "
             f"adds them" for pooling, (_, behind) in checks.items() if behind]
    commits, parts = _counts(out)
    return VerifyReport(out, tuple(problems), tuple(repaired), tuple(notes), commits, parts,
                        sum(1 for pooling in checks if pooling in INDEXES))


def check_index(out: str | Path, pooling: str, run_seq: int | None = None,
                identity: str | None = None) -> tuple[list[Problem], int]:
    """The problems of the ``pooling`` index of the run at ``out``, and how many commits it is behind
    the run's newest ``run_seq``. ``run_seq`` / ``identity`` None skip the checks that need them (the
    run's own records or config are damaged: the run's check reports that)."""
    directory = index_dir(out, pooling)
    meta_path = directory / META_NAME
    hint = rebuild_hint(directory)
    if not directory.is_dir():
        return [], 0
    if not meta_path.exists():
        leftovers = [p.name for p in directory.iterdir() if p.name != ".lock"]
        problem = f"is missing, so the files here ({', '.join(sorted(leftovers))}) are no usable index"
        return ([Problem(str(meta_path), problem, hint)] if leftovers else []), 0
    with locked(directory, exclusive=False):
        try:
            meta = IndexMeta.from_json(meta_path.read_bytes(), meta_path)
        except IndexDamagedError as err:
            return [Problem(err.path, err.problem, err.fix)], 0
        hint = rebuild_hint(directory, meta.factory, meta.metric)
        problems = [Problem(str(path), what, hint) for path, what in file_problems(directory, meta.files())]
        if not meta.verifiable:
            problems.append(Problem(str(meta_path), "was written by an older docstream and records no checksums, "
                                                    "so its files cannot be verified", hint))
        if not problems:
            try:
                read_generation(directory, meta, verify=False)
            except IndexDamagedError as err:
                problems.append(Problem(err.path, err.problem, err.fix))
    if identity is not None and meta.embedder is not None:
        identity = embedder_identity(identity, meta.embedder)
    if identity is not None and meta.run_identity != identity:
        problems.append(Problem(str(meta_path), "was built from another run, or from this run with other "
                                                "settings or another model", hint))
    if run_seq is not None and meta.seq > run_seq:
        problems.append(Problem(str(meta_path), f"includes commit {meta.seq} but the run's newest commit is "
                                                f"{run_seq} (the run folder was rewritten)", hint))
    behind = run_seq - meta.seq if run_seq is not None and not problems else 0
    return problems, behind


def _check_indexes(out: Path) -> dict[str, tuple[list[Problem], int]]:
    """``check_index`` of every directory under ``out/index/`` (others are reported, never touched)."""
    root = out / "index"
    if not root.is_dir():
        return {}
    run_seq, identity = _run_facts(out)
    checks = {}
    for path in sorted(root.iterdir()):
        if path.is_dir() and path.name in DENSE:
            checks[path.name] = check_index(out, path.name, run_seq, identity)
        elif path.is_dir() and path.name == LEXICAL:
            checks[path.name] = _check_lexical(out, run_seq, identity)
        else:
            checks[path.name] = ([Problem(str(path), f"is not an index docstream writes (those are "
                                                     f"{', '.join(INDEXES)})",
                                          "move it out of the run folder if you put it there")], 0)
    return checks


def _check_lexical(out: Path, run_seq: int | None, identity: str | None) -> tuple[list[Problem], int]:
    """The problems of the lexical index and how many commits it is behind the run."""
    from docstream.tasks.lexical import check_lexical, lexical_dir, read_lexical_meta
    from docstream.tasks.lexical import rebuild_hint as lexical_hint

    hint = lexical_hint(lexical_dir(out))
    problems = [Problem(str(path), what, hint) for path, what in check_lexical(out, run_seq, identity)]
    meta = None if problems else read_lexical_meta(out)
    behind = run_seq - meta.seq if meta is not None and run_seq is not None else 0
    return problems, behind


def _run_facts(out: Path) -> tuple[int | None, str | None]:
    """The run's newest commit and identity digest, None for what its damaged files do not tell."""
    try:
        seq = last_seq(out)
    except (OSError, ValueError, KeyError, TypeError):
        seq = None
    try:
        identity = run_identity(out)
    except (OSError, ValueError, KeyError, TypeError):
        identity = None
    return seq, identity


def _repair(out: Path, pooling: str, rebuild: bool) -> str | Problem:
    """Rebuild (or, when it is only behind, update) the ``pooling`` index: a line saying what was done,
    or the problem that kept it from being repaired."""
    if pooling == LEXICAL:
        return _repair_lexical(out, rebuild)
    directory = index_dir(out, pooling)
    try:
        meta = IndexMeta.from_json((directory / META_NAME).read_bytes(), directory / META_NAME)
    except (OSError, ValueError):
        meta = None  # rebuild with the defaults
    factory, metric = (meta.factory, meta.metric) if meta else (DEFAULT_FACTORY, "cosine")
    embedder = meta.embedder_name if meta is not None else None
    try:
        result = update_index(out, pooling, factory, metric, rebuild=rebuild, embedder=embedder)
    except (OSError, ValueError) as err:
        return _not_repaired(out, directory, rebuild, err)
    return (f"{directory}: {'rebuilt' if rebuild else 'updated'} ({result.meta.factory}, {result.meta.metric}): "
            f"{result.meta.count} vectors up to commit {result.meta.seq}")


def _repair_lexical(out: Path, rebuild: bool) -> str | Problem:
    from docstream.tasks.lexical import lexical_dir, update_lexical

    directory = lexical_dir(out)
    try:
        result = update_lexical(out, rebuild=rebuild)
    except (OSError, ValueError) as err:
        return _not_repaired(out, directory, rebuild, err)
    done = "rebuilt" if rebuild else "updated"
    return f"{directory}: {done}: {result.meta.count} chunks up to commit {result.meta.seq}"


def _not_repaired(out: Path, directory: Path, rebuild: bool, err: Exception) -> Problem:
    """The problem of an index that an update or rebuild failed on (the run's own files come first)."""
    return Problem(str(directory), f"could not be {'rebuilt' if rebuild else 'updated'}: {err}",
                   f"repair the run's own files first, then run `docstream verify --run {out} --repair` again")


def _counts(out: Path) -> tuple[int, int]:
    """How many commit records and committed part files the run has (0, 0 when its records are unreadable)."""
    try:
        records = list(RunStore(out).commit_records())
    except (OSError, ValueError, KeyError, TypeError):
        return 0, 0
    return len(records), sum(len(r.get("files", {})) for r in records)


def print_report(report: VerifyReport, as_json: bool, file: TextIO | None = None) -> None:
    """Print ``report`` as lines (see :meth:`VerifyReport.lines`) or as one JSON object."""
    if as_json:
        print(json.dumps(report.to_json(), ensure_ascii=False), file=file)
    else:
        print("\n".join(report.lines()), file=file)


def _count(n: int, one: str, many: str | None = None) -> str:
    """``"1 index"``, ``"3 indexes"``."""
    return f"{n} {one if n == 1 else (many or one + 's')}"
