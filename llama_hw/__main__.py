"""`python -m llama_hw COMMAND ...` is the `llama-hw` console script."""

from llama_hw.cli import main

raise SystemExit(main())
