"""Typed settings of the task heads, in a module that imports neither torch nor FAISS: the command line
builds its flags from these classes (choices from the ``Literal`` types, defaults and help from the
fields), so ``docstream --help`` stays fast. The task modules import their settings from here."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from docstream.store.config import InputFormat

__all__ = ["DEFAULT_SAMPLING", "DensePooling", "IndexConfig", "Metric", "Pooling", "ProbeConfig", "SamplingConfig",
           "SearchConfig", "SearchMode", "SummarizeConfig", "TemplateName"]

#: how a chunk's vector is made (docstream.model.pooling.POOLINGS; a test keeps them equal)
Pooling = Literal["last", "mean", "state"]
#: the vectors a dense index holds: each chunk's text embedded by an embedder, or one of the run's poolings
#: (docstream.tasks.index.EMBEDDER and POOLINGS; a test keeps them equal)
DensePooling = Literal["embedder", "last", "mean", "state"]
#: how a query is answered (docstream.tasks.search.MODES; a test keeps them equal)
SearchMode = Literal["hybrid", "dense", "lexical"]
#: how FAISS compares vectors (docstream.tasks.index.METRICS; a test keeps them equal)
Metric = Literal["cosine", "ip", "l2"]
#: the built-in prompt layouts (docstream.tasks.summarize.TEMPLATES; a test keeps them equal)
TemplateName = Literal["instruct", "tldr", "world"]


class SamplingConfig(BaseModel):
    """How the next token is chosen; see :mod:`docstream.tasks.generate` for the order of the steps."""

    model_config = ConfigDict(extra="forbid", defer_build=True)  # built on first use: keeps --help fast

    temperature: float = Field(1.0, ge=0, description="sampling temperature (0 = greedy)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass (1 = off)")
    top_k: int = Field(0, ge=0, description="keep the k most likely tokens (0 = off)")
    presence_penalty: float = Field(0.0, description="subtracted from every already generated token's logit")
    frequency_penalty: float = Field(0.0, description="subtracted per (decayed) occurrence of a generated token")
    penalty_decay: float = Field(1.0, gt=0, le=1, description="occurrence counts are multiplied by this each step")
    max_tokens: int = Field(256, ge=1, description="tokens generated at most per row")
    stop: list[str] = Field(default_factory=list, description="generation ends when the text contains one")
    seed: int = Field(0, description="row i samples with a generator seeded with seed + i")

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, stop: list[str]) -> list[str]:
        if any(s == "" for s in stop):
            raise ValueError("stop strings must not be empty (an empty string would stop at once)")
        return stop

    @property
    def uses_penalties(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty)


#: ChatRWKV's chat defaults, used by ``docstream summarize``
DEFAULT_SAMPLING = SamplingConfig(temperature=1.0, top_p=0.3, frequency_penalty=1.0, penalty_decay=0.996,
                                  max_tokens=200)


class SummarizeConfig(BaseModel):
    """What ``docstream summarize`` summarizes and how it prompts (sampling is a :class:`SamplingConfig`)."""

    model_config = ConfigDict(extra="forbid", defer_build=True)  # built on first use: keeps --help fast

    doc_ids: list[str] | None = Field(None, description="document id (repeat; default: every finished document)")
    at_chunk: int | None = Field(None, description="summarize up to this chunk (it must have a snapshot)")
    template: TemplateName = Field("world", description="prompt layout")
    instruction: str | None = Field(None, description="the instruction of the world/instruct templates")
    instruction_first: bool = Field(False, description="put the instruction before the document (re-reads and "
                                                       "re-streams the documents)")
    name: str | None = Field(None, description="output file name under RUN/summaries/ (default: a timestamp)")
    batch_size: int = Field(8, ge=1, description="documents generated at once")
    device: str | None = Field(None, description="cpu or cuda[:N] (default: the run's)")
    cuda_graphs: bool = Field(False, description="on cuda, replay each decoding step from a CUDA graph per batch "
                                                 "size (fewer launches; same results; experimental)")


class IndexConfig(BaseModel):
    """Which indexes of a run ``docstream index`` builds or updates: the lexical index and one dense index."""

    model_config = ConfigDict(extra="forbid", defer_build=True)  # built on first use: keeps --help fast

    pooling: DensePooling = Field("embedder", description="dense vectors to index: chunk texts embedded by the "
                                                          "embedder, or the run's own last/mean/state vectors")
    embedder: Path | None = Field(None, description="embedder checkpoint (with its embedder.json) for pooling "
                                                    "'embedder' (default: the built-in one)")
    lexical: bool = Field(True, description="update the lexical (BM25) index as well (--no-lexical: the dense one "
                                            "only)")
    factory: str = Field("Flat", description="FAISS index factory: Flat, IVF64,Flat, HNSW32, IVF16,PQ8, ...")
    metric: Metric = Field("cosine", description="how vectors are compared")
    rebuild: bool = Field(False, description="replace an existing index instead of extending it")


class SearchConfig(BaseModel):
    """One ``docstream search`` query and the index it searches."""

    model_config = ConfigDict(extra="forbid", defer_build=True)  # built on first use: keeps --help fast

    query: str | None = Field(None, description="query text (or --queries FILE)")
    queries: Path | None = Field(None, description="file of queries, one per line, or JSON Lines with 'query' (and "
                                                   "'id'); results go to stdout as JSON Lines")
    k: int = Field(10, ge=1, description="number of results")
    mode: SearchMode = Field("hybrid", description="hybrid: lexical and dense results fused by reciprocal rank; or "
                                                   "one retriever alone")
    pooling: DensePooling = Field("embedder", description="dense vectors to search: chunk texts embedded by the "
                                                          "embedder, or the run's own last/mean/state vectors")
    embedder: Path | None = Field(None, description="embedder checkpoint (with its embedder.json) for pooling "
                                                    "'embedder' (default: the built-in one)")
    factory: str | None = Field(None, description="FAISS index factory (default: the existing index's, else Flat)")
    metric: Metric | None = Field(None, description="for a new index: how vectors are compared (default: cosine)")
    params: str | None = Field(None, description="FAISS search parameters, e.g. nprobe=8 (IVF) or efSearch=64 (HNSW)")
    update: bool = Field(True, description="bring the index up to the run's latest commit first (--no-update: "
                                           "search it as it is)")
    device: str | None = Field(None, description="device for the run's own model (poolings last/mean/state; "
                                                 "default: the run's)")
    model: Path | None = Field(None, description="the run's checkpoint, when its recorded path is not valid here")
    tokenizer: Path | None = Field(None, description="the run's tokenizer file, when its recorded path is not "
                                                     "valid here")

    @model_validator(mode="after")
    def _one_query_source(self) -> SearchConfig:
        if (self.query is None) == (self.queries is None):
            raise ValueError("give a query text or --queries FILE (one of the two)")
        return self


class ProbeConfig(BaseModel):
    """Settings of a recall probe (see :mod:`docstream.tasks.recall`)."""

    model_config = ConfigDict(extra="forbid", defer_build=True)  # built on first use: keeps --help fast

    task: Literal["passkey", "needle"] = Field("passkey", description="passkey retrieval or a custom needle")
    lengths: list[int] = Field(default_factory=lambda: [512, 1024, 2048, 4096],
                               description="context lengths in tokens, e.g. 512,4k,1M")
    depths: list[float] = Field(default_factory=lambda: [0.0, 25.0, 50.0, 75.0, 100.0],
                                description="needle depths in %, e.g. 0,50,100")
    trials: int = Field(3, ge=1, description="seeded trials per cell")
    seed: int = Field(0, description="seed of the first trial's key and haystack offset")
    haystack: Path | None = Field(None, description="corpus for the haystack (default: the passkey filler)")
    haystack_format: InputFormat = Field("auto", description="haystack file format")
    id_field: str = Field("id", description="JSONL/Parquet field holding the document id")
    text_field: str = Field("text", description="JSONL/Parquet field holding the text")
    needle: str | None = Field(None, description="needle sentence (task needle)")
    question: str | None = Field(None, description="question ending where the answer begins (task needle)")
    answer: str | None = Field(None, description="expected answer (task needle)")
    snap_to_sentence: bool = Field(True, description="move needles back to a sentence end (--no-snap: exact "
                                                     "token depths)")
    chunk_len: int = Field(2048, ge=1, description="tokens per forward call")
    batch_size: int = Field(8, ge=1, description="continuations run at once")

    @field_validator("lengths")
    @classmethod
    def _check_lengths(cls, lengths: list[int]) -> list[int]:
        if not lengths or min(lengths) < 1:
            raise ValueError(f"lengths must be positive token counts, got {lengths}")
        return sorted(set(lengths))

    @field_validator("depths")
    @classmethod
    def _check_depths(cls, depths: list[float]) -> list[float]:
        if not depths or any(not 0 <= d <= 100 for d in depths):
            raise ValueError(f"depths must be percentages from 0 to 100, got {depths}")
        return sorted(set(depths))

    @model_validator(mode="after")
    def _check_task(self) -> ProbeConfig:
        custom = [n for n in ("needle", "question", "answer") if getattr(self, n) is not None]
        if self.task == "passkey" and custom:
            raise ValueError(f"{', '.join(custom)} can only be set with task 'needle' (the passkey task has its own)")
        for name in ("needle", "question", "answer"):
            if getattr(self, name) == "":
                raise ValueError(f"{name} must not be empty")
        return self
