"""One writer per run directory: a lock file naming the holder's host and PID.

``bt-train`` takes ``RUN/.lock`` before it writes anything into a run
directory and removes it when it ends, so a second ``bt-train`` on the same
directory is refused in one line instead of interleaving ``history.csv`` and
overwriting the first one's checkpoints. The file is created with
``O_CREAT | O_EXCL`` (atomic on local file systems and NFSv3+). A lock left by
a process that died (``kill -9``, a crash) is *stale*: when its host is this
host and its PID no longer runs, it is taken over. A lock from another host
cannot be checked; the message says which host and PID hold it and how to
remove it. A lock naming this host and this very PID that this process does
not hold is stale too (a restarted container runs again as PID 1, say). The
file is written whole before it appears (a hard link of a finished temporary),
so a lock file that is empty or not ``{"host": str, "pid": int}`` is never
one being written: it is taken over as stale, with a warning. Remote run
directories (``gs://``) are not locked: object stores have no exclusive create.

Examples:

>>> import os, tempfile
>>> from bt_keras.run_lock import RunDirectoryLock
>>> run = tempfile.mkdtemp()
>>> with RunDirectoryLock(run) as lock:
...     sorted(os.listdir(run)), lock.holder()["pid"] == os.getpid()
(['.lock'], True)
>>> os.listdir(run)
[]
"""

from __future__ import annotations

import json
import logging
import os
import socket

from bt_keras.errors import RunLocked, UserError, one_line
from bt_keras.io import is_remote

LOCK_NAME = ".lock"
log = logging.getLogger("bt_keras")
_MALFORMED = object()  # holder() of a lock file that exists but is not a lock
_HELD_HERE: set = set()  # lock paths this process holds: its own PID in another lock is a leftover


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class RunDirectoryLock:
    """An exclusive lock on a run directory, held from :meth:`acquire` (or ``with``) to :meth:`release`.

    Args:
        run_dir: the run directory (created if missing).

    Raises:
        RunLocked: another live process holds it (one line: host, PID, since when, what to do).
        UserError: the directory cannot be created or written (a file, read-only, unreachable).
    """

    def __init__(self, run_dir: str):
        self.run_dir = str(run_dir)
        self.path = os.path.join(self.run_dir, LOCK_NAME)
        self.held = False

    def holder(self) -> dict | None:
        """The lock file's content (``host``, ``pid``), or None if there is none or it is not a lock."""
        holder = self._read()
        return None if holder is _MALFORMED else holder

    def _read(self):
        """``{"host", "pid"}``; None without a lock file; ``_MALFORMED`` for one that is not a lock."""
        try:
            with open(self.path, encoding="utf-8") as f:
                holder = json.loads(f.read(4096))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return _MALFORMED
        ok = isinstance(holder, dict) and isinstance(holder.get("host"), str)
        pid = holder.get("pid") if ok else None
        if not (isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid < 2**31):
            return _MALFORMED
        return holder

    def acquire(self) -> RunDirectoryLock:
        """Takes the lock, taking over a stale one; raises :class:`RunLocked` if a live process holds it."""
        if is_remote(self.run_dir):
            return self
        try:
            os.makedirs(self.run_dir, exist_ok=True)
        except FileExistsError:
            raise UserError(f"run directory {self.run_dir} exists and is not a directory") from None
        except OSError as e:
            raise UserError(f"cannot create the run directory {self.run_dir}: {one_line(e)}") from None
        content = json.dumps({"host": socket.gethostname(), "pid": os.getpid()})
        for _ in range(3):
            try:
                self._create(content)
            except FileExistsError:
                if not self._take_over_stale():
                    raise RunLocked(self._locked_message()) from None
                continue
            except OSError as e:
                raise UserError(f"cannot write in the run directory {self.run_dir}: {one_line(e)}") from None
            self.held = True
            _HELD_HERE.add(os.path.abspath(self.path))
            return self
        raise RunLocked(self._locked_message())

    def _create(self, content: str) -> None:
        """Creates the lock file with ``content`` in one step; ``FileExistsError`` if there is one.

        The content is written to a temporary first and hard-linked into place
        (atomic, and fails if the name exists), so no reader ever sees an
        empty or half-written lock.
        """
        tmp = f"{self.path}.new-{os.getpid()}-{os.urandom(4).hex()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(content)
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                raise
            except OSError:  # a file system without hard links: exclusive create, then write
                with os.fdopen(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "w") as f:
                    f.write(content)
        finally:
            os.remove(tmp)

    def _take_over_stale(self) -> bool:
        """Moves a stale lock out of the way; False when the holder may be alive.

        The stale lock is renamed to a name of our own first: of two processes
        taking it over at once, only one rename succeeds.
        """
        holder = self._read()
        if holder is None:
            return True  # removed meanwhile: try again
        if holder is _MALFORMED:
            log.warning("lock file %s is empty or not a lock (host and PID); taken over as stale", self.path)
        elif holder["host"] != socket.gethostname():
            return False
        elif holder["pid"] == os.getpid():
            if os.path.abspath(self.path) in _HELD_HERE:
                return False  # held by this very process (another lock object)
        elif _pid_alive(holder["pid"]):
            return False
        try:
            aside = f"{self.path}.stale-{os.getpid()}"
            os.rename(self.path, aside)
            os.remove(aside)
        except FileNotFoundError:
            pass  # another process took it over first; the next attempt sees its lock
        return True

    def _locked_message(self) -> str:
        holder = self.holder() or {}
        who = f"process {holder.get('pid', '?')} on {holder.get('host', '?')}"
        return (
            f"run directory {self.run_dir} is in use by {who} (lock file {self.path}); wait for it to "
            f"finish or use another --run-dir; if that process is gone, remove {self.path}"
        )

    def release(self) -> None:
        """Removes the lock file if this object holds it."""
        if self.held:
            self.held = False
            _HELD_HERE.discard(os.path.abspath(self.path))
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
