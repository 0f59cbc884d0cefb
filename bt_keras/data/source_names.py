"""What a source string says, checked without TensorFlow: its kind, and a local folder's existence.

:func:`~bt_keras.data.sources.parse_source` opens sources (and needs TensorFlow); these checks run
before it starts, so ``bt-train`` and ``bt-eval`` answer a typo in a source at once, in the same
words as the full check.

Examples:

>>> source_error("ftp://x")
"cannot read 'ftp://x'; use demo[:train|test], tfds:NAME[:SPLIT], folder:PATH, tfrecord:GLOB or NumPy arrays"
>>> source_error("folder:/no/such/photos")
'folder:/no/such/photos: no such directory (looked for /no/such/photos)'
>>> source_error("demo:train") is None
True
"""

from __future__ import annotations

import os

KINDS = ("demo", "tfds", "folder", "tfrecord")
USAGE = "use demo[:train|test], tfds:NAME[:SPLIT], folder:PATH, tfrecord:GLOB or NumPy arrays"


def user_path(path: str) -> str:
    """``path`` with a leading ``~`` expanded (local paths only: ``gs://...`` is left as it is).

    Shells expand ``~`` only at the start of a word, so ``folder:~/photos`` reaches us unexpanded.

    >>> user_path("gs://bucket/x"), user_path("~/x") == os.path.expanduser("~/x")
    ('gs://bucket/x', True)
    """
    return path if "://" in path else os.path.expanduser(path)


def where_looked(path: str) -> str:
    """How a missing local path was resolved, for messages: the absolute path, and the working
    directory a relative path was taken against."""
    if "://" in path:
        return path
    looked = os.path.abspath(path)
    return looked if os.path.isabs(path) else f"{looked}, relative to the working directory {os.getcwd()}"


def unknown_kind(source: str) -> str | None:
    """The message for a source string of no known kind, or ``None``."""
    kind, _, rest = source.partition(":")
    if kind == "demo" or (kind in KINDS and rest):
        return None
    return f"cannot read {source!r}; {USAGE}"


def missing_folder(root: str) -> str | None:
    """The message for a ``folder:`` root that is not a directory (local roots only), or ``None``."""
    path = user_path(root).rstrip("/") or "/"
    if "://" in path or os.path.isdir(path):
        return None
    return f"folder:{root}: no such directory (looked for {where_looked(path)})"


def source_error(source) -> str | None:
    """What is wrong with ``source`` that can be told without TensorFlow, or ``None``."""
    if not isinstance(source, str):
        return None  # NumPy arrays: checked when opened
    message = unknown_kind(source)
    if message is None and source.startswith("folder:"):
        message = missing_folder(source[len("folder:") :])
    return message
