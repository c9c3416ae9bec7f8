"""Typed settings of ``docstream train``, read from YAML/TOML/JSON files and overridden by flags."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from docstream.settings import read_config_file, validated
from docstream.store.config import Backend

#: dtypes training computes in and saves models in
TrainDType = Literal["fp32", "bf16"]
#: what is trained: next-token prediction, or passage embeddings (docstream.train.contrastive)
Objective = Literal["lm", "contrastive"]

#: settings that decide the loss curve: resuming a training directory with other values is refused
CURVE_FIELDS = ("data", "heldout", "tokenizer", "vocab_size", "init_from", "n_layer", "n_embd", "head_size",
                "dim_ffn", "ctx_len", "batch_size", "lr", "lr_final", "warmup_steps", "max_steps",
                "weight_decay", "betas", "grad_clip", "seed", "dtype", "objective")
#: settings that also decide the curve of a contrastive run (absent from a language model's settings)
CONTRASTIVE_FIELDS = ("pooling", "eos_token", "temperature", "pairs", "span_min", "eval_pairs", "token_weights")
#: the matrices LoRA adapts by default: every block's attention projections and feed-forward matrices
LORA_TARGETS = ("att.receptance", "att.key", "att.value", "att.output", "att.gate", "ffn.key", "ffn.value",
                "ffn.receptance")
#: settings that also decide the curve of a LoRA run (absent from a full fine-tune's settings)
LORA_FIELDS = ("lora_rank", "lora_alpha", "lora_targets")
#: the value a curve setting had in directories written before the setting existed
CURVE_DEFAULTS = {"objective": "lm"}


class TrainConfig(BaseModel):
    """Settings of one training run (from scratch, or fine-tuning ``init_from``)."""

    model_config = ConfigDict(extra="forbid", defer_build=True)  # built on first use: keeps --help fast

    data: list[Path] = Field(min_length=1, description="training text: .txt/.md files or directories of them")
    heldout: list[Path] = Field(min_length=1, description="held-out text for evaluation (never trained on)")
    out: Path = Field(description="training directory: checkpoints, log, tokens (re-running resumes)")
    tokenizer: Path | None = Field(None, description="tokenizer to use; None trains a byte-level BPE on `data`")
    vocab_size: int = Field(4096, ge=260, description="vocabulary of a newly trained BPE tokenizer")
    init_from: Path | None = Field(None, description="checkpoint to fine-tune (any version; .pth or Hugging Face "
                                                        "layout); None: a new RWKV-7")
    n_layer: int = Field(6, ge=1, description="layers of a new model")
    n_embd: int = Field(256, ge=16, description="width of a new model")
    head_size: int = Field(64, ge=8, description="head size of a new model")
    dim_ffn: int | None = Field(None, description="feed-forward width (default 4 x n_embd)")
    ctx_len: int = Field(256, ge=2, description="tokens per training sequence")
    batch_size: int = Field(8, ge=1, description="sequences per optimizer step")
    lr: float = Field(6e-4, gt=0, description="peak learning rate")
    lr_final: float = Field(6e-5, ge=0, description="learning rate at the end of the cosine decay")
    warmup_steps: int = Field(50, ge=0, description="linear warm-up steps")
    max_steps: int = Field(1000, ge=1, description="total optimizer steps")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay on matrices")
    betas: tuple[float, float] = Field((0.9, 0.99), description="AdamW betas")
    grad_clip: float = Field(1.0, gt=0, description="gradient norm clip")
    eval_every: int = Field(100, ge=1, description="evaluate held-out bits per byte every this many steps")
    eval_bytes: int = Field(200_000, ge=1, description="held-out text evaluated each time (the first N bytes)")
    save_every: int = Field(100, ge=1, description="write a resumable checkpoint every this many steps")
    save_dtype: TrainDType = Field("fp32", description="dtype of the exported model.pth")
    seed: int = Field(0, description="seed of the initial weights and of the data order")
    dtype: TrainDType = Field("fp32", description="compute dtype; bf16 autocasts on CUDA")
    device: str = Field("cpu", description="cpu or cuda[:N]")
    backend: Backend = Field("auto", description="WKV kernels: compiled cpu/cuda, the torch reference, or auto")
    threads: int | None = Field(None, ge=1, description="CPU threads (default: torch's choice)")
    quiet: bool = Field(False, description="no progress bar")
    objective: Objective = Field("lm", description="lm: next-token prediction; contrastive: train an embedder "
                                                   "on pairs of spans with in-batch negatives (InfoNCE)")
    pooling: Literal["mean", "eos"] = Field("mean", description="contrastive: how a passage becomes a vector")
    eos_token: int = Field(0, ge=0, description="contrastive: token appended to each passage for eos pooling")
    temperature: float = Field(0.05, gt=0, description="contrastive: InfoNCE temperature")
    pairs: Path | None = Field(None, description='contrastive: JSONL of {"query": ..., "positive": ...} pairs '
                                                 "mixed in with the pairs built from the text")
    span_min: int = Field(16, ge=1, description="contrastive: shortest span in tokens (the longest is ctx_len)")
    embed_max_tokens: int = Field(1024, ge=1, description="contrastive: passage tokens the embedder reads "
                                                          "(max_tokens of its embedder.json)")
    eval_pairs: int = Field(64, ge=2, description="contrastive: held-out span pairs recall@1 is measured on")
    token_weights: Path | None = Field(None, description="contrastive, mean pooling: .npy of one weight per token id "
                                                         "(e.g. a/(a + p(token)), so frequent tokens count less)")

    lora_rank: int | None = Field(None, ge=1, description="train low-rank adapters of this rank on the matrices of "
                                                          "--init-from instead of every weight (LoRA)")
    lora_alpha: float | None = Field(None, gt=0, description="LoRA scale numerator: adapters add (alpha / rank) B A "
                                                             "(default 2 x rank)")
    lora_targets: list[str] = Field(list(LORA_TARGETS), description="LoRA: the block matrices adapted, by name ending")
    merge: bool = Field(False, description="LoRA: also write model.pth with the adapters folded in (a BlinkDL .pth "
                                           "the official rwkv package loads)")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.lora_rank is not None:
            if self.init_from is None:
                raise ValueError("lora_rank adapts an existing model: give it with --init-from")
            if self.objective != "lm":
                raise ValueError(f"LoRA trains language models here; objective {self.objective!r} trains every weight")
            if self.lora_alpha is None:
                self.lora_alpha = 2.0 * self.lora_rank
        elif self.merge or self.lora_alpha is not None:
            raise ValueError("merge and lora_alpha apply to LoRA runs; add --lora-rank R")
        if self.init_from is None and self.n_embd % self.head_size:
            raise ValueError(f"n_embd {self.n_embd} is not a multiple of head_size {self.head_size}")
        if self.lr_final > self.lr:
            raise ValueError(f"lr_final {self.lr_final} is above lr {self.lr}; the schedule only decays")
        if self.dtype == "bf16" and not self.device.startswith("cuda"):
            raise ValueError("dtype bf16 trains with CUDA autocast; on device 'cpu' use dtype fp32")
        if self.objective == "contrastive":
            if self.span_min > self.ctx_len:
                raise ValueError(f"span_min {self.span_min} is above ctx_len {self.ctx_len}, the longest span")
            if self.init_from is not None and self.tokenizer is None:
                raise ValueError(f"give the tokenizer of {self.init_from} with --tokenizer: a new one would not "
                                 f"match the model's vocabulary")
        return self

    def curve_settings(self) -> dict[str, Any]:
        """What a resumed run must share with the one that started the directory."""
        data = self.model_dump(mode="json")
        for key in ("data", "heldout"):
            data[key] = [str(Path(p).resolve()) for p in data[key]]
        for key in ("tokenizer", "init_from", "pairs"):
            if data[key] is not None:
                data[key] = str(Path(data[key]).resolve())
        fields = (CURVE_FIELDS + (CONTRASTIVE_FIELDS if self.objective == "contrastive" else ())
                  + (LORA_FIELDS if self.lora_rank is not None else ()))
        return {k: data[k] for k in fields}


def build_train_config(file: str | Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """A validated config: the file's settings, then every override that is not None."""
    data = read_config_file(file) if file else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return validated(TrainConfig, data, "training")
