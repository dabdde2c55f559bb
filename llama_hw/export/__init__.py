"""Merge a LoRA adapter into its base model: `python -m llama_hw.export --base B --adapter A --out O`."""

from __future__ import annotations

from llama_hw.export.merge import merge_adapter

__all__ = ["merge_adapter"]
