"""Argument checks shared by the data modules (no TensorFlow): one place, imported by the config
and by the pipelines alike, so neither needs the other."""

from __future__ import annotations

from bt_keras.errors import DataError

VALIDATE_MODES = ("auto", "full", "quick", "off")


def check_positive(name: str, value) -> None:
    """A ``DataError`` naming ``name`` unless ``value`` is a positive integer.

    >>> check_positive("batch_size", 0)
    Traceback (most recent call last):
    ...
    bt_keras.errors.DataError: batch_size: must be a positive integer, got 0
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"{name}: must be a positive integer, got {value!r}")


def check_validate(validate) -> None:
    """A ``DataError`` unless ``validate`` is one of :data:`VALIDATE_MODES`."""
    if validate not in VALIDATE_MODES:
        raise DataError(f"data.validate: must be one of {', '.join(VALIDATE_MODES)}, got {validate!r}")
