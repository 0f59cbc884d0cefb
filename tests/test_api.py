"""The public surface: every name users import today keeps working, and importing is cheap."""

import importlib
import subprocess
import sys

import pytest

import bt_keras

# Every public definition of the 0.1 modules, at the path it had (the redesign moved the code,
# not the names). CLI internals and names a module merely imported are not listed.
PUBLIC = {
    "bt_keras.augment": (
        "AugmentConfig AugmentConfigError BlurConfig ColorJitterConfig CropConfig FlipConfig GrayscaleConfig "
        "SolarizeConfig PRESETS PRESETS_NAMES RESIZE_METHODS apply_batch augment_pair augment_views "
        "blur_kernel_size crop_resize crop_resize_batch decode_crop_resize example_keys fold_key get_preset "
        "sample_params uniforms view_key"
    ),
    "bt_keras.callbacks": (
        "CorrelationImage KnnMonitor MONITOR_SUBDIR RepresentationHealth TimeBudget TrainingReport "
        "correlation_heatmap effective_rank monitor_callbacks plot_report probe_views read_history "
        "representation_health sample_labelled"
    ),
    "bt_keras.checkpointing": "CHECKPOINT_NAME TrainingGuard checkpoint_path restore_checkpoint save_checkpoint",
    "bt_keras.config": (
        "Config ConfigError DataConfig ENCODER_NAMES EvalConfig ModelConfig MonitorConfig OptimConfig "
        "TrainConfig config_from_dict config_to_yaml load_config"
    ),
    "bt_keras.data": (
        "DEMO_TRAIN_FRACTION DataConfig DataError IMAGE_EXTENSIONS SourceInfo VALIDATE_MODES count_examples "
        "eval_dataset load_demo source_info two_view_dataset write_tfrecords"
    ),
    "bt_keras.distribute": "STRATEGIES distribute make_strategy per_replica_batch_size",
    "bt_keras.encoders": "ENCODER_NAMES build_encoder resnet small_cnn",
    "bt_keras.evaluation": (
        "FrozenEncoder LINEAR_MODES LabelledImages PROTOCOLS augmented_labelled_dataset crop_flip_config "
        "evaluate extract_features find_saved_model format_table knn_accuracy knn_predict linear_probe "
        "linear_probe_sgd load_frozen_encoder"
    ),
    "bt_keras.export": (
        "DEFAULT_TOLERANCE ExportArgumentError ExportFailed ExportResult FORMATS INPUT_BYTES_KEY INPUT_FLOAT_KEY "
        "ONNX_OPSET OUTPUT_KEY PARITY_BATCHES REPORT_FILE VALUE_RANGE WARMUP_FILE default_crop_fraction "
        "export_encoder float32_encoder load_encoder make_contract parity_images prediction_log "
        "relative_difference weights_sha256 write_warmup_requests"
    ),
    "bt_keras.layers": "FusedBatchNormalization batch_norm",
    "bt_keras.losses": "BarlowTwinsTerms METHODS barlow_twins_loss barlow_twins_terms cross_correlation resolve_method",
    "bt_keras.model": "BarlowTwins build_projector",
    "bt_keras.optimizers": "LARS WarmupCosine",
    "bt_keras.preprocess": (
        "CIFAR10_MEAN CIFAR10_STD IMAGENET_MEAN IMAGENET_STD PreprocessingContract center_crop_resize decode_rgb "
        "normalize preprocess_for_eval"
    ),
    "bt_keras.cli": "ArgumentParser UserError run_command",
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_importable_from_their_old_path(module):
    mod = importlib.import_module(module)
    missing = [name for name in PUBLIC[module].split() if not hasattr(mod, name)]
    assert not missing, f"{module} lost {missing}"


def test_package_root_exports_everything_it_lists():
    missing = [name for name in bt_keras.__all__ if getattr(bt_keras, name, None) is None]
    assert not missing
    assert bt_keras.BarlowTwins is importlib.import_module("bt_keras.model").BarlowTwins
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        bt_keras.nonexistent  # noqa: B018


# What the README and docs/api.md call the public API: each reachable from the package root.
ROOT_NAMES = (
    "BarlowTwins LARS WarmupCosine two_view_dataset eval_dataset resnet small_cnn build_encoder build_backbone "
    "save_portable_encoder load_frozen_encoder export_encoder evaluate knn_accuracy linear_probe JaxDataParallel "
    "EmbeddingSet embed_source nearest_neighbors duplicate_pairs write_projector shuffle_pixels pixel_permutation"
)


def test_the_documented_names_are_importable_from_the_root():
    missing = [name for name in ROOT_NAMES.split() if name not in bt_keras.__all__ or not hasattr(bt_keras, name)]
    assert not missing


@pytest.mark.parametrize("package", ["bt_keras", *sorted(PUBLIC)])
def test_no_private_names_in_public_namespaces(package):
    mod = importlib.import_module(package)
    names = set(getattr(mod, "__all__", ()))
    if "__getattr__" in vars(mod):  # a lazy namespace lists its names in __dir__ (bt_keras._lazy)
        names |= set(dir(mod))
    private = sorted(n for n in names if n.startswith("_") and not n.startswith("__"))
    assert not private, f"{package} exports {private}"


def test_error_classes_are_one_hierarchy():
    from bt_keras import errors
    from bt_keras.augment import AugmentConfigError
    from bt_keras.config import ConfigError
    from bt_keras.data import DataError
    from bt_keras.export import ExportArgumentError

    assert (ConfigError, DataError, AugmentConfigError, ExportArgumentError) == (
        errors.ConfigError,
        errors.DataError,
        errors.AugmentConfigError,
        errors.ExportArgumentError,
    )
    assert all(issubclass(c, errors.UserError) for c in (ConfigError, DataError, AugmentConfigError))


@pytest.mark.parametrize(
    "module",
    [
        "bt_keras",
        "bt_keras.config",
        "bt_keras.contract",
        "bt_keras.io",
        "bt_keras.export",
        "bt_keras.evaluation",
        "bt_keras.cli.train",
        "bt_keras.cli.eval",
        "bt_keras.cli.export",
        "bt_keras.cli.data",
        "bt_keras.cli.embed",
        "bt_keras.cli.data_service",
        "bt_keras.cli.search",
        "bt_keras.beam",
        "bt_keras.embed",
        "bt_keras.embed.index",
        "bt_keras.embed.shards",
    ],
)
def test_importing_does_not_load_tensorflow(module):
    """Config checks and --help answer without paying for TensorFlow."""
    code = f"import sys, {module}; assert not {{'tensorflow', 'keras', 'faiss', 'apache_beam'}} & set(sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
