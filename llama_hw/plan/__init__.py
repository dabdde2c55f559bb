"""Plan a training job before running it: per-device memory, fit, step time and tokens/s/device.

    from llama_hw.plan import Job, make_plan            # components
    python -m llama_hw.plan --model llama-7b --devices 8 --device-product A100-80GB   # the recipe

`job` (what is trained), `memory` (bytes per device, part by part), `speed` (FLOPs and offload time),
`rows` (synthetic rows or a data set's real lengths), `devices` (product tables, the backend, calibration),
`search` (the configurations and the recommendation), `recipe` (the command line), `train_check` (the
prediction the trainer prints, and its refusal).
"""

from llama_hw.plan.job import Job
from llama_hw.plan.memory import Configuration, MemoryBreakdown, Rows
from llama_hw.plan.search import Plan, make_plan

__all__ = ["Configuration", "Job", "MemoryBreakdown", "Plan", "Rows", "make_plan"]
