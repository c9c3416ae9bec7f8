"""Loading RWKV checkpoints (BlinkDL ``.pth``, Hugging Face layouts): version detection, dtype placement,
fp16 rescaling."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from docstream.model.base import RWKVModel, count_layers
from docstream.model.quant import Int8Embedding, Int8Linear, quantize_rows, quantized_module_names
from docstream.model.strategy import Placement, plan_strategy
from docstream.model.v4 import RWKV4
from docstream.model.v5 import RWKV5
from docstream.model.v6 import RWKV6
from docstream.model.v7 import RWKV7

MODEL_CLASSES: dict[str, type[RWKVModel]] = {"4": RWKV4, "5.2": RWKV5, "6": RWKV6, "7": RWKV7}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: fp16 halves the residual stream every this many layers so activations stay in range, as the
#: reference implementation does for RWKV-4/5/6 (RWKV-7 needs no rescaling)
FP16_RESCALE_EVERY = 6


def detect_version(sd: dict[str, Tensor], source: str = "checkpoint") -> str:
    """The RWKV version of a BlinkDL state dict, read from which tensors it holds."""
    if "emb.weight" not in sd or "blocks.0.ln1.weight" not in sd:
        raise ValueError(f"{source} is not an RWKV checkpoint: it has no 'emb.weight' / 'blocks.0.ln1.weight' "
                         f"(found keys such as {sorted(sd)[:5]})")
    if "_strategy" in sd:
        raise ValueError(f"{source} was converted by the rwkv package's convert_model.py for strategy "
                         f"{sd['_strategy']!r}; load the original BlinkDL .pth instead")
    att = "blocks.0.att."
    if att + "r_k" in sd:
        return "7"
    if att + "time_maa_x" in sd:
        return "6"
    if att + "ln_x.weight" in sd:
        decay = sd.get(att + "time_decay")
        if att + "gate.weight" in sd and decay is not None and decay.dim() == 2 and decay.shape[1] > 1:
            return "5.2"
        raise ValueError(f"{source} is an RWKV-5.0/5.1 checkpoint; docstream supports RWKV-4, 5.2, 6 and 7")
    if att + "time_mix_k" in sd and att + "time_decay" in sd:
        return "4"
    raise ValueError(f"{source} has an unknown RWKV layout: expected the tensors of RWKV-4 (att.time_mix_k), "
                     f"5.2 (att.ln_x + att.gate), 6 (att.time_maa_x) or 7 (att.r_k)")


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The state dict stored at ``path`` in BlinkDL's names, memory-mapped where the file format allows.

    ``path`` is a BlinkDL ``.pth`` file, or a Hugging Face checkpoint (a model folder, a ``.safetensors``
    file or a ``pytorch_model.bin``; :mod:`docstream.model.formats.hf_files`) of RWKV-7 in fla's layout or
    RWKV-4 in transformers'."""
    from docstream.model.formats.hf_files import is_hf_path, read_hf_files, to_blinkdl
    from docstream.model.formats.torch_files import read_state_dict_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"RWKV checkpoint {str(path)!r} does not exist (expected a BlinkDL .pth file, "
                                f"a .safetensors file or a Hugging Face model folder)")
    sd = read_hf_files(path) if is_hf_path(path) else read_state_dict_file(path)
    return to_blinkdl(sd, repr(str(path)))


def build_model(sd: dict[str, Tensor], device: str | torch.device = "cpu", dtype: str = "fp32",
                source: str = "checkpoint", strategy: str | None = None) -> RWKVModel:
    """An inference model from a BlinkDL state dict (which is not modified). ``strategy`` (a string of
    :mod:`docstream.model.strategy`) places each layer on its own device and dtype, with int8 matrices
    where it says ``i8``; it replaces ``device`` and ``dtype``."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    version = detect_version(sd, source)
    if strategy is not None:
        places = plan_strategy(strategy, count_layers(sd))
    else:
        places = [Placement(_check_device(device), dtype, False)] * (count_layers(sd) + 1)
    check_finite(sd, source)
    cls = MODEL_CLASSES[version]
    sd = dict(sd)
    if version == "7":  # layer 0 never uses the value-residual parameters; some releases store them
        for name in ("v0", "v1", "v2"):
            sd.pop(f"blocks.0.att.{name}", None)
    try:
        config = cls.config_from_state_dict(sd)
    except KeyError as err:
        raise ValueError(f"{source} looks like RWKV-{version} but lacks tensor {err}") from err
    fp16 = any(p.dtype == "fp16" for p in places)
    if fp16 and version != "7":
        config = config.model_copy(update={"rescale_every": FP16_RESCALE_EVERY})
    with torch.device("meta"):
        model = cls(config)
    quantized = set(quantized_module_names(model, [prefix for i, p in enumerate(places) if p.int8
                                                   for prefix in _prefixes(i, config.n_layer)]))
    for name in quantized:
        module = model.get_submodule(name)
        with torch.device("meta"):
            if isinstance(module, torch.nn.Embedding):
                place = places[_place_of(name + ".weight", config.n_layer)]
                model.set_submodule(name, Int8Embedding(module.num_embeddings, module.embedding_dim,
                                                        place.torch_dtype))
            else:
                model.set_submodule(name, Int8Linear(module.in_features, module.out_features))
    converted = {}
    for name, t in sd.items():
        place = places[_place_of(name, config.n_layer)]
        module = name.rpartition(".")[0]
        if module in quantized:  # quantized from the checkpoint's own values, then moved
            q, scale = quantize_rows(_rescaled(name, t.float(), config.rescale_every))
            converted[module + ".weight_i8"] = q.to(place.device)
            converted[module + ".scale"] = scale.to(place.device)
        else:
            converted[name] = _convert(name, t, cls, place.torch_dtype, config.rescale_every, place.device)
    if fp16:  # the only dtype whose range is narrower than fp32's
        check_finite(converted, source, f"once converted to fp16 (largest value {torch.finfo(torch.float16).max:.0f}); "
                                        "load the model with dtype bf16 or fp32")
    try:
        model.load_state_dict(converted, strict=True, assign=True)
    except RuntimeError as err:
        raise ValueError(f"{source} does not match the RWKV-{version} layout: {err}") from err
    model.eval().requires_grad_(False)
    if strategy is not None:
        model.placements = places
        model.strategy = strategy
    return model


def _place_of(name: str, n_layer: int) -> int:
    """The strategy place of a checkpoint tensor: its block, block 0 for the embedding, the last place
    (n_layer) for ln_out and the head."""
    if name.startswith("blocks."):
        return int(name.split(".")[1])
    return 0 if name.startswith("emb.") else n_layer


def _prefixes(place: int, n_layer: int) -> list[str]:
    """The module-name prefixes of a place's layers (see :func:`_place_of`)."""
    if place == n_layer:
        return ["head"]
    return [f"blocks.{place}.", "emb"] if place == 0 else [f"blocks.{place}."]


def check_finite(sd: dict[str, Tensor], source: str = "checkpoint", after: str | None = None) -> None:
    """``ValueError`` naming the first tensor of ``sd`` that holds NaN or inf, and how many.

    One pass over each tensor (``isfinite().all()``); counting happens only for the bad one. NaN
    weights would otherwise give a run that succeeds with every vector NaN and a search that finds
    nothing. ``after`` says what made finite weights non-finite (a conversion), with its remedy.
    """
    for name, t in sd.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            nan = int(torch.isnan(t).sum())
            inf = t.numel() - int(torch.isfinite(t).sum()) - nan
            if after is not None:
                raise ValueError(f"{source}: tensor {name!r} has {nan} NaN and {inf} inf values of {t.numel()} "
                                 f"{after}")
            raise ValueError(f"{source} holds non-finite weights: tensor {name!r} has {nan} NaN and {inf} inf "
                             f"values of {t.numel()} (the first such tensor); the checkpoint is damaged or comes "
                             f"from a diverged training run: use an earlier or re-downloaded checkpoint")


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: str = "fp32",
               backend: str = "auto", strategy: str | None = None) -> RWKVModel:
    """Load a BlinkDL RWKV checkpoint; ``model.version`` is "4", "5.2", "6" or "7".

    ``dtype`` is "fp32", "bf16" or "fp16" (recurrent state and decays stay fp32 in every case);
    ``backend`` picks the WKV kernels ("auto", "cuda", "cpu", "torch"). ``strategy`` is a string in the
    official rwkv package's grammar, such as ``"cuda fp16i8 *10 -> cpu fp32"`` (see
    :mod:`docstream.model.strategy`); it places each layer instead of ``device`` and ``dtype``.
    """
    if strategy is not None and (str(device) != "cpu" or dtype != "fp32"):
        raise ValueError(f"give either a strategy or a device and dtype, not both (got strategy {strategy!r}, "
                         f"device {str(device)!r}, dtype {dtype!r}): the strategy names each layer's device "
                         f"and dtype")
    model = build_model(read_checkpoint(path), device, dtype, source=repr(str(path)), strategy=strategy)
    model.source_path = Path(path)
    return model.set_backend(backend)


def file_fingerprint(path: str | Path) -> str:
    """The identity snapshots record of the model that made them (see
    :func:`docstream.model.formats.hf_files.checkpoint_fingerprint`: a file's sha256, or a model folder's)."""
    from docstream.model.formats.hf_files import checkpoint_fingerprint

    return checkpoint_fingerprint(path)


def _check_device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but no CUDA GPU is available; use device='cpu'")
    return device


def _rescaled(name: str, t: Tensor, rescale_every: int) -> Tensor:
    """``t`` divided as fp16 rescaling needs (the output matrices of every ``rescale_every`` layers)."""
    if rescale_every and (name.endswith("att.output.weight") or name.endswith("ffn.value.weight")):
        t = t / (2 ** (int(name.split(".")[1]) // rescale_every))
    return t


def _convert(name: str, t: Tensor, cls: type[RWKVModel], dtype: torch.dtype, rescale_every: int,
             device: torch.device) -> Tensor:
    keep_fp32 = any(name.endswith(suffix) for suffix in cls.fp32_params)
    source = t
    t = _rescaled(name, t.to(device=device, dtype=torch.float32 if keep_fp32 else dtype), rescale_every)
    t = t.contiguous()
    if t.untyped_storage().data_ptr() == source.untyped_storage().data_ptr():
        # Still the caller's tensor: for a checkpoint read with mmap, pages of the file. Copy it, so the
        # model never shares memory with the state dict, and so that no page is read from disk in the
        # middle of a stream (the embedding rows of a token never seen before would otherwise fault in
        # from the file at its first use: 4-19 ms each, measured in decoding steps).
        t = t.clone()
    return t
