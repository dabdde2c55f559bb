#!/usr/bin/env bash
# The device check kit: one command that proves llama_hw on one CUDA GPU or one Ascend NPU (<= 8 minutes on
# an H100/H200-class GPU or a 910B). Run it from a checkout in the environment you installed llama_hw into
# (pip install -e '.[dev]'; on Ascend with CANN sourced); it installs nothing. Writes
# benchmarks/results/<device>.jsonl and benchmarks/results/<device>.md (the verdict); on a CPU-only host it
# says so in one line and exits 0. Details: docs/how-to/device-check.md
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" benchmarks/device_check.py "$@"
