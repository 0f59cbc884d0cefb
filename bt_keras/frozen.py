"""A frozen encoder with its preprocessing contract, from whichever form an evaluation starts from.

:func:`load_frozen_encoder` gives a :class:`FrozenEncoder` (an encoder in inference mode and its
contract) from a run directory, a ``.keras`` file, an exported SavedModel or an ONNX model. The
contract comes from the recorded ``preprocessing.json`` (or the ONNX metadata); flags that
contradict it are rejected (:func:`bt_keras.contract.resolve_contract`).

Examples:

>>> from bt_keras.frozen import find_saved_model
>>> find_saved_model("/nonexistent")
Traceback (most recent call last):
...
bt_keras.errors.UserError: --saved-model /nonexistent: no saved_model.pb there, ...
"""

from __future__ import annotations

import json
import os

from bt_keras.contract import PreprocessingContract, make_contract, resolve_contract
from bt_keras.errors import UserError, one_line
from bt_keras.saving import embedding_dim, load_encoder


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

    def __init__(self, fn, contract, origin: str, model=None, keep=None, numpy_fn=None):
        self._fn = fn
        self.contract = contract
        self.origin = origin
        self.model = model
        self._keep = keep  # the loaded SavedModel must outlive its signature
        # Runtimes outside TensorFlow (ONNX Runtime) take NumPy arrays and cannot be traced.
        self.numpy_fn = numpy_fn

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


def _onnx_encoder(path: str, flags: dict) -> FrozenEncoder:
    """An ONNX model from ``bt-export`` in ONNX Runtime, with the contract in its ``metadata_props``."""
    import numpy as np

    if not os.path.isfile(path):
        raise UserError(f"--onnx {path}: no such file")
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for unreadable files
        raise UserError(f"--onnx {path}: ONNX Runtime cannot load it: {one_line(e)}") from None
    meta = session.get_modelmeta().custom_metadata_map
    recorded = None
    if "preprocessing" in meta:
        try:
            c = PreprocessingContract.from_json(meta["preprocessing"])
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"--onnx {path}: unreadable preprocessing metadata: {one_line(e)}") from None
        recorded = make_contract(c.image_size, c.mean, c.std, c.crop_fraction, c.pixel_shuffle_seed)
    contract = resolve_contract(recorded, where=f"{path} metadata", **flags)
    input_name = meta.get("input_name", session.get_inputs()[0].name)
    output_name = meta.get("output_name", session.get_outputs()[0].name)
    _check_onnx_shapes(session, input_name, output_name, path)

    def run(images):
        batch = np.ascontiguousarray(np.asarray(images), dtype=np.float32)
        return np.asarray(session.run([output_name], {input_name: batch})[0], np.float32)

    return FrozenEncoder(run, contract, f"onnx:{path}", keep=session, numpy_fn=run)


def _check_onnx_shapes(session, input_name: str, output_name: str, path: str) -> None:
    """Refuses an ONNX model that does not map ``[batch, S, S, 3]`` (any batch) to ``[batch, dim]``.

    Read from the graph's declared shapes, before anything runs: a 4-D output
    or a batch fixed at 1 would otherwise fail later with ONNX Runtime's traceback.

    Args:
        session: the ``onnxruntime.InferenceSession``.
        input_name, output_name: the names the metadata gives (or the first ones).
        path: the model's path, for the message.
    """
    inputs = {i.name: i.shape for i in session.get_inputs()}
    outputs = {o.name: o.shape for o in session.get_outputs()}
    shape_in, shape_out = inputs.get(input_name), outputs.get(output_name)
    if shape_in is None or shape_out is None:
        raise UserError(f"--onnx {path}: no input {input_name!r} or output {output_name!r} in the model")
    if len(shape_in) != 4 or len(shape_out) != 2 or isinstance(shape_in[0], int):
        raise UserError(
            f"--onnx {path}: expected images [batch, S, S, 3] (any batch) to embeddings [batch, dim], "
            f"the model maps {shape_in} to {shape_out}"
        )


def _recorded_contract(path: str):
    """The contract in a ``preprocessing.json`` (a run's, or an export's with provenance), or ``None``."""
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        return None
    try:
        with tf.io.gfile.GFile(path) as f:
            meta = json.loads(f.read())
        c = PreprocessingContract.from_json(json.dumps(meta.get("preprocessing", meta)))
    except KeyError as e:
        raise UserError(f"cannot read {path}: no {e} in it") from None
    except (OSError, ValueError, TypeError, AttributeError, ArithmeticError) as e:
        raise UserError(f"cannot read {path}: {one_line(e)}") from None
    return make_contract(c.image_size, c.mean, c.std, c.crop_fraction, c.pixel_shuffle_seed)


def load_frozen_encoder(
    run: str | None = None,
    encoder: str | None = None,
    saved_model: str | None = None,
    *,
    onnx: str | None = None,
    image_size=None,
    mean=None,
    std=None,
    crop_fraction=None,
) -> FrozenEncoder:
    """Loads exactly one of a run directory, a ``.keras`` encoder, an exported SavedModel or ONNX model.

    A run is ``RUN/encoder.keras`` + ``RUN/preprocessing.json``; a ``.keras``
    encoder takes the contract from a ``preprocessing.json`` next to it, or
    from the keyword arguments; a SavedModel from ``bt-export`` is used
    through its ``serve_float`` signature with the contract in
    ``assets.extra/preprocessing.json``; an ONNX model from ``bt-export``
    runs in ONNX Runtime with the contract of its ``metadata_props``
    (``numpy_fn`` is set: it takes NumPy arrays). Keyword arguments may repeat a
    recorded contract but not contradict it (a one-line :class:`UserError`).

    Args:
        run, encoder, saved_model, onnx: where to load from (exactly one).
        image_size, mean, std, crop_fraction: the contract, when none is recorded.

    Examples:

    >>> load_frozen_encoder(run="/nonexistent")
    Traceback (most recent call last):
    ...
    bt_keras.errors.UserError: --run /nonexistent: no encoder.keras there (is the run finished?)
    """
    import tensorflow as tf

    if sum(v is not None for v in (run, encoder, saved_model, onnx)) != 1:
        raise UserError("give exactly one of --run, --encoder, --saved-model" + (", --onnx" if onnx else ""))
    flags = dict(image_size=image_size, mean=mean, std=std, crop_fraction=crop_fraction)
    if onnx is not None:
        return _onnx_encoder(onnx, flags)
    if saved_model is not None:
        sm_dir = find_saved_model(saved_model)
        try:
            loaded = tf.saved_model.load(sm_dir)
        except (OSError, ValueError, tf.errors.OpError) as e:  # a corrupt or truncated saved_model.pb
            raise UserError(f"--saved-model {sm_dir}: cannot load it: {one_line(e)}") from None
        if "serve_float" not in loaded.signatures:
            raise UserError(f"--saved-model {sm_dir}: no 'serve_float' signature (export it with bt-export)")
        sig = loaded.signatures["serve_float"]
        out_key = next(iter(sig.structured_outputs))
        where = sm_dir + "/assets.extra/preprocessing.json"
        contract = resolve_contract(_recorded_contract(where), where=where, **flags)
        frozen = FrozenEncoder(lambda x: sig(images=x)[out_key], contract, f"saved_model:{sm_dir}", keep=loaded)
        return _checked_embedding(frozen)

    path = encoder
    if run is not None:
        path = run.rstrip("/") + "/encoder.keras"
        if not tf.io.gfile.exists(path):
            raise UserError(f"--run {run}: no encoder.keras there (is the run finished?)")
    elif not tf.io.gfile.exists(path):
        raise UserError(f"--encoder {path}: no such file")
    where = os.path.join(os.path.dirname(path), "preprocessing.json")
    contract = resolve_contract(_recorded_contract(where), where=where, **flags)
    return _checked_embedding(FrozenEncoder.from_keras(load_encoder(path), contract, origin=path))


def _checked_embedding(frozen: FrozenEncoder) -> FrozenEncoder:
    """``frozen``, after the check ``bt-export`` makes: ``[B, S, S, 3]`` images map to ``[B, dim]``."""
    try:
        embedding_dim(frozen, frozen.contract.image_size)
    except UserError as e:
        raise UserError(f"{frozen.origin}: {e}") from None
    return frozen
