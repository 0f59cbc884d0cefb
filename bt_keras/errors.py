"""The package's exceptions, and how one is told to a user in a single line.

A :class:`UserError` is a problem with the user's input (a config key, a
source, a flag): the CLIs print it as ``prog: error: <message>`` with exit
code 2 and no traceback. Each concern raises its own subclass, so callers can
catch ``DataError`` without catching a bad export flag.

Examples:

>>> from bt_keras.errors import DataError, UserError, one_line
>>> issubclass(DataError, UserError) and issubclass(DataError, ValueError)
True
>>> one_line(ValueError("bad\\n   value  {{node x}} here [Op:DecodeJpeg] name: y"))
'bad value here'
"""

from __future__ import annotations

import re


class UserError(Exception):
    """A problem with the user's input: reported as one line, exit code 2, no traceback."""


class ConfigError(UserError, ValueError):
    """A configuration problem, reported as one line naming the key."""


class AugmentConfigError(UserError, ValueError):
    """A bad augmentation setting; the message names the field."""


class DataError(UserError, ValueError):
    """A problem with the data source or data settings, reported as one line."""


class ExportArgumentError(UserError, ValueError):
    """Bad arguments to ``export_encoder`` (the CLI reports them in one line, exit 2)."""


class ExportFailed(RuntimeError):
    """The export was built but failed a check (parity, ONNX conversion); nothing was kept."""


class TrainingStopped(RuntimeError):
    """Training could not go on (non-finite loss, a lost worker); the last checkpoint is intact."""


def one_line(e: BaseException, limit: int = 200) -> str:
    """A library exception's message on one line, without TensorFlow's node and op decorations."""
    msg = getattr(e, "message", None) or str(e)
    msg = " ".join(msg.split())
    msg = re.sub(r"\{\{[^}]*\}\}\s*", "", msg)  # TF's function-node prefix
    msg = re.sub(r"\s*\[Op:\w+\].*$", "", msg)
    return msg[:limit].replace("\t", " ")
