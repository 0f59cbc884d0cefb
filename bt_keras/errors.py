"""The package's exceptions, and how one is told to a user in a single line.

A :class:`UserError` is a problem with the user's input (a config key, a
source, a flag): the CLIs print it as ``prog: error: <message>`` with exit
code 2 and no traceback. Each concern raises its own subclass, so callers can
catch ``DataError`` without catching a bad export flag.

Examples:

>>> from bt_keras.errors import DataError, UserError, one_line, short_repr
>>> issubclass(DataError, UserError) and issubclass(DataError, ValueError)
True
>>> one_line(ValueError("bad\\n   value  {{node x}} here [Op:DecodeJpeg] name: y"))
'bad value here'
>>> short_repr("x" * 1000)[-24:]
'xxx... (1000 characters)'
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


class CheckpointUnreadable(RuntimeError):
    """The run's checkpoint is damaged (truncated, not HDF5); it was left as it is."""


class RunLocked(UserError):
    """Another process holds the run directory (its lock file names the host and PID)."""


def short_repr(value, limit: int = 80) -> str:
    """``repr(value)``, cut to about ``limit`` characters: what an error message may quote of a user's value.

    A value can be as large as its input (a YAML alias bomb expands to megabytes),
    so a message never quotes one whole. Containers are not rendered past the
    limit: ``reprlib`` stops at a few items per level before anything big is built.

    Args:
        value: anything.
        limit: most characters kept from the repr.

    Examples:

    >>> short_repr("enc\\n")
    "'enc\\\\n'"
    >>> short_repr(list(range(10_000)))
    '[0, 1, 2, 3, 4, 5, ...]'
    """
    import reprlib

    bounded = reprlib.Repr()
    bounded.maxlevel, bounded.maxstring, bounded.maxother = 3, limit, limit
    if isinstance(value, (str, bytes)):
        return repr(value) if len(value) <= limit else f"{repr(value[:limit])[:-1]}... ({len(value)} characters)"
    text = bounded.repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def _without_graph_traceback(msg: str) -> str:
    """The reason in a ``Graph execution error``: TensorFlow puts it after the Python stack where the
    failing op was defined ("Detected at node ... (most recent call last): File ..."), so a cut
    message would show only the stack."""
    if not msg.startswith("Graph execution error") or "Detected at node" not in msg:
        return msg
    lines = msg.splitlines()
    frames = [i for i, line in enumerate(lines) if re.match(r'\s+File "', line)]
    rest = lines[frames[-1] + 1 :] if frames else lines[1:]
    # After the last frame: its source line (indented, when Python could read it), then the reason.
    while rest and (not rest[0].strip() or rest[0].startswith("    ")):
        rest = rest[1:]
    return "\n".join(rest) or msg


def one_line(e: BaseException, limit: int = 200) -> str:
    r"""A library exception's message on one line, without TensorFlow's node and op decorations.

    >>> stack = 'Detected at node cond/ExtractJpegShape defined at (most recent call last):\n  File "x.py", line 7\n'
    >>> one_line(ValueError("Graph execution error:\n\n" + stack + "\nBogus marker\n\t [[{{node cond/E}}]] [Op:f]"))
    'Bogus marker'
    """
    msg = getattr(e, "message", None) or str(e)
    msg = _without_graph_traceback(msg[: 50 * limit])
    msg = msg[: 20 * limit]  # a message can quote a whole input: cut before the regular expressions
    msg = " ".join(msg.split())
    msg = re.sub(r"\s*\[\[(\{\{[^}]*\}\})+\]\]", "", msg)  # TF's node list after the message
    msg = re.sub(r"\{\{[^}]*\}\}\s*", "", msg)  # TF's function-node prefix
    msg = re.sub(r"\s*\[Op:\w+\].*$", "", msg).replace("\t", " ")
    if len(msg) <= limit:
        return msg
    cut = msg[: limit - 3]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut) + "..."  # at a word's end where there is one
