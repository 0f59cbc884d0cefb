"""What every bt_keras command shares: one-line user errors with exit code 2."""

from __future__ import annotations

import argparse
import sys


class UserError(Exception):
    """A problem with the user's input: reported as one line, exit code 2, no traceback."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump) and exit code 2."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def run_command(prog: str, body, argv=None) -> int:
    """Runs ``body(argv)``; a ``UserError`` becomes ``prog: error: ...`` and exit code 2."""
    try:
        return body(argv) or 0
    except UserError as e:
        sys.stderr.write(f"{prog}: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130
