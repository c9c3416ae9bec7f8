"""The files of a lexical index generation: checks against meta.json, copy by hard links, sealing, clean-up.

See :mod:`docstream.tasks.lexical` for the layout. Nothing here imports pyarrow or torch.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from docstream.checksum import sha256_file
from docstream.files import fsync_dir

__all__ = ["GENERATION_DIR", "TANTIVY_LOCKS", "generation_problems", "last_generation", "link_files", "publish",
           "remove_unnamed", "seal"]

#: generation directories and the temp directories of updates that have not finished
GENERATION_DIR = re.compile(r"^gen-(?P<generation>\d+)(?P<temp>\.tmp-\d+)?$")
#: tantivy's lock files: created by whoever opens a generation, never part of its content
TANTIVY_LOCKS = (".tantivy-meta.lock", ".tantivy-writer.lock")


def generation_problems(directory: Path, meta: Any) -> list[tuple[Path, str]]:
    """``(path, what is wrong)`` for each file of ``meta``'s generation that is missing, has another size,
    or differs from its sha256 (the size is checked first: no hashing of a truncated file)."""
    problems = []
    generation = directory / meta.directory
    if not generation.is_dir():
        return [(generation, "is missing (meta.json names it)")]
    for name, recorded in sorted(meta.files.items()):
        path = generation / name
        if not path.is_file():
            problems.append((path, "is missing (meta.json names it)"))
        elif path.stat().st_size != recorded.get("size", path.stat().st_size):
            problems.append((path, (f"has {path.stat().st_size} bytes, but meta.json records {recorded['size']} "
                                    f"(the file was changed or truncated)")))
        elif (actual := sha256_file(path)) != recorded["sha256"]:
            problems.append((path, (f"has sha256 {actual[:16]}..., but meta.json records "
                                    f"{recorded['sha256'][:16]}... (the file was changed or corrupted)")))
    return problems


def link_files(source: Path, target: Path, files: dict[str, Any]) -> None:
    """Hard-link the generation's files into ``target`` (names are relative paths: the document index lives
    in a subfolder): tantivy writes each segment file once and replaces its meta.json and .managed.json by
    rename, so the links never change the old generation's bytes."""
    for name in files:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        os.link(source / name, target / name)


def seal(generation: Path, old_generation: Path | None, old_files: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """fsync every file of ``generation`` (subfolders included) and its folders; each file's sha256 and size,
    by its path relative to ``generation``. Files still linked to the verified old generation (same inode)
    keep their recorded checksum instead of being re-read."""
    files = {}
    for path in sorted(generation.rglob("*")):
        if path.name in TANTIVY_LOCKS or not path.is_file():
            continue
        name = path.relative_to(generation).as_posix()
        status = path.stat()
        if name in old_files and old_generation is not None and \
                (old_generation / name).stat().st_ino == status.st_ino:
            files[name] = old_files[name]
            continue
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        files[name] = {"sha256": sha256_file(path), "size": status.st_size}
    for folder in sorted((p for p in generation.rglob("*") if p.is_dir()), reverse=True):
        fsync_dir(folder)
    fsync_dir(generation)
    return files


def publish(temp: Path, final: Path) -> None:
    """Give the finished generation its name (meta.json does not name it yet, so readers ignore it)."""
    os.rename(temp, final)
    fsync_dir(final.parent)


def last_generation(directory: Path) -> int:
    """The highest generation number among the directories here, temp ones included (0 when none), so a
    new generation never reuses a name a crashed update left behind."""
    matches = (GENERATION_DIR.match(p.name) for p in directory.iterdir())
    return max((int(m["generation"]) for m in matches if m), default=0)


def remove_unnamed(directory: Path, keep: str) -> None:
    """Delete older generations and the temp directories of crashed updates (anything else here is not
    docstream's, so it stays). A reader still searching an old generation keeps its open files."""
    for path in directory.iterdir():
        if path.name != keep and GENERATION_DIR.match(path.name) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
