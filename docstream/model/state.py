"""The recurrent state of an RWKV model: a typed, batch-first value object.

For every version the state has three parts per layer:

* ``att_shift`` [B, L, C]: the previous token's ``ln1`` output (token shift of the time mix),
* ``wkv``: the WKV recurrence, always fp32 --
  RWKV-4: [B, L, 3, C] holding (numerator a, denominator b, shared exponent p);
  RWKV-5.2 / 6: [B, L, H, N, N] indexed [key, value]; RWKV-7: [B, L, H, N, N] indexed [value, key],
* ``ffn_shift`` [B, L, C]: the previous token's ``ln2`` output (token shift of the channel mix).

The shift parts have the model's activation dtype. States are values: every method returns a new
``State`` and none modifies its tensors in place.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

_MAGIC = b"DSSTATE1"
_PARTS = ("att_shift", "wkv", "ffn_shift")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: the dtype names used everywhere else in docstream (load_model, configs, the command line)
DTYPE_NAMES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class State:
    """Recurrent state of a batch of sequences; see the module docstring for the layout."""

    version: str
    att_shift: Tensor
    wkv: Tensor
    ffn_shift: Tensor

    def __post_init__(self) -> None:
        b = self.att_shift.shape[0]
        if self.wkv.shape[0] != b or self.ffn_shift.shape[0] != b:
            raise ValueError(f"state parts disagree on the batch size: att_shift {tuple(self.att_shift.shape)}, "
                             f"wkv {tuple(self.wkv.shape)}, ffn_shift {tuple(self.ffn_shift.shape)}")
        if self.wkv.dtype != torch.float32:
            raise ValueError(f"the WKV state must be float32, got {self.wkv.dtype}")

    # -- shape and placement -------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.att_shift.shape[0]

    @property
    def n_layer(self) -> int:
        return self.att_shift.shape[1]

    @property
    def device(self) -> torch.device:
        return self.wkv.device

    @property
    def dtype(self) -> torch.dtype:
        """The activation dtype of the shift parts (the WKV part is always fp32)."""
        return self.att_shift.dtype

    def parts(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in _PARTS}

    def _map(self, fn) -> "State":
        return State(self.version, **{name: fn(name, t) for name, t in self.parts().items()})

    def clone(self) -> "State":
        return self._map(lambda _, t: t.clone())

    def to(self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
           non_blocking: bool = False) -> "State":
        """Move to ``device``; ``dtype`` ("fp32", "bf16", "fp16" or a torch dtype) changes the shift
        parts only (the recurrence stays fp32). ``non_blocking``: from a GPU to the host, the copy lands
        in pinned memory without waiting (synchronize on an event before reading it)."""
        dtype = _as_dtype(dtype)
        return self._map(lambda name, t: t.to(device=device, dtype=dtype if name != "wkv" else None,
                                              non_blocking=non_blocking))

    def layer(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        """(att_shift, wkv, ffn_shift) of layer ``i``, batch-first views."""
        return self.att_shift[:, i], self.wkv[:, i], self.ffn_shift[:, i]

    @classmethod
    def from_layers(cls, version: str, layers: Sequence[tuple[Tensor, Tensor, Tensor]]) -> "State":
        """Build a state from per-layer (att_shift, wkv, ffn_shift) tuples."""
        att, wkv, ffn = zip(*layers)
        return cls(version, torch.stack(att, 1), torch.stack(wkv, 1), torch.stack(ffn, 1))

    # -- batch rows ----------------------------------------------------------------------------
    def select(self, rows: int | Sequence[int] | slice | Tensor) -> "State":
        """The state of the given batch rows (an int keeps a batch dimension of one)."""
        if isinstance(rows, int):
            if not -self.batch_size <= rows < self.batch_size:
                raise IndexError(f"row {rows} out of range for a state of batch size {self.batch_size}")
            rows = slice(rows, rows + 1 if rows != -1 else None)
        elif not isinstance(rows, slice):
            rows = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        return self._map(lambda _, t: t[rows])

    @classmethod
    def stack(cls, states: Sequence["State"]) -> "State":
        """Concatenate states along the batch (each may hold one or more rows)."""
        if not states:
            raise ValueError("cannot stack an empty list of states")
        first = states[0]
        for s in states[1:]:
            if s.version != first.version or s.wkv.shape[1:] != first.wkv.shape[1:] \
                    or s.att_shift.shape[1:] != first.att_shift.shape[1:]:
                raise ValueError(f"cannot stack states of different models: version {s.version} "
                                 f"wkv {tuple(s.wkv.shape[1:])} vs version {first.version} "
                                 f"wkv {tuple(first.wkv.shape[1:])}")
        return cls(first.version, *(torch.cat([getattr(s, n) for s in states]) for n in _PARTS))

    def equal(self, other: "State") -> bool:
        """Bitwise equality of every part (and of version, shapes and dtypes)."""
        return self.version == other.version and all(
            a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.cpu(), b.cpu())
            for a, b in zip(self.parts().values(), other.parts().values()))

    # -- serialization -------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Lossless, self-describing bytes: magic, a JSON header, then each part's raw buffer."""
        # join copies each part's buffer once, straight into the result
        return b"".join(self.byte_pieces())

    def byte_pieces(self) -> list[bytes | memoryview]:
        """The pieces :meth:`to_bytes` joins, without joining them (a CPU state's parts are views, not
        copies): for writing a state straight into a buffer of one's own."""
        header = {"version": self.version, "parts": {}}
        buffers = []
        for name, t in self.parts().items():
            raw = _raw_view(t)
            header["parts"][name] = {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                                     "nbytes": raw.nbytes}
            buffers.append(raw)
        head = json.dumps(header, sort_keys=True).encode()
        return [_MAGIC, struct.pack("<I", len(head)), head, *buffers]

    @classmethod
    def from_bytes(cls, data: bytes, device: str | torch.device = "cpu") -> "State":
        """Inverse of :meth:`to_bytes`; raises ``ValueError`` on anything that is not such bytes."""
        if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + 4:
            raise ValueError("not a docstream state: missing the DSSTATE1 header")
        offset = len(_MAGIC)
        (head_len,) = struct.unpack_from("<I", data, offset)
        offset += 4
        try:
            header = json.loads(data[offset:offset + head_len])
        except ValueError as err:
            raise ValueError(f"corrupt docstream state header: {err}") from err
        offset += head_len
        parts = {}
        for name in _PARTS:
            spec = header["parts"][name]
            end = offset + spec["nbytes"]
            if end > len(data):
                raise ValueError(f"truncated docstream state: part {name!r} needs {spec['nbytes']} bytes")
            parts[name] = _from_raw(data[offset:end], spec["dtype"], spec["shape"]).to(device)
            offset = end
        if offset != len(data):
            raise ValueError(f"docstream state has {len(data) - offset} trailing bytes")
        return cls(header["version"], **parts)

    def to_rows(self) -> list[bytes]:
        """One :meth:`to_bytes` blob per batch row (what a snapshot table stores per document)."""
        return [self.select(i).to_bytes() for i in range(self.batch_size)]

    @classmethod
    def from_rows(cls, rows: Sequence[bytes], device: str | torch.device = "cpu") -> "State":
        return cls.stack([cls.from_bytes(r, device) for r in rows])


def _as_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """A dtype name of :data:`DTYPE_NAMES` as its torch dtype; torch dtypes and None pass through."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype in DTYPE_NAMES:
        return DTYPE_NAMES[dtype]
    raise ValueError(f"unknown state dtype {dtype!r}: use one of {', '.join(map(repr, DTYPE_NAMES))} "
                     f"or a torch dtype such as torch.float16")


def _raw_view(t: Tensor) -> memoryview:
    """The bytes of ``t`` in C order; a contiguous CPU tensor is not copied (others are made contiguous
    where they live, then moved)."""
    t = t.detach().contiguous().cpu()
    # as bytes: numpy has no bfloat16, and the bits are what is kept
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def _from_raw(raw: bytes, dtype_name: str, shape: list[int]) -> Tensor:
    if dtype_name not in _DTYPES:
        raise ValueError(f"unsupported state dtype {dtype_name!r}")
    dtype = _DTYPES[dtype_name]
    storage_dtype = torch.int16 if dtype == torch.bfloat16 else dtype
    t = torch.frombuffer(bytearray(raw), dtype=storage_dtype).reshape(shape)
    return t.view(dtype) if dtype == torch.bfloat16 else t
