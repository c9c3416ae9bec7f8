"""Checkpoint formats other than BlinkDL's ``.pth``: Hugging Face layouts read into BlinkDL's names
(:mod:`.hf_files`, one module per layout), and ``docstream convert`` writing them, BlinkDL's ``.pth`` and
GGUF (:mod:`.convert`, :mod:`.gguf_rwkv7`)."""
