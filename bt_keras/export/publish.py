"""All or nothing: an export is built in a hidden sibling directory and renamed into place.

:func:`staging_directory` creates ``.<out>.bt-export-tmp-<pid>-<random>`` next
to the output directory and always removes it; :func:`publish` moves it in
with renames, so a crash or Ctrl-C never leaves a half export. A new output
directory is the staging directory renamed. Into an existing export
(``overwrite``), only what this export wrote is replaced, each entry by its
own rename: the version directory ``saved_model/<name>/<version>``, the ONNX
file ``onnx/<name>.onnx`` and ``export_report.json``. Other versions (TF
Serving serves them side by side), other model names and the user's own
files stay. Temporaries carry the writer's pid, so a later export removes
those of a writer that was killed (SIGKILL cannot be cleaned up after) but
never those of a running one. The staging directory gets the usual
permissions (``0777`` less the umask), not ``mkdtemp``'s ``0700``: a serving
process running as another user must be able to read the export.

``bt-embed`` publishes its outputs with the same functions (``mark="bt-embed"``,
its own ``check``): an entry named in ``entries`` that the new output lacks
(``duplicates.tsv`` of an earlier run with ``--duplicates``, an ONNX file of an
earlier export with more formats) is removed, so an output never mixes runs.

Examples:

>>> import os, tempfile
>>> from pathlib import Path
>>> from bt_keras.export.publish import publish, staging_directory
>>> out = Path(tempfile.mkdtemp()) / "exp"
>>> with staging_directory(out) as tmp:
...     _ = (tmp / "export_report.json").write_text("{}")
...     publish(tmp, out, overwrite=False)
>>> sorted(os.listdir(out)), sorted(os.listdir(out.parent))
(['export_report.json'], ['exp'])
>>> with staging_directory(out) as tmp:
...     (tmp / "onnx").mkdir()
...     _ = (tmp / "onnx" / "b.onnx").write_text("b")
...     _ = (tmp / "export_report.json").write_text("{}")
...     publish(tmp, out, overwrite=True, entries=["onnx/b.onnx", "export_report.json"])
>>> sorted(str(p.relative_to(out)) for p in out.rglob("*"))
['export_report.json', 'onnx', 'onnx/b.onnx']
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
import threading
from pathlib import Path

from bt_keras.errors import ExportArgumentError, one_line
from bt_keras.export.layout import REPORT_FILE
from bt_keras.io import current_umask


def check_destination(out_dir: Path, overwrite: bool) -> None:
    """Refuses an output directory that holds something else, or an export without ``overwrite``.

    An existing directory is a bt-export output when it has ``export_report.json``;
    any other non-empty directory is never touched.

    Args:
        out_dir: the output directory (absolute).
        overwrite: whether an existing export may be replaced.

    Examples:

    >>> import tempfile
    >>> from pathlib import Path
    >>> check_destination(Path(tempfile.mkdtemp()) / "new", overwrite=False)
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportArgumentError(f"{out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not (out_dir / REPORT_FILE).is_file():
            raise ExportArgumentError(
                f"{out_dir} is not empty and is not a bt-export output; choose another output directory"
            )
        if not overwrite:
            raise ExportArgumentError(
                f"{out_dir} already holds an export; to replace it, pass --overwrite (overwrite=True from Python)"
            )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(out_dir: Path, mark: str = "bt-export") -> None:
    """Removes temporaries a killed writer left next to ``out_dir`` (their pid is gone).

    Args:
        out_dir: the output directory (absolute).
        mark: the writer's name in its temporaries (``bt-export``, ``bt-embed``).
    """
    prefix = f".{out_dir.name}"
    for entry in out_dir.parent.glob(f"{prefix}.{mark}-*"):
        match = re.fullmatch(re.escape(prefix + "." + mark) + r"-(tmp|old)-(\d+)-\w+", entry.name)
        if match and not _pid_alive(int(match.group(2))):
            if match.group(1) == "old" and not out_dir.exists():
                continue  # the previous export, moved aside by a writer killed mid-swap: keep it
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


@contextlib.contextmanager
def staging_directory(out_dir: Path, mark: str = "bt-export"):
    """Yields a new hidden directory next to ``out_dir`` to build the output in; always removed after.

    Stale temporaries of killed writers are removed first.

    Args:
        out_dir: the output directory (absolute); its parent is created.
        mark: the writer's name in the directory's name (``bt-export``, ``bt-embed``).
    """
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out_dir, mark)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{mark}-tmp-{os.getpid()}-", dir=out_dir.parent))
        os.chmod(tmp, 0o777 & ~current_umask())
    except OSError as e:
        raise ExportArgumentError(f"cannot write next to {out_dir}: {one_line(e)}") from None
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# Set by bt-export's SIGTERM handler. The handler also raises KeyboardInterrupt, but Python
# runs it at whatever bytecode comes next, which may be inside a ``__del__`` or a library's bare
# ``except:`` (TensorFlow dismantles function graphs in one while it saves) that swallows it;
# the export would then finish and publish although it was told to stop. Checked at the only
# point that matters: before anything is renamed into place.
STOP_REQUESTED = threading.Event()


def _interrupt(signum, frame):
    STOP_REQUESTED.set()  # holds even where the exception below is swallowed
    raise KeyboardInterrupt


@contextlib.contextmanager
def stop_on_sigterm():
    """Inside, SIGTERM (docker stop, kill) unwinds like Ctrl-C: staging removed, nothing published.

    The command then says ``interrupted`` and exits with 130 (:func:`bt_keras.cli.run_command`).
    Outside the main thread (where signals cannot be handled) it does nothing.
    """
    STOP_REQUESTED.clear()
    try:
        previous = signal.signal(signal.SIGTERM, _interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        STOP_REQUESTED.clear()  # the request was this command's: a later one in this process starts afresh


def publish(
    tmp: Path, out_dir: Path, overwrite: bool, entries=None, check=check_destination, mark: str = "bt-export"
) -> None:
    """Moves the finished ``tmp`` to ``out_dir``; into an existing output (``overwrite``), only ``entries``.

    Args:
        tmp: the staging directory, complete.
        out_dir: the output directory (absolute).
        overwrite: whether an existing output may be replaced (checked again here).
        entries: paths relative to ``tmp`` that replace their counterparts in an
            existing output (default: every top-level entry of ``tmp``), in this
            order; put the report (``export_report.json``) last. One that ``tmp``
            lacks is removed from the output.
        check: ``check(out_dir, overwrite)`` raises if ``out_dir`` may not be written.
        mark: the writer's name in temporaries (as for :func:`staging_directory`).
    """
    if STOP_REQUESTED.is_set():
        raise KeyboardInterrupt  # the staging directory is removed on the way out; nothing is published
    check(out_dir, overwrite)
    if not (out_dir.is_dir() and any(out_dir.iterdir())):
        os.rename(tmp, out_dir)  # replaces an empty directory; fails if one appeared meanwhile
        return
    for entry in entries if entries is not None else sorted(p.name for p in tmp.iterdir()):
        _replace(tmp / entry, out_dir / entry, out_dir, mark)


def _replace(new: Path, target: Path, out_dir: Path, mark: str = "bt-export") -> None:
    """Renames ``new`` onto ``target``; an existing ``target`` is moved aside first and deleted after.

    Without ``new``, an existing ``target`` is removed (moved aside, then deleted).
    """
    if not new.exists() and not target.exists() and not target.is_symlink():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists() and not target.is_symlink():
        os.rename(new, target)
        return
    old = out_dir.parent / f".{out_dir.name}.{mark}-old-{os.getpid()}-{os.urandom(4).hex()}"
    os.rename(target, old)
    try:
        if new.exists():
            os.rename(new, target)
    except BaseException:
        os.rename(old, target)
        raise
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()
