"""One way to write a file: build it beside its destination, then rename.

Every writer in the package (checkpoints, ``encoder.keras``, ``config.yaml``,
``summary.json``, reports, plots, CSV monitors, export reports) goes through
:func:`atomic_write` or :func:`atomic_path`, so a reader never sees a half
written file and an interrupted write leaves the previous version intact.
Paths may be local or any ``tf.io.gfile`` URL (``gs://...``): remote files are
written to a local temporary first and copied next to the destination before
the rename.

Examples:

>>> import os, tempfile
>>> from bt_keras.io import atomic_write
>>> d = tempfile.mkdtemp()
>>> atomic_write(os.path.join(d, "a.json"), '{"x": 1}')
>>> open(os.path.join(d, "a.json")).read(), sorted(os.listdir(d))
('{"x": 1}', ['a.json'])
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile

# atomic_path's temporaries: ".<name>.<8 random characters from mkstemp>.tmp<suffix>"
_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp(\..*)?")


def is_remote(path: str) -> bool:
    """True for ``scheme://`` paths (gs://, s3://, hdfs://), which go through ``tf.io.gfile``."""
    return "://" in str(path)


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = ""):
    """Yields a file path to write; on success it replaces ``path`` in one rename.

    For libraries that write files themselves (``model.save``, ``save_weights``,
    ``savefig``). ``suffix`` ends the temporary name, for writers that choose
    their format from the extension (``.keras``, ``.weights.h5``). A local
    temporary lives beside ``path`` (same file system, so the rename is
    atomic); a remote one is written locally, copied next to ``path`` and
    renamed there. On an exception nothing is published and the temporary is
    removed.
    """
    path = str(path)
    if is_remote(path):
        import tensorflow as tf

        with tempfile.TemporaryDirectory(prefix="bt-keras-") as tmp:
            local = os.path.join(tmp, "file" + suffix)
            yield local
            remote_tmp = f"{path}.tmp-{os.getpid()}"
            tf.io.gfile.copy(local, remote_tmp, overwrite=True)
            tf.io.gfile.rename(remote_tmp, path, overwrite=True)
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp" + suffix)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; a published file gets the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def current_umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_orphaned_temporaries(directory: str) -> list:
    """Removes the temporaries :func:`atomic_path` left in ``directory`` when its writer was killed.

    Call it only while no other process writes there (a run directory under
    its lock). Remote directories are left alone.

    Args:
        directory: a local directory (missing is fine).

    Returns:
        The names removed.

    Examples:

    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> for name in (".latest.weights.h5.ab12cd_3.tmp.weights.h5", "latest.weights.h5"):
    ...     open(os.path.join(d, name), "w").close()
    >>> remove_orphaned_temporaries(d), os.listdir(d)
    (['.latest.weights.h5.ab12cd_3.tmp.weights.h5'], ['latest.weights.h5'])
    """
    if is_remote(directory) or not os.path.isdir(directory):
        return []
    removed = []
    for name in sorted(os.listdir(directory)):
        full = os.path.join(directory, name)
        if _TEMPORARY.fullmatch(name) and os.path.isfile(full) and not os.path.islink(full):
            with contextlib.suppress(FileNotFoundError):
                os.remove(full)
                removed.append(name)
    return removed


def atomic_write(path: str, data: str | bytes) -> None:
    """Writes ``data`` (text as UTF-8, or bytes) to ``path`` atomically."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as local, open(local, "wb") as f:
        f.write(payload)
