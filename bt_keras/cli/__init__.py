"""The ``bt-*`` commands, and what they share: one-line errors, quiet output.

Each command lives in its own module (``train``, ``eval``, ``export``,
``data``) and is a thin layer over the library: parse and validate the
arguments (before TensorFlow is imported), call the library, print. Only
these modules print; the library logs through ``logging.getLogger("bt_keras")``
and :func:`run_command` shows those records as the command's own lines.

TensorFlow's C++ and Python logs are silenced unless the user asked for them
(``-v``/``--verbose``, or their own ``TF_CPP_MIN_LOG_LEVEL``): a command's
output is ours, and an error is our one line.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys

from bt_keras.errors import UserError, one_line, short_repr

__all__ = ["ArgumentParser", "UserError", "log_to_console", "run_command"]


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump), exit code 2, and ``-v/--verbose``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument(
            "-v", "--verbose", action="store_true", help="show TensorFlow's own log lines (hidden by default)"
        )

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def run_command(prog: str, body, argv=None) -> int:
    """Runs ``body(argv)``; a ``UserError`` becomes ``prog: error: ...`` and exit code 2.

    An ``OSError`` that reaches here (a full disk, a file system gone
    read-only) is a fault, not the user's input: one line, exit code 1; every
    file the package writes is replaced by a rename, so what was there before
    is intact. Arguments must be valid UTF-8 (they end up in file names,
    ``config.yaml`` and reports): bytes that are not are refused before
    anything runs. While it runs, the library's log records show as
    ``prog: message`` lines.
    """
    args = sys.argv[1:] if argv is None else argv
    quiet_tensorflow(verbose="-v" in args or "--verbose" in args)
    with log_to_console(prog):
        try:
            check_utf8_arguments(args)
            return body(argv) or 0
        except UserError as e:
            sys.stderr.write(f"{prog}: error: {e}\n")
            return 2
        except OSError as e:
            sys.stderr.write(f"{prog}: error: {one_line(e)}\n")
            return 1
        except KeyboardInterrupt:
            sys.stderr.write(f"{prog}: interrupted\n")
            return 130


def tensorflow_fault(prog: str, e: Exception) -> int:
    """A TensorFlow runtime error (``tf.errors.OpError``: a full disk under ``SaveV2``) as one line, exit 1.

    With ``-v``/``--verbose`` it is raised instead, traceback and all.
    """
    if _verbose:
        raise e
    sys.stderr.write(f"{prog}: error: {type(e).__name__}: {one_line(e)} (rerun with -v for the traceback)\n")
    return 1


def check_utf8_arguments(args) -> None:
    """Refuses command-line arguments holding bytes that are not UTF-8 (Python keeps them as surrogates).

    Args:
        args: the arguments, as ``sys.argv[1:]``.

    Raises:
        UserError: naming the argument, its bad bytes shown escaped.

    Examples:

    >>> import os
    >>> check_utf8_arguments(["--run-dir", os.fsdecode(b"runs/\\xff")])
    Traceback (most recent call last):
    ...
    bt_keras.errors.UserError: argument --run-dir is not valid UTF-8: 'runs/\\udcff'; use UTF-8 names
    """
    for i, arg in enumerate(args):
        if not isinstance(arg, str):
            continue
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            flag = args[i - 1] if i and str(args[i - 1]).startswith("-") else f"{i + 1}"
            raise UserError(f"argument {flag} is not valid UTF-8: {short_repr(arg)}; use UTF-8 names") from None


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


# Before TensorFlow is imported: C++ logs (I/W/E lines, cuInit on CPU-only hosts, libjpeg
# warnings, rendezvous aborts), gRPC's, and the Python-side "tensorflow"/"absl" loggers.
_QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "GRPC_VERBOSITY": "ERROR", "GLOG_minloglevel": "3"}


_verbose = False


def quiet_tensorflow(verbose: bool = False) -> None:
    """Hides TensorFlow's log output unless ``verbose``; a user's own environment settings win."""
    global _verbose
    _verbose = verbose
    if verbose:
        return
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name in ("tensorflow", "absl", "jax._src.xla_bridge"):
        logging.getLogger(name).setLevel(logging.ERROR)


def load_tensorflow() -> None:
    """Imports TensorFlow and Keras; unless verbose, native code's stderr goes to /dev/null from here on.

    TensorFlow's C++ logging before absl is initialised (oneDNN, CUDA probing,
    CPU features) ignores ``TF_CPP_MIN_LOG_LEVEL``, and libjpeg prints its
    warnings ("Unsupported marker type", "Input file read error") straight to
    file descriptor 2. So the process's descriptor 2 is pointed at /dev/null
    and Python's ``sys.stderr`` at a copy of the real one: our messages,
    warnings and tracebacks still reach the terminal, native chatter does not.
    A crash inside native code is then silent: ``--verbose`` shows everything.
    Commands call this after their arguments and config are checked. With
    ``--verbose``, or when the user set ``TF_CPP_MIN_LOG_LEVEL`` below 3,
    nothing is hidden.
    """
    quiet = not _verbose and os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3") == "3"
    if quiet and "tensorflow" not in sys.modules:
        sys.stderr.flush()
        real_stderr = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        sys.stderr = os.fdopen(real_stderr, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace")
    with _unused_imports_skipped():
        import keras  # noqa: F401
        import tensorflow  # noqa: F401


@contextlib.contextmanager
def _unused_imports_skipped():
    """While TensorFlow and Keras are imported, the optional imports they try and a command never uses fail.

    ``import tensorflow`` tries JAX (for TFLite's JAX converter) and SciPy (its legacy Keras'
    sparse inputs), Keras tries scikit-learn (its sklearn wrappers) and matplotlib (its image
    galleries), each inside ``try: ... except ImportError``: about a third of a command's start
    where they are installed (``python -X importtime -c "import tensorflow"``). A ``None`` in
    ``sys.modules`` makes each fail at once; the entries are removed afterwards, so the library
    imports them normally where it uses them (the kNN report's plots, the linear probe). JAX and
    SciPy are left alone when Keras runs on JAX.
    """
    names = ["sklearn", "matplotlib"]
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "jax":  # Keras' JAX backend imports both
        names += ["jax", "scipy"]
    names = [name for name in names if name not in sys.modules]
    for name in names:
        sys.modules[name] = None
    try:
        yield
    finally:
        for name in names:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def use_tensorflow_backend(prog: str) -> None:
    """For the commands that run on TensorFlow only (``bt-eval``, ``bt-embed``, ``bt-export``): switch Keras to it.

    Their input pipelines, SavedModel and ONNX conversion are TensorFlow's; a
    ``KERAS_BACKEND`` of another backend (set for ``bt-train`` on JAX) is
    overridden before Keras is imported, with a one-line notice, instead of
    failing later with a traceback.

    Args:
        prog: the command, for the notice.
    """
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend == "tensorflow":
        return
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != "tensorflow":
            raise UserError(f"{prog} runs on TensorFlow, but Keras is already running on {keras.backend.backend()}")
    os.environ["KERAS_BACKEND"] = "tensorflow"
    sys.stderr.write(f"{prog}: runs on TensorFlow; KERAS_BACKEND={short_repr(backend, 20)} ignored\n")


def select_backend(configured: str | None) -> str:
    """Sets ``KERAS_BACKEND`` before Keras is imported: the config's ``train.backend``, else the environment's.

    A config that disagrees with ``KERAS_BACKEND`` (or with an already imported
    Keras) is an error, as is JAX without JAX installed.
    """
    from_env = os.environ.get("KERAS_BACKEND")
    if configured and from_env and configured != from_env:
        raise UserError(
            f"train.backend is {configured!r} but KERAS_BACKEND={from_env} in the environment; "
            "unset one of them or make them agree"
        )
    backend = configured or from_env or "tensorflow"
    if backend == "jax":
        import importlib.util

        if importlib.util.find_spec("jax") is None:
            raise UserError('train.backend: jax is not installed; install it with: pip install "bt_keras[jax]"')
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != backend:
            raise UserError(f"train.backend: Keras is already running on {keras.backend.backend()}, not {backend}")
    os.environ["KERAS_BACKEND"] = backend
    return backend
