"""Fine-tuning: transformers' Trainer driven by FastChat's flags, on whatever backend is selected.

    from llama_hw.train import parse_args, build_session
    session = build_session(parse_args(["--model_name_or_path", M, "--data_path", D, "--output_dir", O]))
    result = session.run()        # or session.train() / session.trainer for finer control
"""

from __future__ import annotations

from llama_hw.train.config import TrainConfig, parse_args
from llama_hw.train.session import Parallelism, TrainingSession, build_session

__all__ = ["Parallelism", "TrainConfig", "TrainingSession", "build_session", "parse_args"]
