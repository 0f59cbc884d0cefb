"""Run configuration: YAML files loaded into typed dataclasses, strictly.

Unknown keys, wrong types and bad values are reported as one line naming the
key and what is allowed (``ConfigError``, exit code 2 in the CLIs).

Examples:

>>> from bt_keras.config import config_from_dict
>>> cfg = config_from_dict({"train": {"epochs": 5}}, overrides=["model.lambd=0.01"])
>>> cfg.train.epochs, cfg.model.lambd
(5, 0.01)
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from typing import Literal

import yaml

from bt_keras.config_yaml import MAX_CONFIG_BYTES, load_yaml, read_text  # noqa: F401 (MAX_CONFIG_BYTES: public here)
from bt_keras.cpu_threads import thread_layout
from bt_keras.data.config import DataConfig
from bt_keras.encoder_names import (  # noqa: F401 (public here too: bt_keras.config.ENCODER_NAMES, ...)
    ENCODER_FAMILIES,
    ENCODER_NAMES,
    KERAS_APPLICATIONS,
    check_init_weights,
    encoder_family,
)
from bt_keras.errors import ConfigError, DataError, UserError, short_repr


@dataclasses.dataclass
class ModelConfig:
    """Encoder and projector.

    ``encoder``: a built-in name (:data:`ENCODER_NAMES`),
    ``keras.applications.NAME``, ``keras_hub:PRESET_OR_DIR`` or
    ``file:PATH.keras`` (:func:`encoder_family`); ``encoder_args``: keyword
    arguments for its constructor (``keras.applications``) or ``from_preset``
    (KerasHub). ``init_weights``: where the encoder's first weights come from
    (:func:`check_init_weights`). ``freeze``: name prefixes of encoder layers
    kept frozen (inference-mode BN, no updates), e.g. ``[stem_, stage1_]``.
    ``width`` and ``zero_init_residual``: built-in encoders only.
    """

    encoder: str = "resnet18_cifar"
    encoder_args: dict = dataclasses.field(default_factory=dict)
    init_weights: str | None = None
    freeze: tuple[str, ...] = ()
    width: int = 64
    zero_init_residual: bool = True
    projector_dims: tuple[int, ...] = (2048, 2048, 2048)
    lambd: float = 0.0051
    loss_method: Literal["auto", "dense", "gram"] = "auto"
    sync_batchnorm: bool = True
    fused_batchnorm: bool = True
    # The loss's per-view normalisation: "full" is the paper's; "center"/"none" are ablations.
    standardize: Literal["full", "center", "none"] = "full"


@dataclasses.dataclass
class OptimConfig:
    """Optimiser and schedule. Learning rates are per 256 examples (× batch/256).

    ``lars`` (the paper's): weights ``lr_weights``, rank-1 variables
    ``lr_biases``; ``eta`` and ``clip_trust`` shape its trust ratio
    (:class:`bt_keras.optimizers.LARS`). ``adamw``: ``lr_weights`` for everything, decoupled
    ``weight_decay``.
    """

    name: Literal["lars", "adamw"] = "lars"
    lr_weights: float = 0.2
    lr_biases: float = 0.0048
    weight_decay: float = 1.5e-6
    momentum: float = 0.9
    eta: float = 0.001
    clip_trust: bool = False
    warmup_epochs: float = 10.0
    end_factor: float = 0.001


@dataclasses.dataclass
class TrainConfig:
    """How and where to train.

    ``mixed_precision``: ``auto`` takes what is fastest where the run runs
    (:mod:`bt_keras.precision`: bf16 on TPUs and Ampere GPUs, float16 on
    Volta/Turing, on a CPU bf16 only where it measures faster than float32).
    ``jit_compile``: None picks per platform (off on CPU, where XLA
    convolutions measured 0.6× oneDNN's; on for TPU).
    ``backend``: Keras' backend; None takes ``KERAS_BACKEND`` from the
    environment, else ``tensorflow``. On ``jax`` the strategies are ``auto``
    (``keras.distribution.DataParallel`` over every device and host), ``cpu``
    and ``gpu``; ``mirrored``, ``multi_worker`` and ``tpu`` are TensorFlow's.
    ``cpu_threads``: TensorFlow's CPU thread pools on a CPU-only run
    (:mod:`bt_keras.cpu_threads`): ``auto`` runs the two views' ops side by
    side, half the cores each; ``tf`` keeps TensorFlow's defaults;
    ``"INTRA,INTER"`` sets both pool sizes.
    ``jax_compilation_cache``: where the JAX backend keeps compiled steps
    between runs (:func:`bt_keras.distribute.use_jax_compilation_cache`), so
    a resumed run does not compile again: ``auto`` (``JAX_COMPILATION_CACHE_DIR``,
    else ``~/.cache/bt_keras/jax``), a directory, or null (off).
    ``checkpoint_every_steps``: 0 = at the end of each epoch only.
    ``verbose``: Keras' ``fit`` verbosity; None shows a progress bar on a
    terminal and one plain line per epoch when the output is a file or pipe.
    """

    epochs: int = 100
    batch_size: int = 256
    run_dir: str = "runs/default"
    backend: Literal["tensorflow", "jax"] | None = None
    strategy: Literal["auto", "cpu", "gpu", "mirrored", "multi_worker", "tpu"] = "auto"
    tpu: str | None = None
    zone: str | None = None
    project: str | None = None
    mixed_precision: Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"] = "float32"
    jit_compile: bool | None = None
    steps_per_execution: int = 1
    cpu_threads: str = "auto"
    jax_compilation_cache: str | None = "auto"
    checkpoint_every_steps: int = 0
    seed: int = 0
    verbose: int | None = None

    def __post_init__(self):
        if self.jax_compilation_cache is not None and not self.jax_compilation_cache.strip():
            raise ValueError("jax_compilation_cache: must be 'auto', a directory or null (off), not empty")


@dataclasses.dataclass
class EvalConfig:
    """End-of-run kNN evaluation (and the kNN monitor) on labelled sources.

    ``train_source``/``test_source``: None disables the final evaluation.
    """

    train_source: str | None = None
    test_source: str | None = None
    k: int = 200
    temperature: float = 0.1
    batch_size: int = 256
    compare_random_init: bool = True


@dataclasses.dataclass
class MonitorConfig:
    """Training-time monitors (``bt_keras.callbacks``), chief only, in ``RUN/logs/monitor``.

    ``knn_every_epochs``: kNN top-1/top-5 every N epochs (0 = off) of
    ``knn_val_source`` (default ``data.val_source``, then ``eval.test_source``)
    against ``knn_train_source`` (default ``eval.train_source``), subsampled
    once to ``knn_max_train`` / ``knn_max_val`` images (0 = all).
    ``health`` / ``correlation_image``: collapse indicators and the C heatmap
    on a fixed batch of ``probe_batch`` pairs every epoch. ``report``:
    ``RUN/report.png`` at the end.
    """

    knn_every_epochs: int = 0
    knn_train_source: str | None = None
    knn_val_source: str | None = None
    knn_max_train: int = 10000
    knn_max_val: int = 2000
    health: bool = True
    correlation_image: bool = True
    probe_batch: int = 256
    report: bool = True

    def __post_init__(self):
        for name in ("knn_every_epochs", "knn_max_train", "knn_max_val"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0")
        if self.probe_batch < 2:
            raise ValueError("probe_batch: must be >= 2 (batch statistics)")


@dataclasses.dataclass
class Config:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    monitor: MonitorConfig = dataclasses.field(default_factory=MonitorConfig)


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return f"a list of {len(args)} values"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _fail(tp, value, key):
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {short_repr(value)}")


def _coerce(tp, value, key):
    """``value`` checked against the annotation ``tp`` (converted where YAML is loose); a one-line
    :class:`ConfigError` naming ``key`` otherwise."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    if origin is Literal:
        if value not in typing.get_args(tp):
            _fail(tp, value, key)
        return value
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(tp, value, key)
    if origin is tuple:
        return _coerce_tuple(tp, value, key)
    if tp is float:
        return _coerce_float(value, key)
    if tp is typing.Any:
        return value
    exact = {bool: (bool,), int: (int,), str: (str,), dict: (dict,)}.get(tp)
    if exact is None or not isinstance(value, exact) or (tp is int and isinstance(value, bool)):
        _fail(tp, value, key)
    if tp is dict:
        if not all(isinstance(k, str) for k in value):
            _fail(tp, value, key)
        return dict(value)
    return value


def _coerce_union(tp, value, key):
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(arg, value, key)
        except ConfigError:
            pass
    _fail(tp, value, key)


def _coerce_tuple(tp, value, key):
    args = typing.get_args(tp)
    if not isinstance(value, (list, tuple)):
        _fail(tp, value, key)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        _fail(tp, value, key)
    return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))


def _coerce_float(value, key):
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string.
        try:
            value = float(value)
        except ValueError:
            _fail(float, value, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(float, value, key)
    try:
        value = float(value)
    except OverflowError:  # an int beyond float's range
        value = math.inf
    if not math.isfinite(value):  # 1e400 reads as inf, .inf and .nan are YAML's
        raise ConfigError(f"{key}: expected a finite number, got {short_repr(value)}")
    return value


def _build(cls, values, prefix=""):
    if values is None:
        values = {}
    if dataclasses.is_dataclass(values) and isinstance(values, cls):
        return values
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {short_repr(values)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"unknown key {short_repr(prefix + str(key))}; allowed: {', '.join(names)}")
        kwargs[key] = _coerce(hints[key], value, prefix + key)
    try:
        return cls(**kwargs)
    except UserError as e:
        raise ConfigError(f"{prefix.rstrip('.')}: {e}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {e}") from None


def _apply_override(raw: dict, override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"--set expects key.sub=value, got {short_repr(override)}")
    path, text = override.split("=", 1)
    try:
        value = load_yaml(text, f"--set {short_repr(path)}")
    except yaml.YAMLError:
        value = text
    node = raw
    parts = path.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {short_repr(path)}: {short_repr(part)} is not a section")
        node = child
    node[parts[-1]] = value


def _validate(cfg: Config) -> Config:
    checks = [
        (cfg.train.epochs >= 1, "train.epochs: must be >= 1"),
        (cfg.train.batch_size >= 2, "train.batch_size: must be >= 2 (batch statistics)"),
        (cfg.train.steps_per_execution >= 1, "train.steps_per_execution: must be >= 1"),
        (cfg.train.checkpoint_every_steps >= 0, "train.checkpoint_every_steps: must be >= 0"),
        (0 <= cfg.train.seed < 2**32, "train.seed: must be in [0, 2**32)"),
        (cfg.model.width >= 1, "model.width: must be >= 1"),
        (
            len(cfg.model.projector_dims) >= 1 and min(cfg.model.projector_dims) >= 1,
            "model.projector_dims: must be a non-empty list of positive widths",
        ),
        (cfg.model.lambd >= 0, "model.lambd: must be >= 0"),
        (cfg.optim.lr_weights > 0 and cfg.optim.lr_biases >= 0, "optim.lr_weights must be > 0, optim.lr_biases >= 0"),
        (cfg.optim.warmup_epochs >= 0, "optim.warmup_epochs: must be >= 0"),
        (0 <= cfg.optim.momentum < 1, "optim.momentum: must be in [0, 1)"),
        (cfg.eval.k >= 1 and cfg.eval.temperature > 0, "eval.k must be >= 1 and eval.temperature > 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    try:
        thread_layout(cfg.train.cpu_threads, cores=1)
    except UserError as e:
        raise ConfigError(str(e)) from None
    family, _ = encoder_family(cfg.model.encoder)
    if family == "builtin" and cfg.model.encoder_args:
        raise ConfigError(
            f"model.encoder_args: built-in encoders take model.width and model.zero_init_residual, not "
            f"encoder_args (got {', '.join(cfg.model.encoder_args)})"
        )
    check_init_weights(family, cfg.model.init_weights)
    return cfg


# What to do about a bad source, per config key (appended to the error).
_SOURCE_HINTS = {
    "eval.train_source": "set eval.train_source and eval.test_source to labelled sources, or to null "
    "to skip the final kNN evaluation",
    "eval.test_source": "set eval.train_source and eval.test_source to labelled sources, or to null "
    "to skip the final kNN evaluation",
    "monitor.knn_train_source": "or set monitor.knn_every_epochs=0",
    "monitor.knn_val_source": "or set monitor.knn_every_epochs=0",
}


def source_keys(cfg: Config) -> list:
    """``(key, source, labelled)`` for every source a run of ``cfg`` will open, named by the key holding it.

    The kNN monitor's sources fall back to ``eval.*`` and ``data.val_source``
    (see :class:`MonitorConfig`); the key listed is the one whose value is used.

    Examples:

    >>> cfg = config_from_dict({"eval": {"train_source": "demo:train", "test_source": "demo:test"}})
    >>> [key for key, _, _ in source_keys(cfg)]
    ['data.source', 'eval.train_source', 'eval.test_source']
    """
    out = [("data.source", cfg.data.source, False)]
    if cfg.data.val_source:
        out.append(("data.val_source", cfg.data.val_source, True))
    if cfg.eval.train_source and cfg.eval.test_source:
        out += [("eval.train_source", cfg.eval.train_source, True), ("eval.test_source", cfg.eval.test_source, True)]
    m = cfg.monitor
    if m.knn_every_epochs > 0:
        bank = [("monitor.knn_train_source", m.knn_train_source), ("eval.train_source", cfg.eval.train_source)]
        val = [
            ("monitor.knn_val_source", m.knn_val_source),
            ("data.val_source", cfg.data.val_source),
            ("eval.test_source", cfg.eval.test_source),
        ]
        for candidates in (bank, val):
            key, source = next(((k, s) for k, s in candidates if s), (None, None))
            if key is not None and all(key != k for k, _, _ in out):
                out.append((key, source, True))
    return out


def check_source_names(cfg: Config) -> None:
    """What :func:`check_sources` can tell without TensorFlow (a source of no known kind, a local
    folder that does not exist), in its words, so that ``bt-train`` answers at once.

    >>> check_source_names(config_from_dict({"eval": {"train_source": "demo", "test_source": "fldr:x"}}))
    Traceback (most recent call last):
    ...
    bt_keras.errors.DataError: eval.test_source: cannot read 'fldr:x'; use demo[:train|test], ...
    """
    from bt_keras.data.source_names import source_error

    for key, source, _ in source_keys(cfg):
        message = source_error(source)
        if message is not None:
            hint = _SOURCE_HINTS.get(key)
            raise DataError(f"{key}: {message}" + (f"; {hint}" if hint else ""))


def check_sources(cfg: Config) -> None:
    """Opens every source of :func:`source_keys` (listing only, no decoding): a one-line error naming the key.

    Run before training, so that a wrong ``eval.test_source`` is reported at
    the start, not after the last epoch. Imports TensorFlow.

    Raises:
        DataError: ``KEY: SOURCE: what is wrong`` (missing path, no images, no
            labels where labels are needed), with what to do for ``eval.*``
            and ``monitor.*`` keys.

    Examples:

    >>> check_sources(config_from_dict({"data": {"source": "folder:/no/such/photos"}}))
    Traceback (most recent call last):
    ...
    bt_keras.errors.DataError: data.source: folder:/no/such/photos: no such directory (looked for /no/such/photos)
    """
    from bt_keras.data.prepare import open_source

    for key, source, labelled in source_keys(cfg):
        try:
            open_source(source, cfg.data.data_dir, key=key, labelled=labelled)
        except DataError as e:
            hint = _SOURCE_HINTS.get(key)
            raise DataError(f"{e}; {hint}" if hint else str(e)) from None


def config_from_dict(raw: dict | None, overrides=()) -> Config:
    """Builds a validated ``Config`` from a mapping plus ``key.sub=value`` overrides."""
    raw = copy.deepcopy(raw or {})  # overrides write into nested sections: never into the caller's mapping
    for override in overrides:
        _apply_override(raw, override)
    return _validate(_build(Config, raw))


def load_config(path: str, overrides=()) -> Config:
    """Reads a YAML config file (local or ``gs://``) and applies overrides."""
    try:
        raw = load_yaml(read_text(path), path)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return config_from_dict(raw, overrides)


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def config_to_yaml(cfg: Config) -> str:
    """The fully resolved config, as YAML that ``load_config`` reads back."""
    return yaml.safe_dump(_plain(dataclasses.asdict(cfg)), sort_keys=False)
