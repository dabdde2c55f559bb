"""User-facing errors and the one place that turns them into a message and an exit code.

Every entry point runs through `run_cli`, so bad input ends with a short message naming the problem
and the fix, exit code 2, and never a traceback from deep inside torch.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class LlamaHwError(Exception):
    """An error the user can fix; its message says how."""

    exit_code = 2


class UsageError(LlamaHwError):
    """A bad flag, flag combination or config value."""


class DeviceUnavailable(LlamaHwError):
    """The requested accelerator cannot be used; the message names the cause and the fix."""


class DataError(LlamaHwError):
    """A data file or record is invalid; the message names file, record index and rule."""


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run `main(argv)`; print LlamaHwError as `error: ...` on stderr and return its exit code."""
    try:
        code = main(argv)
    except LlamaHwError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)
