"""Typed description of an RWKV model's architecture, read off its checkpoint tensors."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Version = Literal["4", "5.2", "6", "7"]
VERSIONS: tuple[str, ...] = ("4", "5.2", "6", "7")


class ModelConfig(BaseModel):
    """Sizes of an RWKV model. Nothing here is assumed: the loader reads every field from tensors.

    ``head_size`` is 0 for RWKV-4 (no heads). ``lora`` holds the low-rank widths of RWKV-6/7
    (RWKV-6: ``mix``, ``decay``; RWKV-7: ``decay``, ``iclr``, ``value``, ``gate``).
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

    @property
    def n_head(self) -> int:
        return self.dim_att // self.head_size if self.head_size else 0
