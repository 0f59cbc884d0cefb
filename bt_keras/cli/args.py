"""Argument types shared by the ``bt-*`` commands.

Each raises ``argparse.ArgumentTypeError``, so a bad value is reported by
argparse as one line (``prog: error: argument --flag: ...``) with exit code 2.

Examples:

>>> from bt_keras.cli.args import floats, positive_int
>>> floats("0.485,0.456, 0.406"), positive_int("3")
((0.485, 0.456, 0.406), 3)
"""

from __future__ import annotations

import argparse
import re

from bt_keras.errors import short_repr


def floats(text: str) -> tuple:
    """Three numbers (R, G, B) separated by commas and/or spaces, for ``--mean``/``--std``.

    Args:
        text: the flag's value.

    Examples:

    >>> floats("0.5 0.5 0.5")
    (0.5, 0.5, 0.5)
    >>> floats("0.5,x")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected three comma-separated numbers (R,G,B), got '0.5,x'
    """
    try:
        values = tuple(float(v) for v in re.split(r"[,\s]+", text.strip()) if v)
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers (R,G,B), got {text!r}")
    return values


def _checked(text: str, convert, ok, expected: str):
    """``convert(text)`` if it converts and passes ``ok``; else argparse's one-line error saying what was expected."""
    try:
        value = convert(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {short_repr(text)}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1.

    Args:
        text: the flag's value.

    Examples:

    >>> positive_int("0")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected a positive integer, got '0'
    """
    return _checked(text, int, lambda v: v >= 1, "a positive integer")


def seed(text: str) -> int:
    """A random seed: an integer from 0 to 2**32-1 (what NumPy's and TensorFlow's generators take).

    Args:
        text: the flag's value.

    Examples:

    >>> seed("-1")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected an integer from 0 to 2**32-1, got '-1'
    """
    return _checked(text, int, lambda v: 0 <= v < 2**32, "an integer from 0 to 2**32-1")


def pixel_limit(text: str) -> int:
    """A pixel limit (``--max-image-pixels``): an integer from 1 to 2**63-1 (it is compared in int64).

    Args:
        text: the flag's value.

    Examples:

    >>> pixel_limit(str(2**70))
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected an integer from 1 to 2**63-1, got '1180591620717411303424'
    """
    return _checked(text, int, lambda v: 1 <= v <= 2**63 - 1, "an integer from 1 to 2**63-1")


def model_version(text: str) -> int:
    """A TF Serving model version: an integer from 1 to 2**63-1 (int64).

    Args:
        text: the flag's value.

    Examples:

    >>> model_version(str(2**63))
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected an integer from 1 to 2**63-1, got '9223372036854775808'
    """
    return _checked(text, int, lambda v: 1 <= v <= 2**63 - 1, "an integer from 1 to 2**63-1")


def positive_float(text: str) -> float:
    """A finite number > 0.

    Args:
        text: the flag's value.

    Examples:

    >>> positive_float("0.1")
    0.1
    """
    return _checked(text, float, lambda v: 0 < v < float("inf"), "a positive number")


def fraction(text: str) -> float:
    """A number in (0, 1], for ``--crop-fraction``.

    Args:
        text: the flag's value.

    Examples:

    >>> fraction("0.875")
    0.875
    """
    return _checked(text, float, lambda v: 0 < v <= 1, "a number in (0, 1]")


def unit_interval(text: str) -> float:
    """A number in [0, 1], for the int8 gate's thresholds.

    Args:
        text: the flag's value.

    Examples:

    >>> unit_interval("0.98")
    0.98
    """
    return _checked(text, float, lambda v: 0 <= v <= 1, "a number in [0, 1]")


def add_encoder_arguments(parser) -> None:
    """The flags that choose a frozen encoder and its preprocessing (``bt-eval``, ``bt-embed``).

    One of ``--run``, ``--encoder``, ``--saved-model``, ``--onnx`` (required), and the
    contract's ``--image-size``/``--mean``/``--std``/``--crop-fraction`` for an encoder
    without a recorded ``preprocessing.json``. :func:`load_encoder_from_args` loads it.

    Args:
        parser: an ``argparse.ArgumentParser``.

    Examples:

    >>> p = argparse.ArgumentParser()
    >>> add_encoder_arguments(p)
    >>> args = p.parse_args(["--onnx", "m.onnx", "--image-size", "32"])
    >>> args.onnx, args.run, args.image_size
    ('m.onnx', None, 32)
    """
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="run directory of bt-train (encoder.keras + preprocessing.json)")
    which.add_argument("--encoder", help="a .keras encoder (preprocessing.json next to it, or --image-size)")
    which.add_argument("--saved-model", help="a SavedModel from bt-export (its serve_float signature)")
    which.add_argument("--onnx", help="an ONNX model from bt-export (contract in its metadata), run in ONNX Runtime")
    parser.add_argument("--image-size", type=positive_int, help="needed when no preprocessing contract is recorded")
    parser.add_argument("--mean", type=floats, help="R,G,B (must match a recorded contract)")
    parser.add_argument("--std", type=floats, help="R,G,B (must match a recorded contract)")
    parser.add_argument("--crop-fraction", type=fraction, help="(must match a recorded contract)")


def run_max_image_pixels(args) -> int | None:
    """The run's ``data.max_image_pixels`` (from ``RUN/config.yaml``) for ``--run``; else None (the default).

    Args:
        args: parsed arguments of :func:`add_encoder_arguments`.
    """
    import os

    if not getattr(args, "run", None):
        return None
    path = args.run.rstrip("/") + "/config.yaml"
    if "://" in path:
        import tensorflow as tf

        if not tf.io.gfile.exists(path):
            return None
    elif not os.path.isfile(path):
        return None
    from bt_keras.config import load_config

    return load_config(path).data.max_image_pixels


def load_encoder_from_args(args):
    """The :class:`~bt_keras.frozen.FrozenEncoder` that :func:`add_encoder_arguments`' flags name."""
    from bt_keras.frozen import load_frozen_encoder

    return load_frozen_encoder(
        args.run,
        args.encoder,
        args.saved_model,
        onnx=args.onnx,
        image_size=args.image_size,
        mean=args.mean,
        std=args.std,
        crop_fraction=args.crop_fraction,
    )
