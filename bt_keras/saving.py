"""Loading trained encoders: a ``.keras`` file, a run directory or an exported SavedModel.

:func:`load_encoder` is the one loader of ``.keras`` encoders (safe mode) for
every command; :func:`load_frozen_encoder` gives a :class:`FrozenEncoder`, an
encoder in inference mode together with its preprocessing contract, from
whichever of the three an evaluation starts from. The contract comes from the
recorded ``preprocessing.json``; flags that contradict it are rejected
(:func:`bt_keras.contract.resolve_contract`).

Examples:

>>> from bt_keras.saving import find_saved_model
>>> find_saved_model("/nonexistent")
Traceback (most recent call last):
...
bt_keras.errors.UserError: --saved-model /nonexistent: no saved_model.pb there, ...
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from bt_keras.contract import PreprocessingContract, make_contract, resolve_contract
from bt_keras.errors import ExportArgumentError, UserError, one_line


def load_encoder(path):
    """Loads an encoder saved with ``encoder.save("x.keras")`` in safe mode.

    Args:
        path: the ``.keras`` file.

    Raises:
        ExportArgumentError: the file is missing, not a ``.keras`` file or cannot be loaded.

    Examples:

    >>> from bt_keras import encoders
    >>> enc = encoders.small_cnn(widths=(8,)); enc.save("/tmp/doc_enc.keras")
    >>> load_encoder("/tmp/doc_enc.keras").output_shape
    (None, 8)
    """
    import keras

    import bt_keras.layers  # noqa: F401  (registers FusedBatchNormalization)
    import bt_keras.model  # noqa: F401  (registers BarlowTwins)

    path = Path(path)
    if not path.is_file():
        raise ExportArgumentError(f"encoder file {path} does not exist")
    if path.suffix != ".keras":
        raise ExportArgumentError(f"{path} is not a .keras file")
    try:
        return keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as e:
        raise ExportArgumentError(f"cannot load {path}: {one_line(e)}") from e


class FrozenEncoder:
    """A frozen feature extractor with its preprocessing contract.

    ``encoder(images, training=False)`` → float32 features in inference mode,
    whatever the origin: a Keras model (``model`` is set) or an exported
    SavedModel's ``serve_float`` signature.

    Args:
        fn: ``fn(images)`` → features.
        contract: the :class:`~bt_keras.contract.PreprocessingContract` of its inputs.
        origin: where it was loaded from (recorded in reports).
        model: the Keras model, if any.
        keep: an object that must outlive ``fn`` (the loaded SavedModel).

    Examples:

    >>> import keras
    >>> from bt_keras.contract import PreprocessingContract
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
        import tensorflow as tf

        if training:
            raise ValueError("a FrozenEncoder only runs in inference mode")
        return tf.cast(self._fn(images), tf.float32)


def find_saved_model(path: str) -> str:
    """The SavedModel directory under ``path``.

    That is ``path`` itself, the highest version of a TF Serving model base
    path, or ``saved_model/<name>/<version>`` of a ``bt-export`` output directory.

    Args:
        path: local or ``gs://`` directory.

    Examples:

    >>> find_saved_model("/nonexistent")
    Traceback (most recent call last):
    ...
    bt_keras.errors.UserError: --saved-model /nonexistent: no saved_model.pb there, ...
    """
    import tensorflow as tf

    path = path.rstrip("/")

    def versions(base):
        found = tf.io.gfile.glob(base + "/*/saved_model.pb")
        nums = [(int(p.split("/")[-2]), p.rsplit("/", 1)[0]) for p in found if p.split("/")[-2].isdigit()]
        return max(nums)[1] if nums else None

    if tf.io.gfile.exists(path + "/saved_model.pb"):
        return path
    best = versions(path)
    if best:
        return best
    names = sorted({p.split("/")[-3] for p in tf.io.gfile.glob(path + "/saved_model/*/*/saved_model.pb")})
    if len(names) > 1:
        raise UserError(
            f"--saved-model {path}: several models ({', '.join(names)}); pass one of {path}/saved_model/<name>"
        )
    if names:
        return versions(f"{path}/saved_model/{names[0]}")
    raise UserError(f"--saved-model {path}: no saved_model.pb there, in <version>/ or in saved_model/<name>/<version>/")


def _recorded_contract(path: str):
    """The contract in a ``preprocessing.json`` (a run's, or an export's with provenance), or ``None``."""
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        return None
    try:
        with tf.io.gfile.GFile(path) as f:
            meta = json.loads(f.read())
        c = PreprocessingContract.from_json(json.dumps(meta.get("preprocessing", meta)))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"cannot read {path}: {one_line(e)}") from None
    return make_contract(c.image_size, c.mean, c.std, c.crop_fraction)


def load_frozen_encoder(
    run: str | None = None,
    encoder: str | None = None,
    saved_model: str | None = None,
    *,
    image_size=None,
    mean=None,
    std=None,
    crop_fraction=None,
) -> FrozenEncoder:
    """Loads exactly one of a run directory, a ``.keras`` encoder or an exported SavedModel.

    A run is ``RUN/encoder.keras`` + ``RUN/preprocessing.json``; a ``.keras``
    encoder takes the contract from a ``preprocessing.json`` next to it, or
    from the keyword arguments; a SavedModel from ``bt-export`` is used
    through its ``serve_float`` signature with the contract in
    ``assets.extra/preprocessing.json``. Keyword arguments may repeat a
    recorded contract but not contradict it (a one-line :class:`UserError`).

    Args:
        run, encoder, saved_model: where to load from (exactly one).
        image_size, mean, std, crop_fraction: the contract, when none is recorded.

    Examples:

    >>> load_frozen_encoder(run="/nonexistent")
    Traceback (most recent call last):
    ...
    bt_keras.errors.UserError: --run /nonexistent: no encoder.keras there (is the run finished?)
    """
    import tensorflow as tf

    if sum(v is not None for v in (run, encoder, saved_model)) != 1:
        raise UserError("give exactly one of --run, --encoder, --saved-model")
    flags = dict(image_size=image_size, mean=mean, std=std, crop_fraction=crop_fraction)
    if saved_model is not None:
        sm_dir = find_saved_model(saved_model)
        loaded = tf.saved_model.load(sm_dir)
        if "serve_float" not in loaded.signatures:
            raise UserError(f"--saved-model {sm_dir}: no 'serve_float' signature (export it with bt-export)")
        sig = loaded.signatures["serve_float"]
        out_key = next(iter(sig.structured_outputs))
        where = sm_dir + "/assets.extra/preprocessing.json"
        contract = resolve_contract(_recorded_contract(where), where=where, **flags)
        return FrozenEncoder(lambda x: sig(images=x)[out_key], contract, f"saved_model:{sm_dir}", keep=loaded)

    path = encoder
    if run is not None:
        path = run.rstrip("/") + "/encoder.keras"
        if not tf.io.gfile.exists(path):
            raise UserError(f"--run {run}: no encoder.keras there (is the run finished?)")
    elif not tf.io.gfile.exists(path):
        raise UserError(f"--encoder {path}: no such file")
    where = os.path.join(os.path.dirname(path), "preprocessing.json")
    contract = resolve_contract(_recorded_contract(where), where=where, **flags)
    return FrozenEncoder.from_keras(load_encoder(path), contract, origin=path)
