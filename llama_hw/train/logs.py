"""The trainer's messages through Python `logging`: shown by the first process only, at `--log_level`.

transformers' own `--log_level` / `--log_level_replica` flags (TrainingArguments) set llama_hw's level
too, with the same meaning: the first process (global rank 0) logs at `--log_level` ("passive", the
default, means info here: the start banner and notes), every other process at `--log_level_replica`
(warning by default), so an 8-process job prints its banner once.
"""

from __future__ import annotations

import logging
import sys

from llama_hw.utils import distributed

LOGGER_NAME = "llama_hw"
LEVELS = {"detail": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR, "critical": logging.CRITICAL}
DEFAULT_MAIN, DEFAULT_REPLICA = "info", "warning"

logger = logging.getLogger("llama_hw.train")


class UserFormatter(logging.Formatter):
    """Info as it is (the banner is for reading); warnings and worse with their level in front."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {message}"
        return message


class CurrentStdout(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time of the message (pytest and callers may swap it)."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value):
        pass


def level_for_this_process(log_level: str | None, log_level_replica: str | None) -> int:
    if distributed.is_main_process():
        word = log_level if log_level not in (None, "passive") else DEFAULT_MAIN
    else:
        word = log_level_replica if log_level_replica not in (None, "passive") else DEFAULT_REPLICA
    return LEVELS[word]


def configure_logging(log_level: str | None = None, log_level_replica: str | None = None) -> None:
    """Send llama_hw's messages to stdout at this process's level; calling it again replaces the setup."""
    package_logger = logging.getLogger(LOGGER_NAME)
    for handler in [h for h in package_logger.handlers if isinstance(h, CurrentStdout)]:
        package_logger.removeHandler(handler)
    handler = CurrentStdout()
    handler.setFormatter(UserFormatter())
    package_logger.addHandler(handler)
    package_logger.setLevel(level_for_this_process(log_level, log_level_replica))
    # propagation stays on: an application's (or pytest's) root handlers still see llama_hw's records
