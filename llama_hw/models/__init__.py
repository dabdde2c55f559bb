"""Models for inference: loading (base + LoRA adapter, dtype and placement from the backend) and the
run metadata (`llama_hw.json`) a training run leaves next to what it saved."""

from __future__ import annotations

from llama_hw.models.loading import ModelSource, load_model, placement, resolve_model_source
from llama_hw.models.metadata import METADATA_FILE, read_run_metadata, write_run_metadata

__all__ = [
    "METADATA_FILE",
    "ModelSource",
    "load_model",
    "placement",
    "read_run_metadata",
    "resolve_model_source",
    "write_run_metadata",
]
