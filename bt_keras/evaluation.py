"""Evaluating frozen encoders: the kNN monitor and two linear-probe protocols.

- kNN as in lightly / solo-learn (and InstDisc): features L2-normalised,
  cosine similarity, the k nearest training examples vote with weight
  exp(sim / T); k=200, T=0.1 by default.
- Linear probe, ``fast``: features extracted once, multinomial logistic
  regression (L-BFGS) on standardised features, trained to convergence.
- Linear probe, ``paper``: the Barlow Twins protocol: a linear layer on the
  frozen encoder in inference mode (BN statistics frozen), SGD momentum 0.9,
  weight decay 1e-6, batch 256, lr 0.3 with per-epoch cosine annealing, 100
  epochs, random-resized crop + flip on the training images. The accuracy of
  the final epoch is reported (never the best on the test set).

``bt-eval`` runs them on a run directory, a ``.keras`` encoder or an exported
SavedModel and writes a JSON report.

Example:

>>> import numpy as np
>>> from bt_keras.evaluation import knn_accuracy
>>> rng = np.random.default_rng(0)
>>> centers = rng.normal(size=(3, 16)) * 10
>>> y = np.repeat(np.arange(3), 50); x = centers[y] + rng.normal(size=(150, 16))
>>> knn_accuracy(x, y, x, y, k=10)["top1"]
1.0

Command line::

    bt-eval --run runs/cifar --train-data folder:cifar10/train --test-data folder:cifar10/test --protocol both
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
import weakref
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from bt_keras.cli import ArgumentParser, UserError, run_command

PROTOCOLS = ("knn", "linear", "both")
LINEAR_MODES = ("fast", "paper")


# --------------------------------------------------------------------------- features and kNN


def extract_features(encoder, dataset) -> tuple[np.ndarray, np.ndarray]:
    """Runs a frozen encoder (inference mode: BN uses its moving statistics)
    over a labelled ``(images, labels)`` dataset; returns float32 features and
    int labels as NumPy arrays.

    ``encoder`` is a Keras model or any callable ``f(images, training=False)``
    (e.g. a :class:`FrozenEncoder`).

    >>> import numpy as np, tensorflow as tf, keras
    >>> enc = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.GlobalAveragePooling2D()])
    >>> ds = tf.data.Dataset.from_tensor_slices((np.ones([5, 4, 4, 3], "float32"), np.arange(5))).batch(2)
    >>> x, y = extract_features(enc, ds); x.shape, y.tolist()
    ((5, 3), [0, 1, 2, 3, 4])
    """
    infer = _inference_fn(encoder)
    features, labels = [], []
    for images, y in dataset:
        features.append(infer(images).numpy())
        labels.append(np.asarray(y))
    if not features:
        raise ValueError("the evaluation dataset is empty")
    return np.concatenate(features), np.concatenate(labels).astype(np.int64)


_INFERENCE_FNS = weakref.WeakKeyDictionary()


def _inference_fn(encoder):
    # One traced function per encoder: monitors call this every few epochs.
    try:
        fn = _INFERENCE_FNS.get(encoder)
    except TypeError:
        fn = None
    if fn is None:
        try:
            ref = weakref.ref(encoder)  # the cached function must not keep its key alive
        except TypeError:
            ref = lambda: encoder  # noqa: E731
        fn = tf.function(lambda x: tf.cast(ref()(x, training=False), tf.float32), reduce_retracing=True)
        try:
            _INFERENCE_FNS[encoder] = fn
        except TypeError:
            pass
    return fn


@tf.function(reduce_retracing=True)
def _knn_scores(batch, train, train_labels, k, temperature, num_classes):
    sim = tf.matmul(tf.math.l2_normalize(batch, axis=1), train, transpose_b=True)
    top_sim, top_idx = tf.math.top_k(sim, k=k)
    weights = tf.exp(top_sim / temperature)
    votes = tf.one_hot(tf.gather(train_labels, top_idx), num_classes)
    return tf.reduce_sum(votes * weights[..., None], axis=1)


def knn_predict(train_features, train_labels, test_features, num_classes=None, k=200,
                temperature=0.1, batch_size=1024) -> np.ndarray:
    """Class scores ``[n_test, num_classes]`` of the weighted kNN vote.

    Test features are processed ``batch_size`` at a time, so memory is
    O(batch_size × n_train) whatever the test set size.

    >>> import numpy as np
    >>> knn_predict(np.eye(2), [0, 1], np.array([[1.0, 0.1]]), k=1).argmax(axis=1)
    array([0])
    """
    train = tf.math.l2_normalize(tf.constant(train_features, tf.float32), axis=1)
    labels = tf.constant(np.asarray(train_labels), tf.int64)
    num_classes = int(num_classes or int(np.max(train_labels)) + 1)
    k = tf.constant(min(int(k), int(train.shape[0])), tf.int32)
    temperature = tf.constant(temperature, tf.float32)
    depth = tf.constant(num_classes, tf.int32)
    test = np.asarray(test_features, np.float32)
    out = [_knn_scores(tf.constant(test[i : i + batch_size]), train, labels, k, temperature, depth).numpy()
           for i in range(0, len(test), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, num_classes), np.float32)


def _topk(scores, labels) -> dict:
    labels = np.asarray(labels)
    ranked = np.argsort(-scores, axis=1, kind="stable")
    return {"top1": float(np.mean(ranked[:, 0] == labels)),
            "top5": float(np.mean(np.any(ranked[:, :5] == labels[:, None], axis=1)))}


def knn_accuracy(train_features, train_labels, test_features, test_labels, k=200,
                 temperature=0.1, batch_size=1024) -> dict:
    """Top-1 and top-5 accuracy of the weighted kNN classifier.

    >>> import numpy as np
    >>> knn_accuracy(np.eye(3), [0, 1, 2], np.eye(3), [0, 1, 2], k=1)
    {'top1': 1.0, 'top5': 1.0}
    """
    test_labels = np.asarray(test_labels)
    num_classes = int(max(np.max(train_labels), np.max(test_labels))) + 1
    scores = knn_predict(train_features, train_labels, test_features, num_classes, k, temperature, batch_size)
    return _topk(scores, test_labels)


# --------------------------------------------------------------------------- linear probes


def linear_probe(train_features, train_labels, test_features, test_labels, *, C: float = 1.0,
                 max_iter: int = 1000, tol: float = 1e-4) -> dict:
    """Fast linear probe: multinomial logistic regression on frozen features.

    Features are standardised with the training set's mean/std, then
    L-BFGS runs to convergence (``converged`` in the result says whether it
    stopped on ``tol``, scikit-learn's gradient criterion, rather than
    ``max_iter``). ``C`` is scikit-learn's
    inverse L2 strength.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, 300); x = np.eye(3)[y] * 5 + rng.normal(size=(300, 3))
    >>> linear_probe(x, y, x, y)["top1"] > 0.95
    True
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    x_tr = np.asarray(train_features, np.float64)
    x_te = np.asarray(test_features, np.float64)
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0)
    std[std < 1e-12] = 1.0  # constant (dead) dimensions carry no information
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    clf = LogisticRegression(C=C, max_iter=max_iter, tol=tol)
    started = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x_tr, np.asarray(train_labels))
    n_iter = int(np.max(clf.n_iter_))
    num_classes = int(max(np.max(train_labels), np.max(test_labels))) + 1
    scores = np.full((len(x_te), num_classes), -np.inf)
    scores[:, clf.classes_] = clf.predict_log_proba(x_te)
    out = _topk(scores, test_labels)
    out.update({"mode": "fast", "method": "multinomial logistic regression (L-BFGS) on standardised features",
                "C": C, "iterations": n_iter, "converged": n_iter < max_iter,
                "train_top1": float(clf.score(x_tr, np.asarray(train_labels))),
                "seconds": round(time.time() - started, 1)})
    return out


def crop_flip_config(contract):
    """The paper's linear-probe augmentation: random-resized crop (scale 0.08–1,
    ratio 3/4–4/3, bicubic) and horizontal flip only, with the contract's
    mean/std.

    >>> from bt_keras.preprocess import PreprocessingContract
    >>> cfg = crop_flip_config(PreprocessingContract(image_size=32))
    >>> cfg.crop.enabled, cfg.flip.enabled, cfg.color_jitter.enabled
    (True, True, False)
    """
    from bt_keras.augment import get_preset

    return get_preset("none", crop={"enabled": True}, flip={"enabled": True},
                      mean=tuple(contract.mean), std=tuple(contract.std))


def augmented_labelled_dataset(source, contract, *, batch_size: int = 256, epoch: int = 0, seed: int = 0,
                               data_dir=None, cache_max_mb: int = 1024, repeat: bool = False):
    """One epoch of ``(images, labels)`` training batches for the paper's probe.

    Random-resized crops are cut from the central square of each image
    (``crop_fraction`` = 1), resized to ``image_size / crop_fraction`` (256
    for a 224 contract, the usual "resize 256"), then flipped and normalised
    with the contract's mean/std. Each (epoch, example) gets its own
    stateless seed. ``repeat``: an endless stream of epochs, reshuffled each
    time (e.g. for supervised training).

    >>> from bt_keras.preprocess import PreprocessingContract
    >>> c = PreprocessingContract(image_size=32, crop_fraction=1.0)
    >>> x, y = next(iter(augmented_labelled_dataset("demo:test", c, batch_size=16)))
    >>> x.shape
    TensorShape([16, 32, 32, 3])
    """
    raw = LabelledImages(source, contract, data_dir, cache_max_mb)
    return raw.epoch(crop_flip_config(contract), batch_size, epoch, seed, repeat=repeat)


class LabelledImages:
    """A labelled source as uint8 central squares at ``image_size /
    crop_fraction``, unbatched; kept in memory (after the first full pass, or
    :meth:`warm`) when they fit in ``cache_max_mb``. :meth:`epoch` gives
    crop + flip training batches.

    >>> from bt_keras.preprocess import PreprocessingContract
    >>> images = LabelledImages("demo:test", PreprocessingContract(32, crop_fraction=1.0))
    >>> images.num_classes()
    10
    """

    def __init__(self, source, contract, data_dir=None, cache_max_mb: int = 1024):
        from bt_keras.data import eval_dataset, source_info

        self.info = source_info(source, data_dir=data_dir)
        load = int(round(contract.image_size / contract.crop_fraction))
        # mean 0, std 1/255 undoes the normalisation: pixels in [0, 255].
        ds = eval_dataset(source, batch_size=256, image_size=load, mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3,
                          crop_fraction=1.0, data_dir=data_dir)
        ds = ds.unbatch().map(lambda x, y: (tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8), y))
        budget = cache_max_mb * 2**20
        per_image = load * load * 3
        self.cached = self.info.num_examples * per_image <= budget
        if self.cached:
            ds = ds.cache()
            self.shuffle_buffer = max(self.info.num_examples, 1)
        else:
            self.shuffle_buffer = max(1000, budget // per_image)
        self.dataset = ds
        self.image_size = contract.image_size

    def warm(self) -> "LabelledImages":
        """Fills the in-memory cache now (one full pass), so that training time excludes decoding."""
        if self.cached:
            for _ in self.dataset.batch(4096):
                pass
        return self

    def num_classes(self) -> int:
        if self.info.class_names:
            return len(self.info.class_names)
        return int(max(int(tf.reduce_max(y)) for _, y in self.dataset.batch(4096))) + 1

    def epoch(self, cfg, batch_size: int, epoch: int = 0, seed: int = 0, repeat: bool = False):
        """``(images, labels)`` batches of random crops (``cfg``, e.g. :func:`crop_flip_config`)."""
        from bt_keras import augment as aug

        size = self.image_size

        @tf.autograph.experimental.do_not_convert  # plain TF ops; no control flow to convert
        def crop(i, image, label):
            key = aug.example_keys(tf.constant(seed, tf.int64), tf.constant(epoch, tf.int64), i)
            params = aug.sample_params(key, tf.shape(image)[0], tf.shape(image)[1], cfg, 0)
            return aug.crop_resize(image, params, size, cfg), params, label

        ds = self.dataset.shuffle(self.shuffle_buffer, seed=seed * 7919 + epoch, reshuffle_each_iteration=True)
        ds = (ds.repeat() if repeat else ds).enumerate()  # unique index → unique crop per (epoch, example)
        ds = ds.map(lambda i, ex: crop(i, *ex), num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(batch_size, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.map(lambda x, p, y: (aug.apply_batch(x, p, cfg, 0), y), num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(tf.data.AUTOTUNE)


def linear_probe_sgd(encoder, train_data, test_data, contract, *, epochs: int = 100, batch_size: int = 256,
                     learning_rate: float = 0.3, momentum: float = 0.9, weight_decay: float = 1e-6,
                     eval_batch_size: int = 256, data_dir=None, seed: int = 0, log: Optional[Callable] = None) -> dict:
    """The paper's linear probe on a frozen encoder; reports the final epoch.

    A ``Dense(num_classes)`` (weights N(0, 0.01), bias 0) on the encoder's
    features in inference mode (BN moving statistics are used, never
    updated; no gradient reaches the encoder). SGD with momentum, L2 weight
    decay added to the gradient (PyTorch semantics, on weight and bias),
    lr ``learning_rate × ½(1 + cos(π·epoch/epochs))`` per epoch, random-resized
    crop + flip on the training images (:func:`augmented_labelled_dataset`),
    centre crops for the test images. ``train_data``/``test_data`` are
    sources (see :mod:`bt_keras.data`).

    >>> import numpy as np, keras
    >>> from bt_keras.preprocess import PreprocessingContract
    >>> enc = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D()])
    >>> c = PreprocessingContract(image_size=32, crop_fraction=1.0)
    >>> linear_probe_sgd(enc, "demo:test", "demo:test", c, epochs=1)["epochs"]
    1
    """
    import keras

    from bt_keras.data import eval_dataset

    if epochs < 1:
        raise UserError(f"epochs must be >= 1, got {epochs}")
    test_ds = eval_dataset(test_data, batch_size=eval_batch_size, image_size=contract.image_size,
                           mean=contract.mean, std=contract.std, crop_fraction=contract.crop_fraction,
                           data_dir=data_dir)
    raw = LabelledImages(train_data, contract, data_dir, cache_max_mb=1024)
    num_classes = raw.num_classes()
    cfg = crop_flip_config(contract)
    features = tf.function(lambda x: tf.stop_gradient(tf.cast(encoder(x, training=False), tf.float32)),
                           reduce_retracing=True)
    keras.utils.set_random_seed(seed)
    head = keras.layers.Dense(num_classes, kernel_initializer=keras.initializers.RandomNormal(0.0, 0.01),
                              bias_initializer="zeros", dtype="float32")
    head.build((None, int(features(next(iter(test_ds))[0][:1]).shape[-1])))
    opt = keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum)
    opt.build(head.trainable_variables)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(reduce_retracing=True)
    def train_step(x, y):
        f = features(x)
        with tf.GradientTape() as tape:
            loss = ce(y, head(f))
            decay = 0.5 * weight_decay * tf.add_n([tf.reduce_sum(tf.square(v)) for v in head.trainable_variables])
            total = loss + decay
        grads = tape.gradient(total, head.trainable_variables)
        opt.apply_gradients(zip(grads, head.trainable_variables))
        return loss

    started = time.time()
    history = []
    for epoch in range(epochs):
        opt.learning_rate = learning_rate * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
        losses = [float(train_step(x, y)) for x, y in raw.epoch(cfg, batch_size, epoch, seed)]
        history.append(float(np.mean(losses)))
        if log:
            log(f"linear probe epoch {epoch + 1}/{epochs}: train loss {history[-1]:.4f}")
    predict = tf.function(lambda x: head(features(x)), reduce_retracing=True)
    scores, ys = [], []
    for x, y in test_ds:
        scores.append(predict(x).numpy())
        ys.append(y.numpy())
    out = _topk(np.concatenate(scores), np.concatenate(ys))
    out.update({"mode": "paper", "reported": "final epoch (not the best on the test set)", "epochs": epochs,
                "batch_size": batch_size, "learning_rate": learning_rate, "schedule": "cosine per epoch",
                "momentum": momentum, "weight_decay": weight_decay,
                "augmentation": "random-resized crop (0.08-1) + horizontal flip",
                "train_loss_per_epoch": [round(v, 5) for v in history],
                "seconds": round(time.time() - started, 1)})
    return out


# --------------------------------------------------------------------------- loading encoders


class FrozenEncoder:
    """A frozen feature extractor with its preprocessing contract.

    ``encoder(images, training=False)`` → float32 features in inference mode,
    whatever the origin: a Keras model (``model`` is set) or an exported
    SavedModel's ``serve_float`` signature.

    >>> import keras
    >>> from bt_keras.preprocess import PreprocessingContract
    >>> enc = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.GlobalAveragePooling2D()])
    >>> FrozenEncoder.from_keras(enc, PreprocessingContract(image_size=8)).contract.image_size
    8
    """

    def __init__(self, fn, contract, origin: str, model=None, keep=None):
        self._fn = fn
        self.contract = contract
        self.origin = origin
        self.model = model
        self._keep = keep  # the loaded SavedModel must outlive its signature

    @classmethod
    def from_keras(cls, model, contract, origin: str = "keras model"):
        return cls(lambda x: model(x, training=False), contract, origin, model=model)

    def __call__(self, images, training=False):
        if training:
            raise ValueError("a FrozenEncoder only runs in inference mode")
        return tf.cast(self._fn(images), tf.float32)


def _read_json(path):
    with tf.io.gfile.GFile(path) as f:
        return json.loads(f.read())


def _contract(base, image_size=None, mean=None, std=None, crop_fraction=None, where=""):
    from bt_keras.preprocess import PreprocessingContract

    if base is None:
        if image_size is None:
            raise UserError(f"no preprocessing contract found{where}; pass --image-size "
                            "(and --mean/--std/--crop-fraction if they differ from the ImageNet defaults)")
        base = PreprocessingContract(image_size=int(image_size))
    changes = {k: v for k, v in (("image_size", image_size), ("mean", mean), ("std", std),
                                 ("crop_fraction", crop_fraction)) if v is not None}
    return dataclasses.replace(base, **{k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()})


def find_saved_model(path: str) -> str:
    """The SavedModel directory under ``path``: itself, the highest version of a
    TF Serving model base path, or ``saved_model/<name>/<version>`` of a
    ``bt-export`` output directory.

    >>> find_saved_model("/nonexistent")
    Traceback (most recent call last):
    ...
    bt_keras.cli.UserError: --saved-model /nonexistent: no saved_model.pb there, in <version>/ or in saved_model/<name>/<version>/
    """
    path = path.rstrip("/")

    def versions(base):
        found = [d for d in tf.io.gfile.glob(base + "/*/saved_model.pb")]
        nums = [(int(p.split("/")[-2]), p.rsplit("/", 1)[0]) for p in found if p.split("/")[-2].isdigit()]
        return max(nums)[1] if nums else None

    if tf.io.gfile.exists(path + "/saved_model.pb"):
        return path
    best = versions(path)
    if best:
        return best
    names = sorted({p.split("/")[-3] for p in tf.io.gfile.glob(path + "/saved_model/*/*/saved_model.pb")})
    if len(names) > 1:
        raise UserError(f"--saved-model {path}: several models ({', '.join(names)}); "
                        f"pass one of {path}/saved_model/<name>")
    if names:
        return versions(f"{path}/saved_model/{names[0]}")
    raise UserError(f"--saved-model {path}: no saved_model.pb there, in <version>/ or in saved_model/<name>/<version>/")


def load_frozen_encoder(run: Optional[str] = None, encoder: Optional[str] = None, saved_model: Optional[str] = None,
                        *, image_size=None, mean=None, std=None, crop_fraction=None) -> FrozenEncoder:
    """Loads exactly one of: a run directory (``RUN/encoder.keras`` +
    ``RUN/preprocessing.json``), a ``.keras`` encoder (contract from a
    ``preprocessing.json`` next to it, or the keyword arguments), or a
    SavedModel from ``bt-export`` (its ``serve_float`` signature and the
    contract in ``assets.extra/preprocessing.json``). Keyword arguments
    override the contract.

    >>> load_frozen_encoder(run="/nonexistent")
    Traceback (most recent call last):
    ...
    bt_keras.cli.UserError: --run /nonexistent: no encoder.keras there (is the run finished?)
    """
    from bt_keras.preprocess import PreprocessingContract

    if sum(v is not None for v in (run, encoder, saved_model)) != 1:
        raise UserError("give exactly one of --run, --encoder, --saved-model")
    overrides = dict(image_size=image_size, mean=mean, std=std, crop_fraction=crop_fraction)
    if saved_model is not None:
        sm_dir = find_saved_model(saved_model)
        loaded = tf.saved_model.load(sm_dir)
        if "serve_float" not in loaded.signatures:
            raise UserError(f"--saved-model {sm_dir}: no 'serve_float' signature (export it with bt-export)")
        sig = loaded.signatures["serve_float"]
        out_key = next(iter(sig.structured_outputs))
        meta_path = sm_dir + "/assets.extra/preprocessing.json"
        base = None
        if tf.io.gfile.exists(meta_path):
            meta = _read_json(meta_path)
            base = PreprocessingContract.from_json(json.dumps(meta.get("preprocessing", meta)))
        contract = _contract(base, where=f" in {sm_dir}", **overrides)
        return FrozenEncoder(lambda x: sig(images=x)[out_key], contract, f"saved_model:{sm_dir}", keep=loaded)

    path = encoder
    if run is not None:
        path = run.rstrip("/") + "/encoder.keras"
        if not tf.io.gfile.exists(path):
            raise UserError(f"--run {run}: no encoder.keras there (is the run finished?)")
    elif not tf.io.gfile.exists(path):
        raise UserError(f"--encoder {path}: no such file")
    contract_path = os.path.join(os.path.dirname(path), "preprocessing.json")
    base = None
    if tf.io.gfile.exists(contract_path):
        base = PreprocessingContract.from_json(json.dumps(_read_json(contract_path)))
    contract = _contract(base, where=f" next to {path}", **overrides)
    from bt_keras.export import load_encoder  # one loader (safe mode) for every command

    model = load_encoder(path)
    return FrozenEncoder.from_keras(model, contract, origin=path)


# --------------------------------------------------------------------------- one call for every protocol


def evaluate(encoder: FrozenEncoder, train_data, test_data, *, protocol: str = "knn", linear: str = "fast",
             k: int = 200, temperature: float = 0.1, batch_size: int = 256, epochs: int = 100, C: float = 1.0,
             data_dir=None, seed: int = 0, log: Optional[Callable] = None) -> dict:
    """Runs the kNN and/or linear protocol on a :class:`FrozenEncoder`; returns the report dict.

    >>> import keras
    >>> from bt_keras.preprocess import PreprocessingContract
    >>> enc = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten()])
    >>> fe = FrozenEncoder.from_keras(enc, PreprocessingContract(image_size=32, crop_fraction=1.0))
    >>> r = evaluate(fe, "demo:train", "demo:test", protocol="knn")
    >>> r["num_test"], r["knn"]["k"]
    (359, 200)
    """
    from bt_keras.data import eval_dataset

    if protocol not in PROTOCOLS:
        raise UserError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if linear not in LINEAR_MODES:
        raise UserError(f"linear mode must be one of {', '.join(LINEAR_MODES)}, got {linear!r}")
    c = encoder.contract
    log = log or (lambda msg: None)

    def features(source):
        ds = eval_dataset(source, batch_size=batch_size, image_size=c.image_size, mean=c.mean, std=c.std,
                          crop_fraction=c.crop_fraction, data_dir=data_dir)
        return extract_features(encoder, ds)

    started = time.time()
    report = {"encoder": encoder.origin, "preprocessing": json.loads(c.to_json()),
              "train_data": _name(train_data), "test_data": _name(test_data), "protocol": protocol}
    need_features = protocol in ("knn", "both") or linear == "fast"
    if need_features:
        log("extracting features")
        x_tr, y_tr = features(train_data)
        x_te, y_te = features(test_data)
        report.update(num_train=len(y_tr), num_test=len(y_te), feature_dim=int(x_tr.shape[1]),
                      feature_seconds=round(time.time() - started, 1))
    if protocol in ("knn", "both"):
        log(f"kNN (k={k}, T={temperature})")
        report["knn"] = dict(knn_accuracy(x_tr, y_tr, x_te, y_te, k=k, temperature=temperature),
                             k=k, temperature=temperature, similarity="cosine", vote="weighted exp(sim/T)")
    if protocol in ("linear", "both"):
        if linear == "fast":
            log("linear probe (L-BFGS logistic regression)")
            report["linear"] = linear_probe(x_tr, y_tr, x_te, y_te, C=C)
        else:
            log(f"linear probe (paper protocol, {epochs} epochs)")
            report["linear"] = linear_probe_sgd(encoder, train_data, test_data, c, epochs=epochs,
                                                eval_batch_size=batch_size, data_dir=data_dir, seed=seed, log=log)
    report["seconds"] = round(time.time() - started, 1)
    return report


def _name(source):
    return source if isinstance(source, str) else "arrays"


def format_table(report: dict) -> str:
    """The short table ``bt-eval`` prints."""
    rows = []
    if "knn" in report:
        r = report["knn"]
        rows.append((f"kNN (k={r['k']}, T={r['temperature']:g})", r))
    if "linear" in report:
        r = report["linear"]
        name = ("linear, logistic regression" if r["mode"] == "fast"
                else f"linear, paper SGD ({r['epochs']} ep, final)")
        rows.append((name, r))
    width = max([len(n) for n, _ in rows] + [10]) + 2
    lines = [f"{'protocol':<{width}}{'top-1':>8}{'top-5':>8}"]
    lines += [f"{n:<{width}}{r['top1']:>8.4f}{r['top5']:>8.4f}" for n, r in rows]
    return "\n".join(lines)


def _floats(text):
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"expected three comma-separated numbers (R,G,B), got {text!r}") from None
    if len(values) != 3:
        raise UserError(f"expected three comma-separated numbers (R,G,B), got {text!r}")
    return tuple(values)


def _main(argv):
    parser = ArgumentParser(prog="bt-eval", description="Evaluate a frozen encoder: kNN and/or linear probe.")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="run directory of bt-train (encoder.keras + preprocessing.json)")
    which.add_argument("--encoder", help="a .keras encoder (preprocessing.json next to it, or --image-size)")
    which.add_argument("--saved-model", help="a SavedModel from bt-export (its serve_float signature)")
    parser.add_argument("--train-data", help="labelled source for the kNN bank / probe training "
                        "(folder:PATH, tfds:NAME[:SPLIT], tfrecord:GLOB, demo:train); default: the run's eval.train_source")
    parser.add_argument("--test-data", help="labelled test source; default: the run's eval.test_source")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="both")
    parser.add_argument("--linear", choices=LINEAR_MODES, default="fast",
                        help="fast: logistic regression on extracted features; paper: SGD 100 epochs with crops")
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=100, help="epochs of the paper linear protocol")
    parser.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the fast probe")
    parser.add_argument("--batch-size", type=int, default=256, help="feature-extraction batch")
    parser.add_argument("--data-dir", help="TFDS data_dir")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--mean", type=_floats, help="R,G,B (overrides the contract)")
    parser.add_argument("--std", type=_floats, help="R,G,B (overrides the contract)")
    parser.add_argument("--crop-fraction", type=float)
    parser.add_argument("--report", help="JSON report path (default: RUN/eval_report.json, else ./eval_report.json)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("k", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    if args.temperature <= 0 or args.C <= 0:
        raise UserError("--temperature and --C must be > 0")
    if args.image_size is not None and args.image_size < 1:
        raise UserError("--image-size must be >= 1")
    if args.crop_fraction is not None and not 0 < args.crop_fraction <= 1:
        raise UserError("--crop-fraction must be in (0, 1]")

    train_data, test_data, data_dir = args.train_data, args.test_data, args.data_dir
    if args.run and not tf.io.gfile.isdir(args.run):
        raise UserError(f"--run {args.run}: no such directory")
    if args.run and (train_data is None or test_data is None):
        cfg_path = args.run.rstrip("/") + "/config.yaml"
        if tf.io.gfile.exists(cfg_path):
            from bt_keras.config import load_config

            cfg = load_config(cfg_path)
            train_data = train_data or cfg.eval.train_source
            test_data = test_data or cfg.eval.test_source
            data_dir = data_dir or cfg.data.data_dir
    if not train_data or not test_data:
        raise UserError("--train-data and --test-data are required (labelled sources)")

    encoder = load_frozen_encoder(args.run, args.encoder, args.saved_model, image_size=args.image_size,
                                  mean=args.mean, std=args.std, crop_fraction=args.crop_fraction)
    report = evaluate(encoder, train_data, test_data, protocol=args.protocol, linear=args.linear, k=args.k,
                      temperature=args.temperature, batch_size=args.batch_size, epochs=args.epochs, C=args.C,
                      data_dir=data_dir, seed=args.seed,
                      log=lambda m: print(f"bt-eval: {m}", file=sys.stderr, flush=True))
    path = args.report or (args.run.rstrip("/") + "/eval_report.json" if args.run else "eval_report.json")
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(json.dumps(report, indent=2) + "\n")
    tf.io.gfile.rename(tmp, path, overwrite=True)
    print(f"bt-eval: {report['encoder']}: {report.get('num_train', '?')} train / {report.get('num_test', '?')} "
          f"test images, {report.get('feature_dim', '?')}-d features")
    print(format_table(report))
    print(f"report: {path}")
    return 0


def main(argv=None):
    sys.exit(run_command("bt-eval", _main, argv))


if __name__ == "__main__":
    main()
