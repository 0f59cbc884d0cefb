"""Files for TensorBoard's Embedding Projector: tensors, metadata, sprite and ``projector_config.pbtxt``.

The layout is the one the projector plugin reads from a log directory
(``tensorboard --logdir DIR``, then the *Projector* tab):

- ``tensors.tsv``: one embedding per line, values separated by tabs;
- ``metadata.tsv``: a header line (``label``, ``class``, ``path``), then one
  line per embedding. The plugin splits lines on tabs and does not unquote,
  so tabs and newlines inside a value are replaced by spaces;
- ``sprite.png``: the images as the encoder saw them, in row-major order on
  a square grid; TensorBoard takes sprites up to 8192 × 8192 pixels, so the
  thumbnail side is ``min(64, 8192 // ceil(sqrt(N)))``;
- ``projector_config.pbtxt``: a text ``ProjectorConfig`` proto naming them
  (paths relative to the directory).

Examples:

>>> import numpy as np, os, tempfile
>>> d = tempfile.mkdtemp()
>>> views = np.zeros([3, 4, 4, 3], np.uint8)
>>> files = write_projector(d, np.eye(3, dtype="float32"), [["0", "a", "x.jpg"]] * 3, views)
>>> sorted(os.path.basename(f) for f in files)
['metadata.tsv', 'projector_config.pbtxt', 'sprite.png', 'tensors.tsv']
"""

from __future__ import annotations

import math
import os

import numpy as np

from bt_keras.io import atomic_write

CONFIG_FILE = "projector_config.pbtxt"  # tensorboard.plugins.projector.metadata.PROJECTOR_FILENAME
TENSORS_FILE = "tensors.tsv"
METADATA_FILE = "metadata.tsv"
SPRITE_FILE = "sprite.png"
METADATA_COLUMNS = ("label", "class", "path")
MAX_SPRITE_SIDE = 8192  # the largest sprite the projector loads
MAX_THUMBNAIL = 64


def thumbnail_side(n: int) -> int:
    """The sprite thumbnail side for ``n`` images, so the sprite fits TensorBoard's limit.

    >>> thumbnail_side(100), thumbnail_side(10_000), thumbnail_side(1_000_000)
    (64, 64, 8)
    """
    return max(1, min(MAX_THUMBNAIL, MAX_SPRITE_SIDE // max(1, math.ceil(math.sqrt(n)))))


def _clean(value) -> str:
    return " ".join(str(value).replace("\t", " ").splitlines()) or " "


def sprite(views) -> np.ndarray:
    """``[N, S, S, 3]`` thumbnails on a square ``ceil(sqrt(N))`` grid (row-major, black padding).

    >>> sprite(np.ones([5, 2, 2, 3], np.uint8)).shape
    (6, 6, 3)
    """
    views = np.asarray(views, np.uint8)
    n, side = len(views), views.shape[1]
    cols = max(1, math.ceil(math.sqrt(n)))
    grid = np.zeros([cols * side, cols * side, 3], np.uint8)
    for i, v in enumerate(views):
        r, c = divmod(i, cols)
        grid[r * side : (r + 1) * side, c * side : (c + 1) * side] = v
    return grid


def write_projector(out_dir: str, embeddings, metadata_rows, views=None, tensor_name: str = "embeddings") -> list:
    """Writes the projector files into ``out_dir``; returns their paths.

    Args:
        out_dir: the directory (created if needed), the ``--logdir`` to give TensorBoard.
        embeddings: ``[N, D]``.
        metadata_rows: ``N`` rows of :data:`METADATA_COLUMNS` values.
        views: uint8 ``[N, S, S, 3]`` thumbnails for the sprite, or None for no sprite.
        tensor_name: the name the projector shows.
    """
    import tensorflow as tf
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    embeddings = np.asarray(embeddings, np.float32)
    if len(metadata_rows) != len(embeddings):
        raise ValueError(f"{len(embeddings)} embeddings but {len(metadata_rows)} metadata rows")
    os.makedirs(out_dir, exist_ok=True)
    written = []

    def put(name, data):
        path = os.path.join(out_dir, name)
        atomic_write(path, data)
        written.append(path)

    put(TENSORS_FILE, "".join("\t".join(f"{v:.7g}" for v in row) + "\n" for row in embeddings))
    lines = ["\t".join(METADATA_COLUMNS)] + ["\t".join(_clean(v) for v in row) for row in metadata_rows]
    put(METADATA_FILE, "\n".join(lines) + "\n")
    config = ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.tensor_name = tensor_name
    embedding.tensor_path = TENSORS_FILE
    embedding.tensor_shape.extend(embeddings.shape)
    embedding.metadata_path = METADATA_FILE
    if views is not None and len(views):
        put(SPRITE_FILE, tf.io.encode_png(sprite(views)).numpy())
        embedding.sprite.image_path = SPRITE_FILE
        embedding.sprite.single_image_dim.extend([int(views.shape[2]), int(views.shape[1])])
    put(CONFIG_FILE, text_format.MessageToString(config))
    return written
