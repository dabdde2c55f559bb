"""llama_hw: one fine-tuning recipe for LLaMA-family models on CUDA, Ascend NPU and CPU."""

__version__ = "0.1.0"
