"""Typed description of an RWKV model's architecture: read off checkpoint tensors, or chosen for a new model."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Version = Literal["4", "5.2", "6", "7"]
VERSIONS: tuple[str, ...] = ("4", "5.2", "6", "7")

#: the low-rank widths each version has (``ModelConfig.lora`` keys), with the tensors they size
LORA_KEYS: dict[str, tuple[str, ...]] = {
    "4": (),
    "5.2": (),
    "6": ("mix", "decay"),  # att.time_maa_w1/w2, att.time_decay_w1/w2
    "7": ("decay", "iclr", "value", "gate"),  # att.w1/w2, a1/a2, v1/v2, g1/g2
}


def _check_version(version: str) -> str:
    if version not in VERSIONS:
        raise ValueError(f"unknown RWKV version {version!r}; expected one of {', '.join(VERSIONS)}")
    return version


def _round_to(x: float, multiple: int) -> int:
    return int(round(x / multiple)) * multiple


def default_dim_ffn(version: str, n_embd: int) -> int:
    """Feed-forward width RWKV-LM gives a new model: ``4*C`` for v4/v7, ``int(3.5*C)//32*32`` for v5.2/v6.

    For tiny ``C`` where the v5.2/v6 rule gives 0, ``int(3.5*C)``.
    """
    if _check_version(version) in ("4", "7"):
        return 4 * n_embd
    return int(n_embd * 3.5) // 32 * 32 or int(n_embd * 3.5)


def default_lora(version: str, n_embd: int) -> dict[str, int]:
    """Low-rank widths of a new model, scaled with ``C`` the way RWKV's own code does.

    * v6 (RWKV-LM ``RWKV_Tmix_x060``): ``mix`` = 32, ``decay`` = 64 (64/128 for ``C >= 4096``).
      For tiny models (``C < 256``): ``mix`` = ``max(4, C // 8)``, ``decay`` = ``max(8, C // 4)``.
    * v7 (RWKV-LM ``RWKV_Tmix_x070`` as used for the released "Goose" models): ``decay`` = ``iclr`` =
      ``max(32, round(1.8*sqrt(C)/32)*32)``, ``value`` = ``max(32, round(1.3*sqrt(C)/32)*32)``,
      ``gate`` = ``max(32, round(0.6*C**0.8/32)*32)`` -> 64/64/32/128 at C=768. For tiny models
      (``C < 256``) the same formulas are rounded to multiples of 8 with a floor of 8 instead
      (C=64: 16/16/8/16).
    * v4 / v5.2 have no low-rank parameters: ``{}``.
    """
    C = n_embd
    if _check_version(version) == "6":
        if C >= 256:
            big = C >= 4096
            return {"mix": 64 if big else 32, "decay": 128 if big else 64}
        return {"mix": max(4, C // 8), "decay": max(8, C // 4)}
    if version == "7":
        raw = {"decay": 1.8 * C**0.5, "iclr": 1.8 * C**0.5, "value": 1.3 * C**0.5, "gate": 0.6 * C**0.8}
        if C >= 256:
            return {k: max(32, _round_to(x, 32)) for k, x in raw.items()}
        return {k: max(8, _round_to(x, 8)) for k, x in raw.items()}
    return {}


class ModelConfig(BaseModel):
    """Sizes of an RWKV model: the loader reads every field from tensors, :meth:`new` fills defaults.

    ``head_size`` is 0 for RWKV-4 (no heads). ``dim_ffn`` is the feed-forward width. ``lora`` holds
    the low-rank widths of RWKV-6/7, with the keys :data:`LORA_KEYS` names (RWKV-6: ``mix``,
    ``decay``; RWKV-7: ``decay``, ``iclr``, ``value``, ``gate``).
    ``rescale_every`` > 0 halves the residual stream every that many layers (fp16 inference of
    RWKV-4/5/6, matching the reference implementation); 0 disables it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Version
    n_layer: int = Field(ge=1)
    n_embd: int = Field(ge=1)
    dim_att: int = Field(ge=1)
    dim_ffn: int = Field(ge=1)
    vocab_size: int = Field(ge=1)
    head_size: int = Field(ge=0)
    lora: dict[str, int] = Field(default_factory=dict)
    rescale_every: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelConfig":
        if self.version != "4":
            if self.head_size < 1 or self.dim_att % self.head_size:
                raise ValueError(f"attention width {self.dim_att} is not a multiple of head size {self.head_size}")
        return self

    @model_validator(mode="after")
    def _lora_keys(self) -> "ModelConfig":
        expected = LORA_KEYS[self.version]
        if set(self.lora) != set(expected):
            raise ValueError(f"RWKV-{self.version} low-rank widths (lora) are {list(expected)}, "
                             f"got {list(self.lora)}")
        bad = {k: v for k, v in self.lora.items() if v < 1}
        if bad:
            raise ValueError(f"low-rank widths must be at least 1, got {bad}")
        return self

    @classmethod
    def new(cls, version: str, *, n_layer: int, n_embd: int, vocab_size: int, head_size: int = 64,
            dim_ffn: int | None = None, lora: Mapping[str, int] | None = None) -> "ModelConfig":
        """The sizes of a new model: attention width ``n_embd``, ``dim_ffn`` by default
        :func:`default_dim_ffn`, and the low-rank widths of :func:`default_lora` with ``lora``'s
        entries replacing theirs. ``head_size`` is ignored for RWKV-4. ``ValueError`` names a bad
        version, size or ``lora`` key."""
        _check_version(version)
        widths = default_lora(version, n_embd)
        if lora:
            unknown = sorted(set(lora) - set(widths))
            if unknown:
                raise ValueError(f"unknown low-rank width {unknown[0]!r} for RWKV-{version}; "
                                 f"its keys are {list(LORA_KEYS[version]) or 'none'}")
            widths.update(lora)
        return cls(version=version, n_layer=n_layer, n_embd=n_embd, dim_att=n_embd,
                   dim_ffn=default_dim_ffn(version, n_embd) if dim_ffn is None else dim_ffn,
                   vocab_size=vocab_size, head_size=0 if version == "4" else head_size, lora=widths)

    @property
    def n_head(self) -> int:
        return self.dim_att // self.head_size if self.head_size else 0
