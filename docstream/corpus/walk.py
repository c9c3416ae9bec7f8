"""Corpus formats and the directory walk: which files of a corpus are read, in a deterministic order."""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath

from docstream.corpus.documents import Rejected, printable_name

FORMATS = ("auto", "text", "jsonl", "parquet")


#: file-name suffixes (lower case) of each format, for directory walks and ``fmt="auto"``
SUFFIXES: dict[str, tuple[str, ...]] = {
    "text": (".txt", ".md"),
    "jsonl": (".jsonl", ".jsonl.gz"),
    "parquet": (".parquet",),
}


def resolve_format(root: Path, fmt: str) -> str:
    """The concrete format: ``fmt`` itself, or the one ``root``'s suffix names."""
    if fmt != "auto":
        return fmt
    if root.is_dir():
        return "text"
    for kind, suffixes in SUFFIXES.items():
        if _has_suffix(root.name, suffixes):
            return kind
    known = ", ".join(s for suffixes in SUFFIXES.values() for s in suffixes)
    raise ValueError(f"cannot tell the format of {str(root)!r} from its suffix (known: {known}); "
                     f"pass fmt='text', 'jsonl' or 'parquet'")


def _has_suffix(name: str, suffixes: tuple[str, ...]) -> bool:
    """Whether ``name`` ends with one of ``suffixes``, ignoring case."""
    return name.lower().endswith(suffixes)


@dataclass(frozen=True)
class Entry:
    """A corpus file: its id-like path relative to the root (printable) and where it lies."""

    rel: str
    path: Path

    @property
    def source(self) -> str:
        """The path for records and messages: printable, and encodable whatever bytes its name holds."""
        return printable_name(str(self.path))


def _rel_id(rel: PurePath) -> str:
    """The id of a file at ``rel`` below the corpus root: its POSIX path, made printable."""
    return printable_name(rel.as_posix())


def list_entries(root: Path, kind: str) -> Iterator[Entry | Rejected]:
    """The files of format ``kind`` under ``root`` (or ``root`` itself, whatever its name), lazily, sorted."""
    if not root.is_dir():
        return iter([Entry(printable_name(root.name), root)])
    real_root = root.resolve()
    walk = _Walk(real_root, SUFFIXES[kind], flag_dirs=kind == "text", visited={real_root})
    return walk.entries(root, PurePath())


@dataclass
class _Walk:
    """A depth-first walk, entries sorted by name, following symlinks only inside the root.

    ``visited`` holds the real paths of the directories entered, so a symlink back to an
    ancestor cannot loop. With ``flag_dirs`` (text files, where each file is a document), a
    directory named like a document is also reported as unreadable, since whoever named it so
    probably meant a file; its contents are walked all the same.
    """

    real_root: Path
    suffixes: tuple[str, ...]
    flag_dirs: bool
    visited: set[Path]

    def entries(self, directory: Path, rel: PurePath) -> Iterator[Entry | Rejected]:
        """The matching files under ``directory``, whose path relative to the root is ``rel``."""
        try:
            with os.scandir(directory) as scan:
                children = sorted(scan, key=lambda child: child.name)
        except OSError as exc:
            yield Rejected(_rel_id(rel), printable_name(str(directory)), "unreadable",
                           f"cannot list directory: {exc}")
            return
        for child in children:
            yield from self._visit(child, rel / child.name)

    def _visit(self, child: os.DirEntry[str], rel: PurePath) -> Iterator[Entry | Rejected]:
        """The matching files of one directory entry: itself, or those under it."""
        path = Path(child.path)
        named_like_a_file = _has_suffix(child.name, self.suffixes)
        if child.is_symlink() and not _inside(path, self.real_root):
            if named_like_a_file:
                yield Rejected(_rel_id(rel), printable_name(str(path)), "outside_root",
                               f"symlink to {str(path.resolve())!r} leaves the corpus directory")
        elif _is_dir(child):
            if named_like_a_file and self.flag_dirs:
                yield Rejected(_rel_id(rel), printable_name(str(path)), "unreadable", "a directory, not a file")
            real = path.resolve()
            if real not in self.visited:
                self.visited.add(real)
                yield from self.entries(path, rel)
        elif named_like_a_file:
            yield Entry(_rel_id(rel), path)


def _inside(path: Path, real_root: Path) -> bool:
    """Whether ``path`` (a symlink) resolves to somewhere inside ``real_root``."""
    try:
        return path.resolve().is_relative_to(real_root)
    except (OSError, RuntimeError):  # a symlink loop
        return False


def _is_dir(entry: os.DirEntry[str]) -> bool:
    """Whether a directory entry is (or links to) a directory, ``False`` when that cannot be told."""
    try:
        return entry.is_dir()
    except OSError:
        return False
