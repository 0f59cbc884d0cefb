"""The ``data:`` section of a run configuration, and the one way from it to a dataset.

:class:`DataConfig` is validated when built (no TensorFlow import here, so a
YAML typo is reported before TensorFlow loads) and is the only mapping from
the settings to datasets: :meth:`DataConfig.train_dataset`,
:meth:`DataConfig.eval_dataset`, :meth:`DataConfig.contract`,
:meth:`DataConfig.count` and :meth:`DataConfig.info` pass every setting, so
callers never unpack fields by hand.

Examples:

>>> from bt_keras.data.config import DataConfig
>>> cfg = DataConfig(source="demo:test", image_size=32, augment="imagenet")
>>> cfg.mean == cfg.contract().mean, cfg.contract().crop_fraction
(True, 1.0)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bt_keras.augment.config import AugmentConfig
from bt_keras.contract import MAX_IMAGE_PIXELS
from bt_keras.data.checks import VALIDATE_MODES, check_positive, check_validate
from bt_keras.data.service import ServiceConfig
from bt_keras.errors import DataError

__all__ = ["VALIDATE_MODES", "DataConfig", "check_positive"]


@dataclass(frozen=True)
class DataConfig:
    """The ``data:`` section of a run configuration (frozen: validated once, when built).

    Args:
        source: where the images come from (see :mod:`bt_keras.data`).
        data_dir: TensorFlow Datasets directory for ``tfds:`` sources.
        image_size: side of the square training views and evaluation images.
        augment: an :class:`~bt_keras.augment.AugmentConfig` or a preset name.
        shuffle_buffer: shuffle buffer of record streams (TFRecord/TFDS);
            in-memory data and folders get a full permutation each epoch.
        cache: None decodes once and keeps images in memory when the estimate
            fits in ``cache_max_mb`` (and half the free RAM); True/False force it.
        cache_max_mb: the in-memory budget.
        validate: ``full`` decodes every image before training to list the
            bad ones exactly; ``quick`` checks size, format signature and end
            markers without decoding; ``off`` relies on skipping at training
            time (logged); ``auto`` is ``full`` when cached, ``quick`` for
            uncached folders, ``off`` for uncached TFRecord/TFDS sources.
        seed: the training views' seed.
        val_source: labelled source of :meth:`eval_dataset` by default.
        crop_fraction: evaluation centre crop; None takes
            :func:`~bt_keras.contract.default_crop_fraction` of ``image_size``.
        deterministic: False lets parallel stages deliver examples out of
            order (faster); the views of an example are the same either way.
        max_image_pixels: images with more pixels (height × width, read from
            the header before decoding) are skipped and reported as too large
            (default 100 MP): a decompression bomb costs no memory.
        service: a :class:`~bt_keras.data.service.ServiceConfig` (or its
            mapping): compute the training views on tf.data service workers.

    Examples:

    >>> cfg = DataConfig(source="demo", image_size=32)
    >>> ds = cfg.train_dataset(batch_size=32)
    >>> ds.element_spec[0].shape
    TensorShape([32, 32, 32, 3])
    """

    source: str = "demo"
    data_dir: str | None = None
    image_size: int = 32
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    shuffle_buffer: int = 10_000
    cache: bool | None = None
    cache_max_mb: int = 2048
    validate: str = "auto"
    seed: int = 0
    val_source: str | None = None
    crop_fraction: float | None = None
    deterministic: bool = False
    max_image_pixels: int = MAX_IMAGE_PIXELS
    service: ServiceConfig = field(default_factory=ServiceConfig)

    def __post_init__(self):
        if isinstance(self.augment, str):
            object.__setattr__(self, "augment", AugmentConfig(preset=self.augment))
        if isinstance(self.service, dict):
            object.__setattr__(self, "service", ServiceConfig(**self.service))
        check_positive("data.image_size", self.image_size)
        check_positive("data.shuffle_buffer", self.shuffle_buffer)
        check_positive("data.cache_max_mb", self.cache_max_mb)
        check_positive("data.max_image_pixels", self.max_image_pixels)
        if self.max_image_pixels > 2**63 - 1:  # compared in int64 in the graph
            raise DataError(f"data.max_image_pixels: must be at most 2**63-1, got {self.max_image_pixels}")
        check_validate(self.validate)
        crop = self.crop_fraction
        if crop is not None and (isinstance(crop, bool) or not isinstance(crop, (int, float)) or not 0 < crop <= 1):
            raise DataError(f"data.crop_fraction: must be in (0, 1], got {crop!r}")
        if not isinstance(self.source, str) or not self.source:
            raise DataError(f"data.source: expected a source string, got {self.source!r}")

    @property
    def mean(self) -> tuple:
        """RGB mean of the normalisation (the resolved augmentation's)."""
        return self.augment.mean

    @property
    def std(self) -> tuple:
        """RGB standard deviation of the normalisation (the resolved augmentation's)."""
        return self.augment.std

    def contract(self):
        """The :class:`~bt_keras.contract.PreprocessingContract` of encoders trained on this data.

        >>> DataConfig(image_size=224, augment="imagenet").contract().crop_fraction
        0.875
        """
        from bt_keras.contract import make_contract

        shuffle = self.augment.pixel_shuffle  # the ablation's permutation applies to evaluation images too
        seed = shuffle.seed if shuffle.enabled else None
        return make_contract(self.image_size, self.mean, self.std, self.crop_fraction, pixel_shuffle_seed=seed)

    def train_dataset(
        self,
        batch_size: int,
        *,
        input_context=None,
        skipped_path=None,
        seed_offset: int = 0,
        source=None,
        repeat: bool = False,
    ):
        """:func:`~bt_keras.data.two_view_dataset` with every data setting.

        Args:
            batch_size: the global batch (per replica with ``input_context``).
            input_context: a ``tf.distribute.InputContext`` (this pipeline's shard).
            skipped_path: where to write the skipped files as TSV.
            seed_offset: added to ``seed`` (e.g. a probe batch distinct from training).
            source: instead of ``self.source``.
            repeat: endless, each pass a new epoch (on the service's workers when set).
        """
        from bt_keras.data.pipelines import two_view_dataset

        return two_view_dataset(
            self.source if source is None else source,
            batch_size=batch_size,
            image_size=self.image_size,
            augment=self.augment,
            seed=self.seed + seed_offset,
            data_dir=self.data_dir,
            input_context=input_context,
            skipped_path=skipped_path,
            shuffle_buffer=self.shuffle_buffer,
            cache=self.cache,
            cache_max_mb=self.cache_max_mb,
            validate=self.validate,
            deterministic=self.deterministic,
            max_image_pixels=self.max_image_pixels,
            service=self.service,
            repeat=repeat,
        )

    def eval_dataset(self, batch_size: int, *, source=None, input_context=None, skipped_path=None):
        """:func:`~bt_keras.data.eval_dataset` of ``source`` (default ``val_source``) with :meth:`contract`.

        Examples:

        >>> ds = DataConfig(val_source="demo:test", crop_fraction=1.0).eval_dataset(batch_size=400)
        >>> [int(y.shape[0]) for _, y in ds]
        [359]
        """
        from bt_keras.data.pipelines import eval_dataset

        source = self.val_source if source is None else source
        if source is None:
            raise DataError("data.val_source: no labelled evaluation source configured")
        contract = self.contract()
        return eval_dataset(
            source,
            batch_size=batch_size,
            **contract.eval_kwargs(),
            data_dir=self.data_dir,
            input_context=input_context,
            skipped_path=skipped_path,
            cache=self.cache,
            cache_max_mb=self.cache_max_mb,
            validate=self.validate,
            max_image_pixels=self.max_image_pixels,
        )

    def info(self, source=None):
        """:func:`~bt_keras.data.source_info` of ``source`` (default ``self.source``) with these settings."""
        from bt_keras.data.prepare import source_info

        return source_info(
            self.source if source is None else source,
            data_dir=self.data_dir,
            cache=self.cache,
            cache_max_mb=self.cache_max_mb,
            validate=self.validate,
            max_image_pixels=self.max_image_pixels,
        )

    def count(self, source=None) -> int:
        """Usable images in ``source`` (default ``self.source``): the trainer's steps per epoch.

        >>> DataConfig(source="demo").count()
        1438
        """
        return self.info(source).num_examples
