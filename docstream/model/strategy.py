"""Strategy strings: which device and precision each layer of a model runs in.

The grammar is the official ``rwkv`` package's: stages joined by ``->``, each ``DEVICE DTYPE [*N]``::

    cuda fp16                      every layer on the GPU in fp16
    cpu fp32                       every layer on the CPU in fp32
    cuda fp16i8 *10 -> cpu fp32    the first 10 layers on the GPU with int8 matrices, the rest on the CPU
    cuda:0 bf16 *12 -> cuda:1 bf16 12 layers on one GPU, the rest on another

``DEVICE`` is ``cpu``, ``cuda`` or ``cuda:N``; ``DTYPE`` is ``fp32``, ``bf16`` or ``fp16``, with ``i8`` appended
for int8 weight matrices (:mod:`docstream.model.quant`). ``*N`` gives a stage N layers. As in the official
package, the output head counts as one more layer (a model of L blocks has L + 1 places: block i is place i,
the head with ``ln_out`` is place L), and the embedding sits with block 0. Stages without ``*N`` share the
places the others leave, the last stage takes any remainder, and stages after the one that fills the last
place get none. The official package's streamed layers (``*N+``) and its i4/i3 types are not supported.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

#: one stage: device, dtype (+ i8), optional layer count
_STAGE = re.compile(r"^(cpu|cuda(?::\d+)?) (fp32|bf16|fp16)(i8)?(?: \*(\d+))?$")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Placement:
    """Where one place of the model (a block, or the head) lives and how its weights are stored."""

    device: torch.device
    dtype: str  # "fp32", "bf16" or "fp16": the activations and the weights (scales of int8 ones)
    int8: bool  # whether its matrices are int8

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]


@dataclass(frozen=True)
class Stage:
    device: str
    dtype: str
    int8: bool
    layers: int | None  # None: shares what the other stages leave


def parse_strategy(text: str) -> list[Stage]:
    """The stages of a strategy string, or ``ValueError`` naming the part that does not parse."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"strategy must be a non-empty string such as 'cpu fp32' or 'cuda fp16i8 *10 -> cpu fp32'; "
                         f"got {text!r}")
    stages = []
    for part in text.split("->"):
        part = " ".join(part.split())
        match = _STAGE.match(part)
        if match is None:
            raise ValueError(f"strategy {text!r}: cannot read stage {part!r}. {_why(part)}")
        device, dtype, i8, count = match.groups()
        if count is not None and int(count) == 0:
            raise ValueError(f"strategy {text!r}: stage {part!r} gives a stage no layers; drop the stage")
        stages.append(Stage(device, dtype, i8 is not None, None if count is None else int(count)))
    return stages


def _why(part: str) -> str:
    words = part.split()
    grammar = ("Each stage is 'DEVICE DTYPE [*N]': DEVICE cpu, cuda or cuda:N; DTYPE fp32, bf16 or fp16, "
               "with i8 appended for int8 matrices (fp16i8); *N its number of layers")
    if words and words[0] in ("mps", "dml"):
        return f"Device {words[0]!r} is not supported by docstream (cpu and cuda are). {grammar}"
    if part.endswith("+"):
        return f"Streamed layers ('*N+') are not supported: give each stage its layers. {grammar}"
    if len(words) > 1 and re.match(r"^(fp32|bf16|fp16)i[34]$", words[1]):
        return f"Only i8 quantization is supported, not {words[1][-2:]}. {grammar}"
    return grammar


def plan_strategy(text: str, n_layer: int) -> list[Placement]:
    """The placement of each of the ``n_layer + 1`` places (blocks, then the head), allotted the way the
    official package allots them."""
    stages = parse_strategy(text)
    places = n_layer + 1
    plan = [0] * len(stages)
    allocated = 0
    for i, stage in enumerate(stages):
        if stage.layers is None:
            continue
        plan[i] = min(stage.layers, places - allocated)
        allocated += plan[i]
        if allocated >= places:
            break
    free = [i for i, stage in enumerate(stages) if stage.layers is None and plan[i] == 0 and allocated < places]
    for n, i in enumerate(free):  # shared evenly, in order
        plan[i] = (places - allocated) // (len(free) - n)
        allocated += plan[i]
    plan[-1] += places - allocated
    placements = []
    for stage, count in zip(stages, plan):
        device = _check_device(stage.device, text)
        placements += [Placement(device, stage.dtype, stage.int8)] * count
    return placements


def _check_device(name: str, text: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"strategy {text!r} places layers on {name!r} but no CUDA GPU is available; "
                             f"use a 'cpu ...' strategy")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"strategy {text!r} places layers on {name!r} but this machine has "
                             f"{torch.cuda.device_count()} GPU(s) (cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return device


def describe(placements: list[Placement]) -> str:
    """The plan in one line: runs of places that share a placement, e.g. ``0-9 cuda fp16i8, 10-12 cpu fp32``
    (the last place is the head)."""
    runs: list[list] = []
    for i, p in enumerate(placements):
        if runs and runs[-1][2] == p:
            runs[-1][1] = i
        else:
            runs.append([i, i, p])
    return ", ".join(f"{a}-{b} {p.device} {p.dtype}{'i8' if p.int8 else ''}" if a != b else
                     f"{a} {p.device} {p.dtype}{'i8' if p.int8 else ''}" for a, b, p in runs)
