from llama_hw.cli import module_main

raise SystemExit(module_main("llama_hw.plan.recipe"))
