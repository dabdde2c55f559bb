"""Training data: conversations for supervised fine-tuning (read, validate, render, tokenize, mask, batch,
pack) and text corpora for continued pre-training (cached documents cut into random windows or chunks).

Names are imported on first use (PEP 562), so `llama-hw data inspect` rejects a bad record before
torch, transformers or datasets are loaded. The public API:

    tokenizer = load_tokenizer(path, model_max_length=None, padding_side=None, trust_remote_code=False)
    sft = build_sft_data(DataArguments(data_path=...), tokenizer, model_max_length)  # -> SFTData
    # a corpus (detected, or data_format="text"): WindowDataset / ChunkDataset rows, loss on every token
    text = build_sft_data(DataArguments(data_path="papers/", text_cut="window"), tokenizer, 512)
    encode_conversation([{"role": "user", "content": ...}, ...], tokenizer, "vicuna_v1.1", max_length)
    make_collator("max" | "dynamic" | "packed", tokenizer, model_max_length, pad_to_multiple_of=None)
    pack_sequences(dataset, max_length)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "DataArguments": "sft",
    "SFTData": "sft",
    "build_sft_data": "sft",
    "load_tokenizer": "tokenizer",
    "encode_conversation": "encode",
    "encode_conversations": "encode",
    "Encoded": "encode",
    "IGNORE_INDEX": "encode",
    "make_collator": "collate",
    "pack_sequences": "packing",
    "get_template": "templates",
    "read_records": "formats",
    "DataStats": "stats",
    "TextStats": "stats",
    "build_text_data": "pretrain",
    "WindowDataset": "windows",
    "ChunkDataset": "windows",
    "window_starts": "windows",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from llama_hw.data.collate import make_collator
    from llama_hw.data.encode import IGNORE_INDEX, Encoded, encode_conversation, encode_conversations
    from llama_hw.data.formats import read_records
    from llama_hw.data.packing import pack_sequences
    from llama_hw.data.pretrain import build_text_data
    from llama_hw.data.sft import DataArguments, SFTData, build_sft_data
    from llama_hw.data.stats import DataStats, TextStats
    from llama_hw.data.templates import get_template
    from llama_hw.data.tokenizer import load_tokenizer
    from llama_hw.data.windows import ChunkDataset, WindowDataset, window_starts


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'llama_hw.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"llama_hw.data.{_EXPORTS[name]}"), name)
