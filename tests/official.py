"""Harness: run the official ``rwkv`` pip package on a checkpoint, in a subprocess.

``rwkv.model`` reads its configuration from environment variables *at import
time* (``RWKV_V7_ON=1`` even replaces class ``RWKV`` with the v7 class
``RWKV_x070``), so one process can only ever host one flavour.  Every call of
:func:`run_official` therefore starts a fresh ``python`` (``sys.executable``)
running ``tests/_official_worker.py`` with ``RWKV_JIT_ON=0``,
``RWKV_CUDA_ON=0`` and ``RWKV_V7_ON=1`` only for v7, and exchanges data with
it through a temporary directory (``torch.save`` / ``torch.load``).  Batch all
sequences of interest into one call: the subprocess start (importing torch)
dominates the cost.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import torch

__all__ = ["OfficialRunError", "WORKER", "official_env", "run_official"]

WORKER = Path(__file__).resolve().with_name("_official_worker.py")

_VERSIONS = ("4", "5.2", "6", "7")
# env vars that change what rwkv.model does; cleared unless we set them
_RWKV_ENV = ("RWKV_JIT_ON", "RWKV_CUDA_ON", "RWKV_V7_ON", "RWKV_DE_VERSION", "RWKV_RESCALE_LAYER", "RWKV_DML_ON")


class OfficialRunError(RuntimeError):
    """The official-package worker subprocess failed; the message has its stderr."""


def official_env(version: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a worker running ``version`` of the official package."""
    env = dict(os.environ if base is None else base)
    for key in _RWKV_ENV:
        env.pop(key, None)
    env["RWKV_JIT_ON"] = "0"
    env["RWKV_CUDA_ON"] = "0"
    if version == "7":
        env["RWKV_V7_ON"] = "1"
    env.setdefault("OMP_NUM_THREADS", "4")  # tiny models: avoid oversubscribing shared CI boxes
    return env


def _validate(version: str, sequences: Sequence[Sequence[int]], split_at: int | None) -> list[list[int]]:
    if version not in _VERSIONS:
        raise ValueError(f"unknown RWKV version {version!r}; expected one of {_VERSIONS}")
    if isinstance(sequences, (str, bytes)) or not isinstance(sequences, Sequence) or not sequences:
        raise ValueError("sequences must be a non-empty list of token lists")
    seqs: list[list[int]] = []
    for i, seq in enumerate(sequences):
        toks = [int(t) for t in seq]
        if not toks:
            raise ValueError(f"sequence {i} is empty (the official forward needs >= 1 token)")
        if any(t < 0 for t in toks):
            raise ValueError(f"sequence {i} has a negative token id")
        if split_at is not None and not 0 < split_at < len(toks):
            raise ValueError(f"split_at={split_at} must satisfy 0 < split_at < len(sequence {i}) = {len(toks)}")
        seqs.append(toks)
    return seqs


def run_official(
    ckpt_path: str | os.PathLike[str],
    version: str,
    sequences: list[list[int]],
    strategy: str = "cpu fp32",
    split_at: int | None = None,
    *,
    timeout: float = 600.0,
) -> list[dict[str, torch.Tensor]]:
    """Run the official ``rwkv`` package on ``ckpt_path`` and return its logits.

    Args:
        ckpt_path: a ``.pth`` state dict (any other name is symlinked to a
            ``.pth`` name, which is what the official loaders require).
        version: ``"4"``, ``"5.2"``, ``"6"`` or ``"7"``; the worker checks that
            the official package detects this version.
        sequences: token-id lists, each non-empty.
        strategy: official strategy string, e.g. ``"cpu fp32"``.
        split_at: if given (``0 < split_at < len(seq)`` for every sequence),
            also feed ``seq[:split_at]`` then ``seq[split_at:]`` with the state
            carried over.

    Returns:
        One dict per sequence with float32 CPU tensors: ``"last"`` [V] (whole
        sequence in one call, last position), ``"all"`` [T, V]
        (``full_output=True``), ``"stepwise"`` [T, V] (one token per call,
        state carried) and, with ``split_at``, ``"split"`` [V].

    Raises:
        FileNotFoundError: ``ckpt_path`` does not exist.
        ValueError: bad version / sequences / split_at.
        OfficialRunError: the worker failed (message includes its stderr).
    """
    version = str(version)
    seqs = _validate(version, sequences, split_at)
    ckpt = Path(ckpt_path).resolve()
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt}")

    with tempfile.TemporaryDirectory(prefix="rwkv_official_") as tmp_dir:
        tmp = Path(tmp_dir)
        if ckpt.name.endswith(".pth"):
            model_file = ckpt
        else:
            model_file = tmp / "model.pth"
            try:
                model_file.symlink_to(ckpt)
            except OSError:
                import shutil

                shutil.copyfile(ckpt, model_file)
        # v4-v6 append ".pth" only when missing, v7 always appends it: pass the stem
        model_name = str(model_file)[: -len(".pth")]
        if model_name != model_name.strip():
            raise ValueError(f"checkpoint path must not start/end with whitespace: {model_file!r}")

        req_path, out_path = tmp / "request.pt", tmp / "result.pt"
        torch.save(
            {"model": model_name, "version": version, "sequences": seqs, "strategy": strategy, "split_at": split_at},
            req_path,
        )
        cmd = [sys.executable, str(WORKER), str(req_path), str(out_path)]
        try:
            proc = subprocess.run(
                cmd, cwd=tmp, env=official_env(version), capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired as exc:
            raise OfficialRunError(
                f"official rwkv worker (v{version}) timed out after {timeout}s\n"
                f"--- stderr ---\n{exc.stderr or ''}"
            ) from exc
        if proc.returncode != 0 or not out_path.is_file():
            raise OfficialRunError(
                f"official rwkv worker (v{version}, {ckpt}) failed with exit code {proc.returncode}\n"
                f"--- stderr ---\n{proc.stderr.strip()}\n--- stdout (tail) ---\n{proc.stdout[-2000:].strip()}"
            )
        payload = torch.load(out_path, map_location="cpu", weights_only=True)

    results = payload["results"]
    if len(results) != len(seqs):
        raise OfficialRunError(f"worker returned {len(results)} results for {len(seqs)} sequences")
    return results
