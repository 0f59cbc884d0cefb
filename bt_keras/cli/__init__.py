"""The ``bt-*`` commands, and what they share: one-line user errors with exit code 2.

Each command lives in its own module (``train``, ``eval``, ``export``,
``data``) and is a thin layer over the library: parse and validate the
arguments (before TensorFlow is imported where possible), call the library,
print. Only these modules print; the library logs through
``logging.getLogger("bt_keras")``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys

from bt_keras.errors import UserError

__all__ = ["ArgumentParser", "UserError", "log_to_console", "run_command"]


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump) and exit code 2."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def run_command(prog: str, body, argv=None) -> int:
    """Runs ``body(argv)``; a ``UserError`` becomes ``prog: error: ...`` and exit code 2.

    While it runs, the library's log records show as ``prog: message`` lines.
    """
    with log_to_console(prog):
        try:
            return body(argv) or 0
        except UserError as e:
            sys.stderr.write(f"{prog}: error: {e}\n")
            return 2
        except KeyboardInterrupt:
            sys.stderr.write(f"{prog}: interrupted\n")
            return 130


class _ConsoleHandler(logging.Handler):
    """``prog: message``: information to stdout, warnings and errors to stderr."""

    def __init__(self, prog: str):
        super().__init__(logging.INFO)
        self.prog = prog

    def emit(self, record):
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        try:
            stream.write(f"{self.prog}: {record.getMessage()}\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging must never take the command down
            self.handleError(record)


@contextlib.contextmanager
def log_to_console(prog: str):
    """Shows the ``bt_keras`` logger's records as the command's own output lines, then restores it.

    Not propagated: TensorFlow's absl handler on the root logger would print each line twice.
    """
    logger = logging.getLogger("bt_keras")
    handler = _ConsoleHandler(prog)
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
