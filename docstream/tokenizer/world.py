"""Tokenizer for the RWKV World vocabulary (``rwkv_vocab_v20230424.txt``).

File format: one token per line, ``<id> <literal> <byte length>``, where
``<literal>`` is a Python ``str`` literal (stored as its UTF-8 bytes) or
``bytes`` literal, and ``<byte length>`` is the length of those bytes. Id 0 is
the end-of-text token and does not appear in the file.

Encoding is greedy longest-match over the UTF-8 bytes of the text: at each
position the longest vocabulary entry that is a prefix of the remaining bytes
becomes the next token. This gives the same ids as the reference
``rwkv.rwkv_tokenizer.TRIE_TOKENIZER``. For the official vocabulary file, ``encode`` runs
the same algorithm compiled (``pyrwkv-tokenizer``, see :mod:`docstream.tokenizer.world_fast`), with
the same ids, several times faster.
"""

from __future__ import annotations

import ast
import gc
import importlib.util
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from docstream.tokenizer.base import VocabFile, read_vocab_bytes
from docstream.tokenizer.world_fast import load_compiled_encoder

END_OF_TEXT_ID = 0
WORLD_VOCAB_FILENAME = "rwkv_vocab_v20230424.txt"
WORLD_VOCAB_SOURCES = (
    f"the file {WORLD_VOCAB_FILENAME} ships inside the 'rwkv' PyPI package (pip install rwkv), "
    "and in BlinkDL's ChatRWKV and RWKV-LM GitHub repositories"
)

_KIND = "RWKV World vocab"
_LINE_SHAPE = "'<id> <python str or bytes literal> <byte length>'"
_WORLD_LINE_RE = re.compile(r"""^\d+ b?(?:'.*'|".*") \d+$""")

# A trie node's children: byte value -> (token id or 0 if no token ends here, children).
_Children = dict[int, tuple[int, "_Children"]]
_NO_MATCH: tuple[int, _Children] = (0, {})


def default_world_vocab_path() -> Path:
    """The World vocabulary file: docstream's bundled copy (identical to the one in the ``rwkv``
    package, Apache-2.0, from BlinkDL's RWKV-LM), else the installed ``rwkv`` package's copy.

    Raises:
        FileNotFoundError: neither copy is present.
    """
    bundled = Path(__file__).resolve().parent / "data" / WORLD_VOCAB_FILENAME
    if bundled.is_file():
        return bundled
    return rwkv_package_vocab_path()


def rwkv_package_vocab_path() -> Path:
    """The World vocabulary file shipped inside the installed ``rwkv`` package (located, not imported).

    Raises:
        FileNotFoundError: ``rwkv`` is not installed, or its copy of the file is missing.
    """
    spec = importlib.util.find_spec("rwkv")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"cannot find the default {_KIND} file: the 'rwkv' package is not installed; "
            f"{WORLD_VOCAB_SOURCES}. Install it or pass the file's path explicitly."
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / WORLD_VOCAB_FILENAME
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"the installed 'rwkv' package at {list(spec.submodule_search_locations)} has no "
        f"{WORLD_VOCAB_FILENAME}; {WORLD_VOCAB_SOURCES}. Reinstall it or pass the file's path explicitly."
    )


def looks_like_world_vocab(path: str | Path, max_lines: int = 8) -> bool:
    """Whether the first non-empty lines of ``path`` have the World vocab line shape.

    Only the start of the file is read; this is a cheap format sniff, not a validation.
    """
    limit = 64 * 1024
    with open(path, "rb") as handle:
        head = handle.read(limit + 1)
    lines = head.decode("utf-8", errors="replace").split("\n")
    if len(head) > limit:
        lines.pop()
    sample = [line.rstrip("\r") for line in lines if line.strip()][:max_lines]
    return bool(sample) and all(_WORLD_LINE_RE.match(line) for line in sample)


def parse_world_vocab(data: bytes, source: str) -> dict[int, bytes]:
    """Parse World vocab file contents into ``{token id: token bytes}``.

    ``source`` names the file in error messages. Blank lines are skipped.
    Repeated token bytes are rejected (the reference tokenizer would silently
    keep the last id for them).

    Raises:
        ValueError: the contents are not UTF-8, a line is malformed, an id or
            token repeats, or the file holds no tokens. The message names the
            file, the line number and what was expected.
    """
    text = _decode_utf8(data, source)
    id_to_bytes: dict[int, bytes] = {}
    id_line: dict[int, int] = {}
    bytes_line: dict[bytes, int] = {}
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        token_id, token = _parse_line(line, lineno, source)
        if token_id in id_line:
            raise ValueError(
                f"{source}:{lineno}: token id {token_id} already defined on line {id_line[token_id]}; "
                "expected each id once"
            )
        if token in bytes_line:
            raise ValueError(
                f"{source}:{lineno}: token {token!r} already defined on line {bytes_line[token]}; "
                "expected each token's bytes once"
            )
        id_to_bytes[token_id] = token
        id_line[token_id] = lineno
        bytes_line[token] = lineno
    if not id_to_bytes:
        raise ValueError(f"{source}: no tokens found; expected lines shaped {_LINE_SHAPE}")
    return id_to_bytes


def _decode_utf8(data: bytes, source: str) -> str:
    """``data`` decoded as UTF-8, or a ``ValueError`` naming the offending line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        lineno = data.count(b"\n", 0, err.start) + 1
        raise ValueError(
            f"{source}:{lineno}: invalid UTF-8 at byte offset {err.start}; expected a UTF-8 text file"
        ) from None


def _parse_line(line: str, lineno: int, source: str) -> tuple[int, bytes]:
    """Parse one ``<id> <literal> <byte length>`` line into ``(id, token bytes)``."""
    where = f"{source}:{lineno}"
    first = line.find(" ")
    last = line.rfind(" ")
    if first < 0 or last <= first:
        raise ValueError(f"{where}: expected a line shaped {_LINE_SHAPE}, got {line!r}")
    id_text, literal, length_text = line[:first], line[first + 1 : last], line[last + 1 :]
    token_id = _parse_count(id_text, where, "token id")
    if token_id == END_OF_TEXT_ID:
        raise ValueError(f"{where}: token id 0 is reserved for end-of-text; expected an id >= 1")
    token = _parse_literal(literal, where)
    stated = _parse_count(length_text, where, "byte length")
    if stated != len(token):
        raise ValueError(
            f"{where}: stated byte length {stated} but the literal {literal} is {len(token)} bytes; "
            "expected the last field to equal the token's UTF-8 byte length"
        )
    return token_id, token


def _parse_count(text: str, where: str, what: str) -> int:
    """A non-negative decimal integer field, or a ``ValueError`` naming it."""
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"{where}: expected the {what} to be a non-negative decimal integer, got {text!r}")
    return int(text)


def _parse_literal(literal: str, where: str) -> bytes:
    """The token bytes of a Python ``str`` (as UTF-8) or ``bytes`` literal."""
    literal = literal.strip()
    simple = _simple_str_literal_value(literal)
    if simple is not None:
        return simple.encode("utf-8")
    try:
        value = ast.literal_eval(literal)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise ValueError(f"{where}: expected a Python str or bytes literal, got {literal!r}") from None
    if isinstance(value, str):
        try:
            value = value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"{where}: the str literal {literal} is not encodable as UTF-8 (lone surrogate?); "
                "expected valid Unicode or a bytes literal"
            ) from None
    if not isinstance(value, bytes):
        raise ValueError(
            f"{where}: expected a Python str or bytes literal, got {literal!r} (a {type(value).__name__})"
        )
    if not value:
        raise ValueError(f"{where}: empty token {literal}; expected at least one byte")
    return value


def _simple_str_literal_value(literal: str) -> str | None:
    """The value of a plain quoted str literal with nothing to unescape, else ``None``.

    A fast path for most vocabulary lines: ``'abc'`` or ``"abc"`` whose body has
    no backslash, no copy of its quote character and only printable characters
    means exactly its body. Everything else goes through ``ast.literal_eval``.
    """
    if len(literal) < 3:
        return None
    quote = literal[0]
    body = literal[1:-1]
    plain = quote in "'\"" and literal[-1] == quote and quote not in body and "\\" not in body
    return body if plain and body.isprintable() else None


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building large acyclic structures.

    Loading allocates a few hundred thousand small containers, none of them in
    reference cycles; without this, repeated collections scanning them slow the
    load down noticeably. The collector's previous state is restored.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _build_trie(id_to_bytes: dict[int, bytes]) -> list[tuple[int, _Children]]:
    """A byte trie over the tokens; the root is a 256-entry list for fast first-byte lookup.

    Each entry is ``(token id, children)``; id 0 means no token ends there.
    """
    top: _Children = {}
    for token_id, token in id_to_bytes.items():
        _insert(top, token, token_id)
    return [top.get(byte, _NO_MATCH) for byte in range(256)]


def _insert(top: _Children, token: bytes, token_id: int) -> None:
    """Insert ``token`` into the trie rooted at ``top``."""
    children = top
    for byte in token[:-1]:
        node = children.get(byte)
        if node is None:
            node = children[byte] = (0, {})
        children = node[1]
    final = children.get(token[-1])
    children[token[-1]] = (token_id, {} if final is None else final[1])


class WorldTokenizer(VocabFile):
    """Greedy longest-match tokenizer over an RWKV World vocabulary file.

    Example::

        tok = WorldTokenizer(default_world_vocab_path())
        ids = tok.encode("Hello world")
        assert tok.decode(ids) == "Hello world"
    """

    prefix = "world"

    def __init__(self, path: str | Path, backend: str = "auto") -> None:
        """Load and validate the vocabulary file at ``path``.

        ``backend`` picks the encoder: ``"auto"`` (the compiled one when ``pyrwkv-tokenizer`` is
        installed and ``path`` is the official World vocabulary, else the Python trie), ``"rust"``
        (the compiled one or an error) or ``"python"``. All give the same ids.

        Raises:
            FileNotFoundError: the file does not exist.
            ValueError: the file is malformed (the message names the line), or ``backend`` is
                unknown or is ``"rust"`` for another vocabulary.
            ImportError: ``backend="rust"`` without ``pyrwkv-tokenizer`` installed.
        """
        file, data = read_vocab_bytes(path, _KIND, hint=f"check the path; {WORLD_VOCAB_SOURCES}")
        with _gc_paused():
            self._id_to_bytes = parse_world_vocab(data, str(file))
            self._root = _build_trie(self._id_to_bytes)
        self._loaded(file, data, max(self._id_to_bytes) + 1)  # largest id in the file + 1 (id 0: end-of-text)
        self._decode_table = {END_OF_TEXT_ID: b"", **self._id_to_bytes}
        self._compiled = load_compiled_encoder(file, self._fingerprint, backend)

    @property
    def backend(self) -> str:
        """Which encoder ``encode`` uses: ``"rust"`` (compiled) or ``"python"`` (the trie)."""
        return "python" if self._compiled is None else "rust"

    @property
    def eot_id(self) -> int:
        """The end-of-text token id (0)."""
        return END_OF_TEXT_ID

    def encode(self, text: str) -> list[int]:
        """Token ids for ``text`` (UTF-8 encoded); no end-of-text token is added.

        Raises:
            UnicodeEncodeError: ``text`` holds lone surrogates, which have no UTF-8 form.
        """
        if self._compiled is not None and type(text) is str:
            try:
                return self._compiled.encode(text)
            except UnicodeEncodeError:
                pass  # lone surrogates: str.encode below raises the usual error
        return self._encode_trie(text.encode("utf-8"))

    def encode_bytes(self, data: bytes) -> list[int]:
        """Token ids for raw bytes (any bytes, UTF-8 or not), by greedy longest match.

        Raises:
            ValueError: some byte starts no token (impossible with the official
                vocabulary, which has every single byte).
        """
        if self._compiled is not None and type(data) in (bytes, bytearray):
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                pass  # the compiled encoder takes only valid UTF-8; the trie takes any bytes
            else:
                return self._compiled.encode(text)
        return self._encode_trie(data)

    def _encode_trie(self, data: bytes) -> list[int]:
        """Token ids for ``data`` from the Python trie (see :meth:`encode_bytes`)."""
        root = self._root
        out: list[int] = []
        append = out.append
        pos = 0
        # Hot loop, tuned for CPython: running off the end of ``data`` raises
        # IndexError, which is cheaper than comparing ``pos`` with the length
        # at every byte. The outer IndexError means all input was consumed;
        # the inner one means the input ended in the middle of a trie walk.
        try:
            while True:
                best, children = root[data[pos]]
                end = pos = pos + 1
                try:
                    while children:
                        entry = children.get(data[pos])
                        if entry is None:
                            break
                        pos += 1
                        node_id, children = entry
                        if node_id:
                            best = node_id
                            end = pos
                except IndexError:
                    pass
                if not best:
                    raise self._unencodable(data, end - 1)
                append(best)
                pos = end
        except IndexError:
            return out

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """The exact bytes for ``ids``; the end-of-text id 0 contributes nothing.

        Raises:
            ValueError: an id is not in the vocabulary.
        """
        table = self._decode_table
        try:
            return b"".join([table[token_id] for token_id in ids])
        except (KeyError, TypeError):
            bad = next(token_id for token_id in ids if not _is_hashable(token_id) or token_id not in table)
            raise ValueError(
                f"token id {bad!r} is not in {self.name} (valid ids: 0 for end-of-text, "
                f"1..{self._vocab_size - 1} from the file); check the ids came from this tokenizer"
            ) from None

    def decode(self, ids: Sequence[int], errors: str = "replace") -> str:
        """The text for ``ids``; invalid UTF-8 is handled per ``errors`` (default: U+FFFD)."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def _unencodable(self, data: bytes, pos: int) -> ValueError:
        """The error for a byte that starts no token in this vocabulary."""
        return ValueError(
            f"byte 0x{data[pos]:02x} at offset {pos} starts no token in {self.name}; "
            "the vocabulary should contain every single byte 0x00-0xff"
        )


def _is_hashable(value: object) -> bool:
    """Whether ``value`` can be used as a dict key."""
    try:
        hash(value)
    except TypeError:
        return False
    return True
