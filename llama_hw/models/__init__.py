"""Models for inference: loading (base + LoRA adapter, dtype and placement from the backend), Hub ids
resolved through the Hugging Face cache, checks on a checkpoint's files before they load, and the run
metadata (`llama_hw.json`) a training run leaves next to what it saved."""

from __future__ import annotations

from llama_hw.models.checks import check_checkpoint, loading_errors
from llama_hw.models.hub import resolve_model_path
from llama_hw.models.loading import ModelSource, check_adapter_dir, load_model, placement, resolve_model_source
from llama_hw.models.metadata import METADATA_FILE, read_run_metadata, write_run_metadata

__all__ = [
    "METADATA_FILE",
    "ModelSource",
    "check_adapter_dir",
    "check_checkpoint",
    "load_model",
    "loading_errors",
    "placement",
    "read_run_metadata",
    "resolve_model_path",
    "resolve_model_source",
    "write_run_metadata",
]
