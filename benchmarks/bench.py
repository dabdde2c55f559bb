"""`python benchmarks/bench.py run ...` = `python -m llama_hw.bench run ...`, as a script path for
`python -m llama_hw.launch --script benchmarks/bench.py -- run ...` (the launcher starts scripts or the trainer)."""

from llama_hw.cli import module_main

raise SystemExit(module_main("llama_hw.bench.recipe"))
