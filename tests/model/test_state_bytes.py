"""State.to_bytes keeps its format: the same bytes as the plain implementation it replaced, for every
version and dtype, and a pinned digest of one small state."""
import hashlib
import json
import struct

import pytest
import torch

from docstream.model import State

N_LAYER, C, HEADS, N = 2, 8, 2, 4


def _old_to_bytes(state: State) -> bytes:
    """The format as first written: each part copied out with ``tobytes``, then joined."""
    header, buffers = {"version": state.version, "parts": {}}, []
    for name in ("att_shift", "wkv", "ffn_shift"):
        t = getattr(state, name).detach().cpu().contiguous()
        raw = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes()
        header["parts"][name] = {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                                 "nbytes": len(raw)}
        buffers.append(raw)
    head = json.dumps(header, sort_keys=True).encode()
    return b"".join([b"DSSTATE1", struct.pack("<I", len(head)), head, *buffers])


def _random_state(version: str, dtype: torch.dtype, batch: int = 3, seed: int = 0) -> State:
    g = torch.Generator().manual_seed(seed)
    wkv_shape = (batch, N_LAYER, 3, C) if version == "4" else (batch, N_LAYER, HEADS, N, N)
    # shift parts built [C, L, B] and permuted: not contiguous, as a slice of a bigger state can be
    att = torch.randn(C, N_LAYER, batch, generator=g).permute(2, 1, 0).to(dtype)
    ffn = torch.randn(batch, N_LAYER, C, generator=g).to(dtype)
    return State(version, att, torch.randn(wkv_shape, generator=g), ffn)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("version", ["4", "5.2", "6", "7"])
def test_bytes_are_those_of_the_plain_format(version, dtype):
    state = _random_state(version, dtype)
    assert not state.att_shift.is_contiguous()
    blob = state.to_bytes()
    assert type(blob) is bytes and blob == _old_to_bytes(state)
    rows = state.to_rows()
    assert [bytes(r) for r in rows] == [_old_to_bytes(state.select(i)) for i in range(3)]
    assert State.from_bytes(blob).equal(state)


def test_a_small_state_has_its_pinned_bytes():
    """Guards the format itself (the check above compares two implementations of it)."""
    att = torch.arange(2 * N_LAYER * C, dtype=torch.float32).reshape(2, N_LAYER, C).to(torch.bfloat16)
    # values exact in binary, so the bytes are the same on every CPU
    wkv = (torch.arange(2 * N_LAYER * HEADS * N * N, dtype=torch.float32) - 64) / 32
    wkv = wkv.reshape(2, N_LAYER, HEADS, N, N)
    state = State("7", att, wkv, -att)
    blob = state.to_bytes()
    assert blob[:8] == b"DSSTATE1" and len(blob) == 12 + struct.unpack_from("<I", blob, 8)[0] + 2 * 64 + 512
    assert hashlib.sha256(blob).hexdigest() == PINNED


#: sha256 of the bytes the first implementation wrote for this state
PINNED = "9463407bbfbee8b9ef30c6c5e663671d787bc7d4c55b4396f92d16530748a7ce"
