"""FSDP2 (`torch.distributed.fsdp.fully_shard`) from FastChat's `--fsdp "full_shard auto_wrap"` flags.

Two engines do the sharding, both library code, chosen by where Trainer runs:
- On an accelerator, transformers hands FSDP to accelerate (`fsdp_config["version"] = 2`): every decoder
  layer is sharded, checkpoints hold the sharded optimizer state, and the model is saved as a full state
  dict gathered on rank 0 with CPU offload (the Alpaca tutorial ran out of device memory at that point).
- On the host CPU (`use_cpu`), accelerate ignores FSDP (it shards only in its MULTI_GPU/NPU/XPU modes;
  measured: the run silently falls back to DDP). There the model is sharded while it loads, with
  transformers' own FSDP2 (`from_pretrained(distributed_config=DistributedConfig(fsdp_size=N))`); Trainer
  recognises such a model, keeps it out of DDP and saves it as a full state dict gathered on rank 0 with
  CPU offload. transformers cannot checkpoint its optimizer state, so checkpoints hold the model only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from llama_hw.errors import UsageError

SHARDING = {"full_shard": True, "shard_grad_op": False}  # FSDP2's reshard_after_forward
FSDP1_ONLY = ("hybrid_shard", "hybrid_shard_zero2", "no_shard")


@dataclass
class FsdpPlan:
    reshard_after_forward: bool = True
    cpu_offload: bool = False
    layer_classes: list[str] = field(default_factory=list)  # empty: the model's own decoder-layer plan
    extra_config: dict[str, Any] = field(default_factory=dict)  # other fsdp_config keys, passed through

    def trainer_arguments(self) -> dict[str, Any]:
        """TrainingArguments for accelerate's FSDP2."""
        config = {
            **self.extra_config,
            "version": 2,
            "reshard_after_forward": self.reshard_after_forward,
            "cpu_offload": self.cpu_offload,
            "state_dict_type": self.extra_config.get("state_dict_type", "FULL_STATE_DICT"),
        }
        if self.layer_classes:
            config["transformer_layer_cls_to_wrap"] = list(self.layer_classes)
        return {"fsdp": True, "fsdp_config": config}

    def load_time_config(self, world_size: int):
        """transformers' load-time FSDP2 over all `world_size` processes."""
        from transformers.distributed import DistributedConfig

        return DistributedConfig(fsdp_size=world_size, fsdp_cpu_offload=self.cpu_offload)


def read_fsdp_config(value: dict | str | None) -> dict[str, Any]:
    if not value:
        return {}
    if isinstance(value, dict):
        config = dict(value)
    elif str(value).lstrip().startswith("{"):
        config = json.loads(value)
    else:
        if not os.path.isfile(value):
            raise UsageError(f"--fsdp_config {value}: no such file")
        with open(value, encoding="utf-8") as handle:
            config = json.load(handle)
    # transformers 4 spelled the keys with an fsdp_ prefix
    return {key.removeprefix("fsdp_"): item for key, item in config.items()}


def fsdp_plan(fsdp: str | bool | None, fsdp_config: dict | str | None,
              layer_classes: list[str] | None = None) -> FsdpPlan | None:
    """The FSDP plan `--fsdp`, `--fsdp_config` and `--fsdp_transformer_layer_cls_to_wrap` ask for, or None."""
    if fsdp in (None, "", False) or str(fsdp).lower() in ("false", "no", "none"):
        return None
    config = read_fsdp_config(fsdp_config)
    if int(config.pop("version", 2)) != 2:
        raise UsageError("fsdp_config version 1 (FSDP1) is not supported; llama_hw shards with FSDP2")
    plan = FsdpPlan()
    options = [] if fsdp is True or str(fsdp).lower() == "true" else str(fsdp).split()
    for option in options:
        if option in SHARDING:
            plan.reshard_after_forward = SHARDING[option]
        elif option == "offload":
            plan.cpu_offload = True
        elif option == "auto_wrap":
            pass  # FSDP2 always shards decoder layers as units
        elif option in FSDP1_ONLY:
            raise UsageError(f"--fsdp {option} exists only in FSDP1; use full_shard or shard_grad_op (FSDP2)")
        else:
            raise UsageError(f"--fsdp: unknown option {option!r}; use full_shard, shard_grad_op, offload, auto_wrap")
    if "reshard_after_forward" in config:
        plan.reshard_after_forward = str(config.pop("reshard_after_forward")).lower() in ("true", "1")
    if "cpu_offload" in config:
        plan.cpu_offload = str(config.pop("cpu_offload")).lower() in ("true", "1")
    classes = layer_classes or config.pop("transformer_layer_cls_to_wrap", None) or []
    plan.layer_classes = [classes] if isinstance(classes, str) else list(classes)
    plan.extra_config = config
    return plan
