"""What a ``.keras`` archive or an HDF5 weights file declares, checked before Keras reads it.

A few kilobytes can declare gigabytes (a zip member's uncompressed size, an HDF5 dataset's
shape): each check compares what a file declares with what it holds and refuses it in one
line before anything is allocated. Every reader of such files (``.keras`` encoders,
``model.init_weights``, KerasHub presets, checkpoints) goes through these.
"""

from __future__ import annotations

import json

from bt_keras.errors import ExportArgumentError, UserError, one_line, short_repr

# A .keras archive's members, uncompressed: Keras reads config.json and metadata.json whole into memory
# (a 16 MB file can hold a 3.5 GiB config.json); the weights can be large, but not a thousand times
# their compressed size (float weights hardly compress).
MAX_KERAS_JSON_BYTES = 64 * 2**20
MAX_KERAS_TOTAL_BYTES = 64 * 2**30
MAX_KERAS_RATIO = 1000


_H5_SLACK_BYTES = 2**20  # headers and padding: what a weights file may declare beyond its own size


def check_h5_sizes(source, where: str, size: int) -> None:
    """Refuses an HDF5 weights file whose datasets declare more bytes than the file holds, before any is read.

    The one check in front of every weights reader (``.keras`` files, checkpoints,
    ``model.init_weights``, KerasHub presets). Keras writes each variable as a
    plain, uncompressed dataset, so the declared sizes of a file's datasets add
    up to at most the file's own size; a gzip-chunked dataset (or one with no
    storage) can declare gigabytes in a few kilobytes, and reading it allocates
    them all. Only the datasets' shapes and types are read here.

    Args:
        source: a local path or a seekable binary file (a ``.keras`` archive's member).
        where: what to name in the message (``cannot load model.keras: its 'model.weights.h5'``).
        size: the file's size in bytes.

    Raises:
        UserError: a dataset declares more than the file can hold (one line, naming it).

    Examples:

    >>> import h5py, numpy as np, tempfile, os
    >>> path = tempfile.mktemp(suffix=".weights.h5")
    >>> with h5py.File(path, "w") as f:
    ...     _ = f.create_dataset("w", shape=(60000, 60000), dtype="f4", chunks=(100, 100), compression="gzip")
    >>> check_h5_sizes(path, "x.weights.h5", os.path.getsize(path))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    bt_keras.errors.UserError: x.weights.h5: its dataset 'w' declares (60000, 60000) float32 (14,400,000,000 bytes)...
    """
    import h5py
    import numpy as np

    try:
        f = h5py.File(source, "r")
    except Exception:  # noqa: BLE001 - not HDF5 / truncated: the reader's own message says so
        return
    total, limit = 0, int(size) + _H5_SLACK_BYTES
    with f:
        datasets = []
        f.visititems(lambda name, obj: datasets.append((name, obj)) if isinstance(obj, h5py.Dataset) else None)
        for name, ds in datasets:
            declared = int(np.prod(ds.shape, dtype=object)) * ds.dtype.itemsize if ds.shape else ds.dtype.itemsize
            total += declared
            if total > limit:
                raise UserError(
                    f"{where}: its dataset {short_repr(name, 60)} declares {ds.shape} {ds.dtype} ({declared:,} bytes), "
                    f"more than the file's {size:,} bytes hold; refusing to read it"
                )


def check_keras_archive(path) -> None:
    """Checks a ``.keras`` file's zip directory before Keras reads it: a zip, with bounded member sizes.

    The one guard in front of every ``.keras`` load (:func:`load_encoder`).
    Only the central directory is read, nothing is decompressed.

    Args:
        path: the local ``.keras`` file.

    Raises:
        ExportArgumentError: not a zip archive, or a member larger than the
            limits (JSON members over ``MAX_KERAS_JSON_BYTES``, any member over
            ``MAX_KERAS_RATIO`` times its compressed size, or over
            ``MAX_KERAS_TOTAL_BYTES`` in all).

    Examples:

    >>> import tempfile, zipfile
    >>> bomb = tempfile.mktemp(suffix=".keras")
    >>> with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
    ...     z.writestr("config.json", b" " * (65 * 2**20))
    >>> check_keras_archive(bomb)
    Traceback (most recent call last):
    ...
    bt_keras.errors.ExportArgumentError: cannot load ...: its 'config.json' is 68157440 bytes uncompressed ...
    """
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except zipfile.BadZipFile:
        raise ExportArgumentError(f"cannot load {path}: not a .keras archive (not a zip file)") from None
    except OSError as e:
        raise ExportArgumentError(f"cannot load {path}: {one_line(e)}") from None
    total = 0
    for m in members:
        total += m.file_size
        too_big = m.filename.endswith(".json") and m.file_size > MAX_KERAS_JSON_BYTES
        if too_big or m.file_size > MAX_KERAS_RATIO * max(m.compress_size, 2**20):
            raise ExportArgumentError(
                f"cannot load {path}: its {short_repr(m.filename, 60)} is {m.file_size} bytes uncompressed "
                f"({m.compress_size} compressed), more than a .keras file holds; refusing to read it"
            )
    if total > MAX_KERAS_TOTAL_BYTES:
        raise ExportArgumentError(f"cannot load {path}: {total} bytes uncompressed, more than a .keras file holds")
    for m in members:
        if m.filename.endswith(".h5"):
            with zipfile.ZipFile(path) as archive, archive.open(m) as member:
                try:
                    check_h5_sizes(member, f"cannot load {path}: {short_repr(m.filename, 60)}", m.file_size)
                except UserError as e:
                    raise ExportArgumentError(str(e)) from None


def keras_file_image_size(path) -> int | None:
    """The image side a ``.keras`` file's model takes when its input is static and square, else ``None``.

    Read from the archive's ``config.json`` without importing Keras or TensorFlow
    (``bt-export --encoder`` uses it when no ``--image-size`` or contract is given).

    Args:
        path: the ``.keras`` file.

    Examples:

    >>> import keras, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "encoder.keras")
    >>> keras.Sequential([keras.Input((24, 24, 3)), keras.layers.Flatten()]).save(path)
    >>> keras_file_image_size(path)
    24
    """
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            if archive.getinfo("config.json").file_size > MAX_KERAS_JSON_BYTES:
                return None
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    try:  # a best-effort read of any JSON: a shape it does not expect is no size, never a traceback
        return _static_square_side(config)
    except (AttributeError, TypeError, IndexError, KeyError):
        return None


def _static_square_side(config) -> int | None:
    """:func:`keras_file_image_size` of a parsed ``config.json``."""
    model = config.get("config", {}) if isinstance(config, dict) else {}
    layers = model.get("layers") or []
    entries = model.get("input_layers") or []
    if entries and isinstance(entries[0], str):
        entries = [entries]  # a single input is stored flat: [name, 0, 0]
    wanted = {entry[0] for entry in entries if isinstance(entry, list) and entry}
    shapes = [
        layer.get("config", {}).get("batch_shape")
        for layer in layers
        if layer.get("class_name") == "InputLayer" and (not wanted or layer.get("config", {}).get("name") in wanted)
    ]
    if len(shapes) != 1 or not isinstance(shapes[0], list) or len(shapes[0]) != 4:
        return None
    height, width = shapes[0][1:3]
    return height if isinstance(height, int) and height == width else None
