"""`python -m llama_hw.train` (or `llama-hw train`): fine-tune with FastChat's command line on any backend.

    python -m llama_hw.train --model_name_or_path M --data_path D.json --output_dir OUT [TrainingArguments]
    python -m llama_hw.train config.yaml [--flag value ...]
    torchrun --nproc_per_node 8 -m llama_hw.train ...   (or python -m llama_hw.launch -- ...)
"""

from __future__ import annotations

from llama_hw.train.config import parse_args
from llama_hw.train.logs import configure_logging, logger
from llama_hw.train.rerun import finished_run
from llama_hw.train.session import build_session, overwrite_requested
from llama_hw.utils import distributed


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    configure_logging(config.training.get("log_level"), config.training.get("log_level_replica"))
    finished = finished_run(config, overwrite=overwrite_requested(config))
    if finished:  # the same command again: say so and leave every file as it is
        logger.info(finished)
        return 0
    try:
        build_session(config).run()
    except BaseException:
        # Another rank may be gone: no barrier, so the elastic agent can restart the group at once.
        distributed.end_process_group(clean=False)
        raise
    distributed.end_process_group(clean=True)
    return 0
