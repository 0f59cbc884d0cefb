"""Writes CIFAR-10 as JPEG folders for the quality benchmark: ``OUT/{train,test}/<class>/<n>.jpg``.

    python benchmarks/make_cifar10_folders.py data/cifar10                 # via keras.datasets (downloads 170 MB)
    python benchmarks/make_cifar10_folders.py data/cifar10 --from tfds     # a prepared TFDS cifar10

``keras.datasets.cifar10`` downloads the archive once into ``~/.keras/datasets`` (this is the only
step that uses the network, and only when you run it); ``--from tfds`` reads a TFDS ``cifar10``
already prepared in ``--data-dir`` (``tfds build cifar10`` downloads it) and downloads nothing.
The 50,000 training and 10,000 test images are written as JPEG (quality 75 by default, as in the
archive the published benchmark used) into class sub-folders (airplane … truck), which
``folder:`` sources read with labels. Everything goes into ``OUT.partial`` first and is renamed to
``OUT`` at the end, so an interrupted run leaves no half-written ``OUT``. Then:

    python benchmarks/quality.py --data folder:data/cifar10 --minutes 30
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def write_split(images, labels, root, class_names=CLASS_NAMES, quality: int = 75) -> int:
    """Writes uint8 ``images`` [N, H, W, 3] as ``root/<class name>/<index>.jpg``; returns N.

    Args:
        images: uint8 array [N, H, W, 3].
        labels: integer class indices [N] (or [N, 1], as keras.datasets gives them).
        root: the split's folder (created).
        class_names: folder name of each class index.
        quality: JPEG quality.

    Examples:

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp()) / "train"
    >>> write_split(np.zeros((3, 8, 8, 3), np.uint8), [0, 1, 1], root)
    3
    >>> sorted(p.name for p in root.iterdir())
    ['airplane', 'automobile']
    """
    import tensorflow as tf

    from bt_keras.io import atomic_write

    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    for name in sorted({class_names[int(y)] for y in labels}):
        (Path(root) / name).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        data = tf.io.encode_jpeg(image, quality=quality, chroma_downsampling=False).numpy()
        atomic_write(str(Path(root) / class_names[int(label)] / f"{i:05d}.jpg"), data)
    return len(labels)


def load_arrays(origin: str, data_dir: str | None):
    """``{"train": (x, y), "test": (x, y)}`` from keras.datasets or a prepared TFDS cifar10."""
    if origin == "keras":
        import keras

        (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
        return {"train": (x_train, y_train), "test": (x_test, y_test)}
    import tensorflow_datasets as tfds

    out = {}
    for split in ("train", "test"):
        ds = tfds.load("cifar10", split=split, data_dir=data_dir, batch_size=-1, download=False)
        out[split] = (np.asarray(ds["image"]), np.asarray(ds["label"]))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="make_cifar10_folders.py", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="output folder (gets train/ and test/)")
    p.add_argument("--from", dest="origin", choices=("keras", "tfds"), default="keras")
    p.add_argument("--data-dir", help="TFDS data directory (with --from tfds)")
    p.add_argument("--quality", type=int, default=75, help="JPEG quality (default 75)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if (out / "train").is_dir() and (out / "test").is_dir():
        print(f"{out}: train/ and test/ exist already; nothing to do")
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        sys.exit(f"make_cifar10_folders.py: error: {out} exists and is not a CIFAR-10 folder (train/, test/)")
    try:
        arrays = load_arrays(args.origin, args.data_dir)
    except Exception as e:  # noqa: BLE001 - download / TFDS errors of many types: one line, exit 2
        sys.exit(f"make_cifar10_folders.py: error: cannot load CIFAR-10 from {args.origin}: {str(e).splitlines()[0]}")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for split, (x, y) in arrays.items():
        n = write_split(x, y, partial / split, quality=args.quality)
        print(f"{split}: {n:,} images")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    partial.rename(out)
    print(f"wrote {out}/train and {out}/test; now: python benchmarks/quality.py --data folder:{out}")


if __name__ == "__main__":
    main()
