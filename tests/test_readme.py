"""Every ```python block of README.md runs as written, on CPU, in seconds.

The blocks run in order in one namespace, as a reader pasting them into one session would, in an empty
working directory: whatever they load must ship with docstream (the built-in default model, the bundled
World vocabulary). A traceback's line numbers are README.md's own.
"""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, source) of each ```python block of ``text``."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in FENCE.finditer(text)]


def test_the_fence_pattern_finds_blocks_and_only_python_ones():
    text = "intro\n```python\nx = 1\n```\n\n```bash\nls\n```\n```python\ny = 2\nz = 3\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (10, "y = 2\nz = 3\n")]


def test_every_python_block_runs(tmp_path, monkeypatch, capsys):
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 2, "README.md lost its Python API examples (or their ```python fences)"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    for line, source in blocks:
        # padded with blank lines so that a traceback points at README.md's own line
        code = compile("\n" * (line - 1) + source, str(README), "exec")
        exec(code, namespace)  # noqa: S102 -- the README's own examples
    # the examples did what their comments say
    assert namespace["model"].version == "7"
    assert namespace["logits"].shape == (1, namespace["model"].config.vocab_size)
    assert namespace["half"].att_shift.dtype.itemsize == 2 and namespace["half"].wkv.dtype.itemsize == 4
    printed = capsys.readouterr().out
    assert "doc-0" in printed and "doc-1" in printed
    assert any(getattr(e, "doc_id", None) == "hamlet" for e in namespace["named"])
    assert list(tmp_path.iterdir()) == []  # nothing was written to the working directory
