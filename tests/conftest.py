"""Shared test fixtures: the offline CIFAR-10 and Imagenette JPEG sets.

The archives live outside the repository (``../shared/data`` next to it, or
``$BT_KERAS_DATA``); without them the tests that need them skip, unless
``BT_KERAS_REQUIRE_DATA=1`` (set by ``.ci/run``) makes that a failure. They are extracted once per machine into a cache
directory (``$BT_KERAS_TEST_CACHE``, default ``~/.cache/bt_keras/test-data``)
under a file lock, so parallel test runs share one copy and nothing is ever
written into the repository.
"""

from __future__ import annotations

import atexit
import collections
import fcntl
import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("BT_KERAS_DATA", REPO.parent / "shared" / "data"))
CACHE_DIR = Path(os.environ.get("BT_KERAS_TEST_CACHE", Path.home() / ".cache" / "bt_keras" / "test-data"))
# CI has the archives: there a missing archive fails the tests that need it instead of skipping them.
REQUIRE_DATA = os.environ.get("BT_KERAS_REQUIRE_DATA") == "1"


def _xdist_workers_skip_the_interpreter_teardown() -> None:
    """An xdist worker ends with ``os._exit`` once its exit handlers have run.

    By then the worker has sent its results and its channel to the controller is closed; what is
    left is Python freeing every module and TensorFlow object one by one (2-4 s per worker, measured),
    which the controller waits for before it reports. Registered before TensorFlow loads, so
    TensorFlow's own exit handlers (registered later) still run first.
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):

        def exit_now():
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)

        atexit.register(exit_now)


_xdist_workers_skip_the_interpreter_teardown()


def _one_thread_per_op_in_xdist_workers() -> None:
    """Each pytest-xdist worker runs TensorFlow ops on one thread (two ops at a time), and so do
    the subprocesses its tests start, unless they set their pools themselves (bt-train's
    ``train.cpu_threads``; ``TF_NUM_INTRAOP_THREADS`` is only TensorFlow's default).

    Two workers share the machine with the subprocesses their tests start; with
    TensorFlow's default pools (one thread per core, per process) their threads
    oversubscribe the cores and spin on each other: a 2-s in-process test was
    measured at 58 s and 120 s in the suite beside a multi-replica subprocess. TensorFlow and
    Keras load as the commands load them: the optional imports they try and most tests never use
    (JAX, SciPy, scikit-learn, matplotlib) are skipped, and load when a test imports them.
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
        from bt_keras.cli import _unused_imports_skipped

        with _unused_imports_skipped():
            import keras  # noqa: F401
            import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(2)


_one_thread_per_op_in_xdist_workers()

# XLA (JAX, and TensorFlow's jit_compile) compiles for the CPU at LLVM optimisation level 0 in the tests
# and the processes they start: compiling, not running, is what the suite's XLA programs spend their time
# on (a 3-step JAX fit: 9.8 -> 3.9 CPU-s; losses equal to 1e-7). What the tests compare is unchanged:
# both sides of every comparison compile alike, and TensorFlow without XLA does not read the flag.
XLA_TEST_FLAGS = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {XLA_TEST_FLAGS}".strip()


def _extract_once(archive_name: str, expect: tuple[str, ...], subset: dict[str, int] | None = None) -> Path:
    """Extracts ``archive_name`` into the cache (once) and returns the extraction root.

    ``subset`` maps a top-level folder to how many files of each class folder to keep (the first by name):
    Python's tar reader spends about 0.15 ms per file, so all 60,000 CIFAR-10 JPEGs took 9.5 CPU-s of every
    fresh run, most of them photos no test reads. The cache directory is named after the archive's content,
    not its timestamp, and an extraction of an older archive of the same name is removed (a re-synced copy
    of the same archive no longer leaves a 240 MB copy behind each time).
    """
    archive = DATA_DIR / archive_name
    if not archive.is_file():
        message = f"{archive} not available (set BT_KERAS_DATA to the directory holding it)"
        if REQUIRE_DATA:
            pytest.fail(f"BT_KERAS_REQUIRE_DATA=1 but {message}", pytrace=False)
        pytest.skip(message)
    stem = archive_name.split(".")[0]
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()[:16]
    keep = "-".join(f"{folder}{n}" for folder, n in sorted((subset or {}).items()))
    root = CACHE_DIR / "-".join(filter(None, (stem, digest, keep)))
    done = root / ".complete"
    if done.exists():
        return root
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / (archive_name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            for stale in CACHE_DIR.glob(stem + "-*"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(dir=CACHE_DIR, prefix=".extract-"))
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, members=_first_per_class(tar.getmembers(), subset or {}), filter="data")
            # Archives may or may not wrap everything in one top-level folder.
            inner = tmp
            entries = [p for p in tmp.iterdir()]
            if len(entries) == 1 and entries[0].is_dir() and not (tmp / expect[0]).exists():
                inner = entries[0]
            for name in expect:
                if not (inner / name).is_dir():
                    raise RuntimeError(f"{archive}: no {name}/ folder after extraction")
            inner.rename(root)
            if inner != tmp:
                shutil.rmtree(tmp, ignore_errors=True)
            done.touch()
    return root


def _first_per_class(members: list[tarfile.TarInfo], subset: dict[str, int]) -> list[tarfile.TarInfo]:
    """``members`` without the files of ``<folder>/<class>/`` past the first ``subset[folder]`` by name
    (``<folder>`` may sit under one top-level folder)."""
    names: dict[PurePosixPath, list[str]] = {}
    for member in members:
        path = PurePosixPath(member.name)
        if member.isfile() and any(part in subset for part in path.parts[:2]):
            names.setdefault(path.parent, []).append(member.name)
    dropped = set()
    for directory, group in names.items():
        folder = next(part for part in directory.parts[:2] if part in subset)
        dropped.update(sorted(group)[subset[folder] :])
    # In the archive's order: going back in a gzip stream decompresses it again from the start.
    return [member for member in members if member.name not in dropped]


@pytest.fixture(scope="session")
def cifar10_dir() -> Path:
    """Root with ``train/<class>/*.jpg`` (the first 1,000 of each class by name: 10,000 of the 50,000, as many
    as the tests read) and ``test/<class>/*.jpg`` (all 10,000)."""
    return _extract_once("cifar10-jpg.tar.gz", ("train", "test"), subset={"train": 1000})


@pytest.fixture(scope="session")
def imagenette_dir() -> Path:
    """Root with ``train/<wnid>/*.JPEG`` (1,000) and ``val/<wnid>/*.JPEG`` (500), 224×224."""
    return _extract_once("imagenette-224-mini.tar.gz", ("train", "val"))


@pytest.fixture(autouse=True)
def _keras_backend_env_is_restored():
    """An in-process ``bt-*`` ``main()`` sets ``KERAS_BACKEND``, as the command must; later subprocesses must not
    inherit it."""
    before = os.environ.get("KERAS_BACKEND")
    yield
    if before is None:
        os.environ.pop("KERAS_BACKEND", None)
    else:
        os.environ["KERAS_BACKEND"] = before


# The files whose few tests run longest, in this order, ahead of the rest (which go by their number of tests,
# most first, as pytest-xdist orders them by default): with `--dist loadfile` a worker that takes one of these
# last finishes alone while the other idles (the learning guard, last, kept one worker busy 7 s longer in the
# inner loop). Measured per file with the suite's two workers; README "Tests".
LONG_FILES_FIRST = (
    "tests/test_faults.py",
    "tests/test_jax_train.py",
    "tests/test_distributed.py",
    "tests/test_jax.py",
    "tests/test_train.py",
    "tests/test_learning.py",
)


def pytest_collection_modifyitems(items):
    def file_of(item):
        return item.nodeid.split("::")[0]

    count = collections.Counter(map(file_of, items))

    def rank(item):
        file = file_of(item)
        long_rank = LONG_FILES_FIRST.index(file) if file in LONG_FILES_FIRST else len(LONG_FILES_FIRST)
        return long_rank, -count[file], file

    items.sort(key=rank)  # stable: a file's tests keep their order
