"""DeepSpeed ZeRO: the shipped presets, loading a user's config, and starting DeepSpeed's process group.

`--deepspeed zero1|zero2|zero3|zero3_offload` picks a preset from `deepspeed_presets/` (package data);
anything else is a path to a JSON file, or inline JSON. The presets leave batch sizes, precision,
gradient clipping and bucket sizes "auto", so transformers fills them in from the other flags, and set
`"zero_force_ds_cpu_optimizer": false` so the Trainer's own optimizer (torch AdamW) runs with optimizer
offload too — measured here: ZeRO-2, ZeRO-3 and ZeRO-2 with optimizer offload then match DDP's loss
exactly. DeepSpeed compiles a small shared-memory extension on its first use (about 30 s, needs g++).
"""

from __future__ import annotations

import json
import os
from importlib import resources
from typing import Any

from llama_hw.backends import Backend
from llama_hw.errors import UsageError

PRESETS = ("zero1", "zero2", "zero2_offload_optimizer", "zero3", "zero3_offload_optimizer", "zero3_offload")


def preset_path(name: str):
    return resources.files("llama_hw.train") / "deepspeed_presets" / f"{name}.json"


def load_deepspeed_config(value: str | dict | None) -> dict[str, Any] | None:
    """The DeepSpeed config `--deepspeed value` names: a preset, a JSON file, or inline JSON."""
    if value in (None, "", False):
        return None
    if isinstance(value, dict):
        return with_trainer_optimizer(dict(value))
    text = str(value).strip()
    if text in PRESETS:
        return json.loads(preset_path(text).read_text(encoding="utf-8"))
    if text.startswith("{"):
        try:
            return with_trainer_optimizer(json.loads(text))
        except ValueError as err:
            raise UsageError(f"--deepspeed: inline JSON is invalid ({err})") from err
    if not os.path.isfile(text):
        raise UsageError(
            f"--deepspeed {text}: no such file; give a DeepSpeed JSON config or one of {', '.join(PRESETS)}"
        )
    try:
        with open(text, encoding="utf-8") as handle:
            config = json.load(handle)
    except ValueError as err:
        raise UsageError(f"--deepspeed {text} is not valid JSON ({err})") from err
    if not isinstance(config, dict):
        raise UsageError(f"--deepspeed {text} must hold a JSON object")
    return with_trainer_optimizer(config)


def with_trainer_optimizer(config: dict[str, Any]) -> dict[str, Any]:
    """Let DeepSpeed offload the Trainer's optimizer when the config names none of its own.

    FastChat's playground/deepspeed_config_s2.json offloads the optimizer and names none; DeepSpeed since
    0.10 refuses that ("ZeRO-Offload with a client provided optimizer") unless told it is intended.
    """
    if "optimizer" not in config:
        config.setdefault("zero_force_ds_cpu_optimizer", False)
    return config


def zero_stage(config: dict[str, Any] | None) -> int:
    """ZeRO stage of a DeepSpeed config; 0 without DeepSpeed or without a zero_optimization section."""
    if not config:
        return 0
    return int(config.get("zero_optimization", {}).get("stage", 0))


def offloads(config: dict[str, Any] | None) -> bool:
    """Whether a DeepSpeed config moves optimizer states or parameters to the host."""
    zero = (config or {}).get("zero_optimization", {})
    return any(str(zero.get(key, {}).get("device", "none")) != "none" for key in ("offload_optimizer", "offload_param"))


def init_deepspeed_distributed(backend: Backend) -> None:
    """Start DeepSpeed's communication layer on the backend's collective library.

    Must run before the model loads: with ZeRO-3, `from_pretrained` partitions the weights while they load
    (`deepspeed.zero.Init`), which needs DeepSpeed's process group; without it each rank believes it is
    alone and the batch-size check fails later (measured here).
    """
    os.environ.setdefault("DS_ACCELERATOR", backend.deepspeed_accelerator)
    import deepspeed

    deepspeed.init_distributed(dist_backend=backend.dist_backend)
