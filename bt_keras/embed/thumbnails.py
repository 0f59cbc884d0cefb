"""Small pictures of embedded images, as the encoder saw them, for the neighbour grid and the sprite.

An image is fetched again by its uid (the index records it), from the same
prepared source the embeddings came from: in-memory sources by position,
folders by reading the one file, other sources by one filtered pass over
their records. It is then centre-cropped by the contract's ``crop_fraction``
and resized with :func:`bt_keras.preprocess.center_crop_resize`, the code
that made the encoder's input, only to a thumbnail's size.

Examples:

>>> import numpy as np
>>> from bt_keras.contract import make_contract
>>> x = np.zeros([3, 40, 60, 3], np.uint8); x[1] = 255
>>> views = encoder_views(x, [1, 2], make_contract(32), size=8)
>>> views.shape, int(views[0].min()), int(views[1].max())
((2, 8, 8, 3), 255, 0)
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from bt_keras.data.prepare import prepare
from bt_keras.data.sources import FolderSource
from bt_keras.preprocess import center_crop_resize, decode_rgb


def view(image, size: int, crop_fraction: float) -> np.ndarray:
    """A uint8 ``[size, size, 3]`` picture of a decoded image, cropped as the encoder's input was."""
    out = center_crop_resize(tf.convert_to_tensor(image), size, crop_fraction)
    return np.clip(np.round(out.numpy()), 0, 255).astype(np.uint8)


def file_view(path: str, size: int, crop_fraction: float) -> np.ndarray:
    """:func:`view` of an image file."""
    return view(decode_rgb(tf.io.read_file(path)), size, crop_fraction)


def _decoded_images(prep, uids) -> dict:
    """uid -> decoded uint8 image, for the wanted uids of a prepared source."""
    wanted = sorted({int(u) for u in uids})
    if prep.memory is not None:
        position = {int(u): i for i, u in enumerate(prep.memory.uids)}
        get = prep.memory.index_to_example()
        return {u: get(position[u])[1] for u in wanted}
    src = prep.source
    if isinstance(src, FolderSource):
        return {u: decode_rgb(tf.io.read_file(src.locate(u))) for u in wanted}
    found = {}
    keys = tf.constant(np.array(wanted, np.int64))
    records = prep.stream(deterministic=True).filter(lambda u, d, y: tf.reduce_any(tf.equal(u, keys)))
    for uid, data, _ in records:
        found[int(uid)] = decode_rgb(data)
        if len(found) == len(wanted):
            break
    return found


def encoder_views(source, uids, contract, size: int, data_dir=None, prepared=None, **prepare_kwargs) -> np.ndarray:
    """uint8 ``[len(uids), size, size, 3]`` pictures of the examples ``uids`` of ``source``.

    Args:
        source: the source that was embedded (string or arrays).
        uids: example uids from the index.
        contract: the encoder's preprocessing contract (its crop is applied).
        size: the thumbnails' side in pixels.
        data_dir: TFDS ``data_dir``.
        prepared: the prepared source the uids refer to (None: ``source`` prepared again).
        **prepare_kwargs: ``cache``, ``cache_max_mb``, ``validate`` as used for embedding.
    """
    uids = [int(u) for u in uids]
    if not uids:
        return np.zeros([0, size, size, 3], np.uint8)
    prep = prepared or prepare(source, data_dir=data_dir, **prepare_kwargs)
    images = _decoded_images(prep, uids)
    blank = np.zeros([size, size, 3], np.uint8)
    return np.stack([view(images[u], size, contract.crop_fraction) if u in images else blank for u in uids])
