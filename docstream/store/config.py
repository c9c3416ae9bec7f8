"""Typed settings of a ``docstream run``, read from YAML/TOML/JSON files and overridden by flags."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from docstream.settings import read_config_file, validated

#: settings that change what a run writes: resuming with other values would mix incompatible results
RESULT_FIELDS = ("input", "input_format", "id_field", "text_field", "chunk_len", "snapshot_every", "dtype",
                 "backend", "device", "strategy")
#: Ray workers a ``--engine ray`` run starts when ``workers`` is not given
DEFAULT_RAY_WORKERS = 2

#: compiled-kernel choice of every command that loads a model (docstream.kernels.dispatch)
Backend = Literal["auto", "cpu", "cuda", "torch"]
#: weight and compute dtypes a model can be loaded in
DType = Literal["fp32", "bf16", "fp16"]
#: how a corpus file is read
InputFormat = Literal["auto", "text", "jsonl", "parquet"]


def default_dtype(device: str) -> DType:
    """A run's dtype when none is given: bf16 on CUDA (what GPUs run fastest), fp32 elsewhere."""
    return "bf16" if str(device).startswith("cuda") else "fp32"


class RunConfig(BaseModel):
    """Settings of one streaming run over a corpus."""

    model_config = ConfigDict(extra="forbid", defer_build=True)  # built on first use: keeps --help fast

    model: Path = Field(description="RWKV checkpoint: a BlinkDL .pth, a .safetensors file or a Hugging Face model "
                                    "folder (default: the built-in model)")
    tokenizer: Path = Field(description="World vocabulary .txt or Hugging Face tokenizer .json (default: the "
                                         "built-in model's)")
    input: Path = Field(description="corpus: a directory of .txt/.md files, a .jsonl file or a .parquet file")
    out: Path = Field(description="output directory (created; re-running on it resumes)")
    input_format: InputFormat = Field("auto", description="corpus format (auto: from the file name)")
    id_field: str = Field("id", description="JSONL/Parquet field holding the document id")
    text_field: str = Field("text", description="JSONL/Parquet field holding the text")
    chunk_len: int = Field(1024, ge=1, description="tokens per chunk")
    batch_size: int | None = Field(None, ge=1, description="documents streamed at once (default: 8 on cpu; on cuda "
                                                           "from the free GPU memory, up to 64)")
    snapshot_every: int = Field(4, ge=1, description="snapshot a document's state every k chunks (and at its end)")
    commit_every: int = Field(64, ge=1, description="commit outputs after this many chunks")
    dtype: DType | None = Field(None, description="dtype the model runs in (default: bf16 on cuda, fp32 on cpu)")
    device: str = Field("cpu", description="cpu or cuda[:N]")
    backend: Backend = Field("auto", description="WKV kernels: compiled cpu/cuda, the torch reference, or auto")
    strategy: str | None = Field(None, description="each layer's device and precision, in the official rwkv package's "
                                                   "grammar: 'cuda fp16', 'cpu fp32i8', 'cuda fp16i8 *10 -> cpu fp32' "
                                                   "(i8: int8 matrices). Replaces device and dtype; local engine only")
    cuda_graphs: bool = Field(False, description="on cuda, replay the forward of every full batch of full chunks "
                                                 "from a CUDA graph (fewer launches; same results; experimental)")
    quiet: bool = Field(False, description="no progress bar or summary")
    engine: Literal["local", "ray"] = Field("local", description="local: one process; ray: shard documents "
                                                                 "across Ray workers (pip install docstream[ray])")
    address: str | None = Field(None, description="Ray cluster to join (host:port or 'auto'); "
                                                  "none starts a local Ray instance")
    workers: int | None = Field(None, ge=1, description=f"Ray workers, one model each "
                                                        f"(default {DEFAULT_RAY_WORKERS}; one GPU each on cuda)")

    @field_validator("tokenizer")
    @classmethod
    def _bundled_vocabulary(cls, path: Path) -> Path:
        """A bare name of a bundled vocabulary (``rwkv_vocab_v20230424.txt``) means docstream's copy."""
        from docstream.tokenizer.loader import resolve_tokenizer_path

        return resolve_tokenizer_path(path)

    @model_validator(mode="after")
    def _check_engine_settings(self) -> RunConfig:
        if self.strategy is not None:
            self._follow_strategy()
        if self.dtype is None:  # part of a run's identity: decided here, from the device
            self.dtype = default_dtype(self.device)
        if self.engine == "local":
            given = [f"{name}={getattr(self, name)!r}" for name in ("address", "workers")
                     if getattr(self, name) is not None]
            if given:
                raise ValueError(f"{', '.join(given)} only apply to engine 'ray'; add --engine ray or drop them")
        elif self.device.startswith("cuda:"):
            raise ValueError(f"device {self.device!r}: with engine 'ray' each worker gets its own GPU from Ray; "
                             f"pass device 'cuda'")
        if self.cuda_graphs and (not self.device.startswith("cuda") or self.engine != "local"):
            raise ValueError(f"cuda_graphs needs device 'cuda' and engine 'local' (got device {self.device!r}, "
                             f"engine {self.engine!r}); drop --cuda-graphs or run on a GPU")
        return self

    def _follow_strategy(self) -> None:
        """device and dtype become the strategy's first stage's (where the run's states live)."""
        from docstream.model.strategy import parse_strategy

        stages = parse_strategy(self.strategy)
        first = stages[0]
        if self.engine != "local":
            raise ValueError(f"strategy {self.strategy!r} needs engine 'local' (each Ray worker loads a whole "
                             f"model on one device); drop --strategy or --engine ray")
        for name, value in (("device", first.device), ("dtype", first.dtype)):
            given = getattr(self, name)
            if given not in (None, value) and not (name == "device" and given == "cpu"):
                raise ValueError(f"{name} {given!r} contradicts strategy {self.strategy!r}, whose first stage has "
                                 f"{name} {value!r}; drop --{name}: the strategy decides it")
            setattr(self, name, value)
        devices = {stage.device for stage in stages}
        if self.cuda_graphs and len(devices) > 1:
            raise ValueError(f"cuda_graphs record one device's work; strategy {self.strategy!r} spreads the model "
                             f"over {', '.join(sorted(devices))}. Drop --cuda-graphs or use a one-device strategy")

    def model_args(self, device: str | None = None) -> dict[str, Any]:
        """The keywords of :func:`docstream.model.load_model` for this run's model: its strategy, or its
        device and dtype (``device`` given: that device, in the run's dtype, without the strategy)."""
        if self.strategy is not None and device is None:
            return {"strategy": self.strategy, "backend": self.backend}
        return {"device": device or self.device, "dtype": self.dtype, "backend": self.backend}

    @property
    def ray_workers(self) -> int:
        """How many Ray workers the run uses."""
        return self.workers if self.workers is not None else DEFAULT_RAY_WORKERS

    def result_settings(self) -> dict[str, Any]:
        """The settings a resumed run must share with the one that started the directory."""
        data = self.model_dump(mode="json")
        data["input"] = str(Path(self.input).resolve())
        data["device"] = self.device.split(":")[0]  # which GPU does not change results; cpu vs cuda does
        return {k: data[k] for k in RESULT_FIELDS}


def build_config(file: str | Path | None, overrides: dict[str, Any]) -> RunConfig:
    """A validated config: the file's settings, then every override that is not None. Without a model,
    the built-in default model and its tokenizer are used."""
    data = read_config_file(file) if file else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    if data.get("model") is None:
        from docstream.defaults import resolve_model_files

        data["model"], data["tokenizer"] = resolve_model_files(None, data.get("tokenizer"))
    return validated(RunConfig, data, "run")
