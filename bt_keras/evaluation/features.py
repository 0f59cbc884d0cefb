"""Features of a frozen encoder over a labelled dataset, in inference mode.

Examples:

>>> import numpy as np, tensorflow as tf, keras
>>> from bt_keras.evaluation.features import extract_features
>>> enc = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten()])
>>> ds = tf.data.Dataset.from_tensor_slices((np.ones([3, 4, 4, 3], "float32"), np.arange(3))).batch(2)
>>> extract_features(enc, ds)[0].shape
(3, 48)
"""

from __future__ import annotations

import weakref

import numpy as np
import tensorflow as tf

_INFERENCE_FNS = weakref.WeakKeyDictionary()


def extract_features(encoder, dataset) -> tuple[np.ndarray, np.ndarray]:
    """Runs a frozen encoder over a labelled ``(images, labels)`` dataset.

    The encoder runs in inference mode (BN uses its moving statistics);
    features come back as float32 and labels as int64 NumPy arrays.

    Args:
        encoder: a Keras model or any callable ``f(images, training=False)``
            (e.g. a :class:`~bt_keras.frozen.FrozenEncoder`).
        dataset: batches of ``(images, labels)``.

    Examples:

    >>> import numpy as np, tensorflow as tf, keras
    >>> enc = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.GlobalAveragePooling2D()])
    >>> ds = tf.data.Dataset.from_tensor_slices((np.ones([5, 4, 4, 3], "float32"), np.arange(5))).batch(2)
    >>> x, y = extract_features(enc, ds); x.shape, y.tolist()
    ((5, 3), [0, 1, 2, 3, 4])
    """
    infer = inference_fn(encoder)
    features, labels = [], []
    for images, y in dataset:
        features.append(infer(images))
        labels.append(np.asarray(y))
    if not features:
        raise ValueError("the evaluation dataset is empty")
    return np.concatenate(features), np.concatenate(labels).astype(np.int64)


def inference_fn(model):
    """``model(images, training=False)`` as a float32 NumPy array, compiled once per model.

    On TensorFlow a cached ``tf.function``; on JAX Keras' compiled predict
    step. Under a JAX ``DataParallel`` distribution a batch is padded to a
    multiple of the device count (the batch axis is split over the devices)
    and the padding is dropped from the result.

    Args:
        model: a Keras model, or on TensorFlow any callable ``f(images, training=False)``;
            a :class:`~bt_keras.frozen.FrozenEncoder` with a ``numpy_fn`` (ONNX) runs eagerly.
    """
    import keras

    numpy_fn = getattr(model, "numpy_fn", None)
    if numpy_fn is not None:  # a runtime outside TensorFlow (ONNX Runtime): called eagerly
        return lambda images: numpy_fn(np.asarray(images))
    if keras.backend.backend() != "jax" or not isinstance(model, keras.Model):
        fn = _tf_inference_fn(model)
        return lambda images: fn(images).numpy()
    distribution = keras.distribution.distribution()
    devices = 1 if distribution is None else int(np.prod(distribution.device_mesh.shape))

    def run(images):
        x = np.asarray(images)
        n = len(x)
        pad = (-n) % devices
        if pad:
            x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
        return np.asarray(model.predict_on_batch(x), np.float32)[:n]

    return run


def _tf_inference_fn(encoder):
    """One traced function per encoder: monitors call this every few epochs."""
    try:
        fn = _INFERENCE_FNS.get(encoder)
    except TypeError:
        fn = None
    if fn is None:
        try:
            ref = weakref.ref(encoder)  # the cached function must not keep its key alive
        except TypeError:
            ref = lambda: encoder
        fn = tf.function(lambda x: tf.cast(ref()(x, training=False), tf.float32), reduce_retracing=True)
        try:
            _INFERENCE_FNS[encoder] = fn
        except TypeError:
            pass
    return fn


def eval_batches(source, contract, batch_size: int, data_dir=None, max_image_pixels=None):
    """``(images, labels)`` batches of a labelled source, preprocessed by ``contract`` (centre crops).

    Args:
        source: a labelled source (see :mod:`bt_keras.data`).
        contract: the encoder's preprocessing contract.
        batch_size: images per batch.
        data_dir: TFDS ``data_dir``.
        max_image_pixels: larger images are skipped (None: the default limit).

    Examples:

    >>> from bt_keras.contract import make_contract
    >>> x, y = next(iter(eval_batches("demo:test", make_contract(32), 4)))
    >>> x.shape
    TensorShape([4, 32, 32, 3])
    """
    from bt_keras.data import eval_dataset

    return eval_dataset(
        source,
        batch_size=batch_size,
        **contract.eval_kwargs(),
        data_dir=data_dir,
        **({} if max_image_pixels is None else {"max_image_pixels": int(max_image_pixels)}),
    )
