"""``docstream info``: what a checkpoint holds."""
from __future__ import annotations

import argparse
from pathlib import Path

from docstream.commands.flags import add_fields
from docstream.store.config import RunConfig, default_dtype


def register(sub: argparse._SubParsersAction) -> None:
    info = sub.add_parser("info", help="describe an RWKV checkpoint")
    add_fields(info, RunConfig, ("model", "dtype", "device", "strategy"))
    info.set_defaults(func=_cmd_info)

    convert = sub.add_parser("convert",
                             help="write a checkpoint in another layout (Hugging Face folder or BlinkDL .pth)")
    convert.add_argument("source", help="a BlinkDL .pth, a .safetensors file or a Hugging Face model folder")
    convert.add_argument("out", help="the new file (--to pth) or folder (--to hf); must not exist")
    convert.add_argument("--to", required=True, choices=("hf", "pth", "gguf"),
                         help="hf: model.safetensors + config.json (RWKV-7 in fla's layout, RWKV-4 in transformers'); "
                              "pth: BlinkDL's layout, as the official rwkv package loads it; gguf: RWKV-7 for "
                              "llama.cpp (float32, World vocabulary)")
    convert.add_argument("--tokenizer", help="with --to gguf: the model's World vocabulary file (default: the "
                                             "bundled rwkv_vocab_v20230424.txt)")
    convert.set_defaults(func=_cmd_convert)


def _cmd_info(args: argparse.Namespace) -> int:
    from docstream.defaults import default_model_path
    from docstream.model import load_model
    from docstream.model.formats.hf_files import checkpoint_format

    path = args.model if args.model is not None else default_model_path()
    placement = placement_args(args)
    model = load_model(path, **placement)
    c = model.config
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model      {path}")
    print(f"format     {checkpoint_format(Path(path))}")
    print(f"version    RWKV-{c.version}")
    print(f"layers     {c.n_layer}   width {c.n_embd}   attention {c.dim_att}   ffn {c.dim_ffn}")
    if c.head_size:
        print(f"heads      {c.n_head} x {c.head_size}")
    if c.lora:
        print("low-rank   " + ", ".join(f"{k} {v}" for k, v in sorted(c.lora.items())))
    print(f"vocabulary {c.vocab_size}")
    if model.placements is None:
        print(f"parameters {n_params / 1e6:.1f} M ({placement['dtype']} on {placement['device']})")
    else:
        from docstream.model.quant import weight_bytes
        from docstream.model.strategy import describe

        n_params += sum(b.numel() for name, b in model.named_buffers() if name.endswith("weight_i8"))
        print(f"parameters {n_params / 1e6:.1f} M, {weight_bytes(model) / 2**20:.1f} MiB")
        print(f"strategy   {args.strategy}: places {describe(model.placements)} (place {c.n_layer} is the head)")
    return 0


def placement_args(args: argparse.Namespace) -> dict:
    """``load_model`` keywords from a command's ``--strategy`` or its ``--device`` / ``--dtype``."""
    if args.strategy is not None:
        if args.device is not None or args.dtype is not None:
            raise ValueError("give either --strategy or --device/--dtype: the strategy names each layer's device "
                             "and dtype")
        return {"strategy": args.strategy}
    device = args.device or RunConfig.model_fields["device"].default
    return {"device": device, "dtype": args.dtype or default_dtype(device)}


def _cmd_convert(args: argparse.Namespace) -> int:
    from docstream.model.formats.convert import convert_checkpoint

    out = convert_checkpoint(args.source, args.out, args.to, args.tokenizer)
    print(f"wrote {out} ({args.to})")
    return 0
