"""RWKV models: checkpoint loading with version detection, per-version blocks, and the typed State."""
from docstream.model.base import Hidden, RWKVModel
from docstream.model.config import VERSIONS, ModelConfig
from docstream.model.loader import build_model, detect_version, file_fingerprint, load_model, read_checkpoint
from docstream.model.state import State

__all__ = ["Hidden", "ModelConfig", "RWKVModel", "State", "VERSIONS", "build_model", "detect_version",
           "file_fingerprint", "load_model", "read_checkpoint"]
