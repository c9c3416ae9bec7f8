"""docstream: long-document streaming over RWKV language models."""
__version__ = "0.1.0"
