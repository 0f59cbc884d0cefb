"""Encoders from the Keras ecosystem, pretrained starts and the LiteRT export.

Each family (``keras.applications``, a KerasHub ViT from a preset directory
written here, a user's ``.keras`` file) trains two steps through ``bt-train``,
is evaluated by ``bt-eval`` and exported by ``bt-export`` behind the parity
gate, all in this process (the CLIs' ``main``) on a 16-image folder at 32 px.
Nothing is downloaded: ImageNet weights are only asked for behind a proxy
that refuses every connection.
"""

from __future__ import annotations

import importlib.util
import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from bt_keras.config import ENCODER_NAMES, KERAS_APPLICATIONS, ConfigError, config_from_dict

HAS_KERAS_HUB = importlib.util.find_spec("keras_hub") is not None
HAS_LITERT = importlib.util.find_spec("ai_edge_litert") is not None
SIZE = 32
TINY = ["--set", "model.projector_dims=[32,32]", "--set", "train.batch_size=8", "--set", "train.epochs=1"]
QUIET = [a for k in ("health", "correlation_image", "report") for a in ("--set", f"monitor.{k}=false")]


@pytest.fixture(autouse=True)
def _float32_policy():
    """bt-train sets the global dtype policy of the process: restore it for the next test."""
    yield
    import keras

    keras.config.set_dtype_policy("float32")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """16 labelled 32-px PNGs in two classes: two training steps at batch 8."""
    import tensorflow as tf

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir()
        for i in range(8):
            coarse = rng.uniform(0, 255, (4, 4, 3)).astype(np.float32) + (60 if label == "a" else -60)
            image = tf.image.resize(np.clip(coarse, 0, 255)[None], [SIZE, SIZE])[0].numpy().astype(np.uint8)
            (root / label / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())
    return root


@pytest.fixture(scope="module")
def config_file(tmp_path_factory, folder) -> Path:
    path = tmp_path_factory.mktemp("config") / "run.yaml"
    path.write_text(
        f"data:\n  source: folder:{folder}\n  image_size: {SIZE}\n  validate: quick\n"
        f"eval:\n  train_source: folder:{folder}\n  test_source: folder:{folder}\n  k: 3\n"
        "  compare_random_init: false\n"
        "optim:\n  name: adamw\n  lr_weights: 0.001\n  warmup_epochs: 0\n"
    )
    return path


def _cli(main, args, capsys) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as e:  # bt-train exits with its code
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def _train(config_file, run, capsys, *sets):
    from bt_keras.cli.train import main

    args = ["--config", str(config_file), "--run-dir", str(run), *TINY, *QUIET]
    for s in sets:
        args += ["--set", s]
    return _cli(main, args, capsys)


# --- the config: TF-free checks, one line naming the key -------------------------------------------


def test_the_applications_list_is_keras_own():
    import keras

    assert set(KERAS_APPLICATIONS) == {n for n in dir(keras.applications) if n[0].isupper()}


@pytest.mark.parametrize(
    "model,message",
    [
        ({"encoder": "keras.applications.ConvNextTiny"}, "no model 'ConvNextTiny'; did you mean ConvNeXtTiny?"),
        ({"encoder": "vit"}, "model.encoder: unknown encoder 'vit'; choose one of small_cnn"),
        ({"encoder": "file:/no/such/model.keras"}, "model.encoder: file:/no/such/model.keras: no such file"),
        ({"encoder": "file:model.h5"}, "model.encoder: file:model.h5: expected a .keras model file"),
        ({"encoder": "keras_hub:/no/such/dir"}, "keras_hub:/no/such/dir: no KerasHub preset there"),
        ({"encoder": "keras_hub:"}, "model.encoder: keras_hub: needs a preset name"),
        ({"encoder": "small_cnn", "init_weights": "imagenet"}, "model.init_weights: imagenet: no published weights"),
        ({"encoder": "small_cnn", "init_weights": "w.npz"}, "model.init_weights: 'w.npz': expected imagenet, none"),
        ({"encoder": "small_cnn", "init_weights": "/no/w.weights.h5"}, "model.init_weights: /no/w.weights.h5: no such"),
        ({"encoder": "small_cnn", "init_weights": "/x/w.h5"}, "a legacy .h5 file loads into keras.applications"),
        ({"encoder": "small_cnn", "encoder_args": {"alpha": 1}}, "model.encoder_args: built-in encoders take"),
        ({"encoder": "keras.applications.VGG16", "encoder_args": [1]}, "model.encoder_args: expected dict"),
    ],
)
def test_bad_encoder_settings_are_one_line_naming_the_key(model, message):
    with pytest.raises(ConfigError) as e:
        config_from_dict({"model": model})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_every_family_parses():
    for name in (*ENCODER_NAMES, "keras.applications.EfficientNetV2B0", "keras_hub:vit_base_patch16_224_imagenet"):
        assert config_from_dict({"model": {"encoder": name}}).model.encoder == name


# --- each family: bt-train 2 steps, bt-eval, bt-export with parity ---------------------------------


def _vit_preset(path: Path) -> Path:
    import keras_hub

    vit = keras_hub.models.ViTBackbone(
        image_shape=(SIZE, SIZE, 3), patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32
    )
    vit.save_to_preset(str(path))
    return path


def _user_model(path: Path) -> Path:
    """A user's functional model (depthwise conv, BN, exact GELU, LayerNorm) ending in a feature map."""
    import keras

    images = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(images)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="gelu")(x)
    x = keras.layers.LayerNormalization()(x)
    keras.Model(images, x).save(path)
    return path


FAMILIES = {
    # name: (model.encoder from a temporary directory, extra --set values)
    "applications": (lambda tmp: "keras.applications.MobileNetV3Small", ["model.encoder_args={minimalistic: true}"]),
    "keras_hub_vit": (lambda tmp: f"keras_hub:{_vit_preset(tmp / 'vit')}", []),
    "keras_file": (lambda tmp: f"file:{_user_model(tmp / 'mine.keras')}", ["train.mixed_precision=mixed_bfloat16"]),
}
# The ViT's and the file's exact GELU is TF's Erfc (converted as 1 - Erf), the ViT's position ids a
# captured tensor (frozen into a constant): both used to stop the ONNX conversion.
FORMATS = {"applications": "onnx", "keras_hub_vit": "saved_model,onnx,litert", "keras_file": "saved_model,onnx"}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_trains_evaluates_and_exports(family, tmp_path, config_file, folder, capsys):
    if family == "keras_hub_vit" and not HAS_KERAS_HUB:
        pytest.skip("KerasHub is not installed (pip install 'bt_keras[keras_hub]')")
    if "litert" in FORMATS[family] and not HAS_LITERT:
        pytest.skip("ai-edge-litert is not installed (pip install 'bt_keras[litert]')")
    from bt_keras.cli.eval import main as bt_eval
    from bt_keras.cli.export import main as bt_export

    make, sets = FAMILIES[family]
    encoder = make(tmp_path)
    run = tmp_path / "run"
    code, out, err = _train(config_file, run, capsys, f"model.encoder={encoder}", *sets)
    assert code == 0, err[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and np.isfinite(summary["knn_trained"]["top1"])
    expected_source = "file" if family == "keras_file" else "random"
    assert summary["init_weights"]["source"] == expected_source
    assert f"encoder {encoder}; initial weights:" in out

    code, out, err = _cli(
        bt_eval,
        ["--run", str(run), "--train-data", f"folder:{folder}", "--test-data", f"folder:{folder}"]
        + ["--protocol", "knn", "--k", "3"],
        capsys,
    )
    assert code == 0, err[-2000:]
    assert (run / "eval_report.json").exists()

    export_args = ["--run", str(run), "--out", str(tmp_path / "export"), "--formats", FORMATS[family]]
    code, out, err = _cli(bt_export, export_args, capsys)
    assert code == 0, err[-2000:]
    report = json.loads((tmp_path / "export" / "export_report.json").read_text())
    assert report["parity"]["passed"] and report["parity"]["worst"]["max_rel_diff"] <= 1e-4
    targets = {"saved_model": "saved_model", "onnx": "onnxruntime", "litert": "litert"}
    assert {c["target"].split(":")[0] for c in report["parity"]["checks"]} == {
        targets[f] for f in FORMATS[family].split(",")
    }


# --- where the first weights come from -------------------------------------------------------------


def test_pretrained_start_from_a_weights_file_is_the_files_weights(tmp_path):
    from bt_keras.backbones import describe_init
    from bt_keras.training import build_model

    raw = {"model": {"encoder": "small_cnn", "width": 4, "projector_dims": [16, 16]}}
    source = build_model(config_from_dict(raw), SIZE).encoder
    source.set_weights([w + 0.5 for w in source.get_weights()])  # unlike any random start
    source.save_weights(tmp_path / "pretrained.weights.h5")
    source.save(tmp_path / "pretrained.keras")
    for path in ("pretrained.weights.h5", "pretrained.keras"):
        cfg = config_from_dict(raw, overrides=[f"model.init_weights={tmp_path / path}"])
        encoder = build_model(cfg, SIZE).encoder
        for got, want in zip(encoder.get_weights(), source.get_weights(), strict=True):
            np.testing.assert_array_equal(got, want)
        recorded = describe_init(cfg.model)
        assert recorded["source"] == "file" and recorded["file"] == str(tmp_path / path)
        assert len(recorded["file_sha256"]) == 64
    random_start = build_model(config_from_dict(raw), SIZE).encoder
    assert not np.array_equal(random_start.get_weights()[0], source.get_weights()[0])


def test_a_weights_file_of_another_architecture_is_one_line(tmp_path):
    from bt_keras.encoders import build_encoder, small_cnn
    from bt_keras.errors import UserError

    small_cnn(widths=(4,), input_shape=(SIZE, SIZE, 3)).save_weights(tmp_path / "other.weights.h5")
    with pytest.raises(UserError, match=r"does not fit model.encoder small_cnn") as e:
        build_encoder("small_cnn", (SIZE, SIZE, 3), widths=(8, 16), init_weights=str(tmp_path / "other.weights.h5"))
    assert "\n" not in str(e.value)


def test_imagenet_weights_offline_are_one_line(monkeypatch, capsys, recwarn):
    """A proxy that refuses every connection: the download fails as it does offline."""
    from keras.src.backend.config import keras_home  # where Keras caches downloads (read at import)

    from bt_keras.backbones import build_backbone
    from bt_keras.errors import UserError

    if list(Path(keras_home(), "models").glob("*mobilenet_v3_small*no_top*")):
        pytest.skip("the ImageNet weights are cached on this machine: nothing would be downloaded")
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    # urlopen caches its opener, proxies included, on first use: restore it so later tests connect directly.
    monkeypatch.setattr(urllib.request, "_opener", None)
    with pytest.raises(UserError) as e:
        build_backbone("keras.applications.MobileNetV3Small", SIZE, init_weights="imagenet")
    message = str(e.value)
    assert message.startswith("model.init_weights: imagenet: cannot get the ImageNet weights of MobileNetV3Small")
    assert "model.init_weights to a local weights file" in message and "\n" not in message
    assert "Downloading" not in capsys.readouterr().out  # Keras' own line would come before ours
    # Nor MobileNet's warning that the weights were trained at 224 px (a multi-line Python warning).
    assert not [w for w in recwarn if "input_shape" in str(w.message)], [str(w.message) for w in recwarn]


@pytest.mark.skipif(not HAS_KERAS_HUB, reason="KerasHub is not installed")
def test_a_fixed_input_size_is_checked_against_data_image_size(tmp_path):
    from bt_keras.backbones import build_backbone
    from bt_keras.errors import UserError

    preset = _vit_preset(tmp_path / "vit")
    with pytest.raises(UserError) as e:
        build_backbone(f"keras_hub:{preset}", 64)
    assert str(e.value) == (
        f"model.encoder keras_hub:{preset} takes 32x32 images but data.image_size is 64; set data.image_size: 32"
    )
    vit = build_backbone(f"keras_hub:{preset}", SIZE)
    assert vit.output_shape == (None, 16)
    assert vit.layers[-1].name == "class_token"  # the ViT's own pooling: its class token


# --- export: LiteRT, and the image size of a .keras file ---------------------------------------------


@pytest.mark.slow  # a LiteRT conversion: seconds
@pytest.mark.skipif(not HAS_LITERT, reason="ai-edge-litert is not installed (pip install 'bt_keras[litert]')")
def test_litert_export_matches_keras_within_1e_4(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from bt_keras.encoders import resnet
    from bt_keras.export import export_encoder
    from bt_keras.export.litert_export import read_metadata

    encoder = resnet(18, stem="cifar", width=4, input_shape=(SIZE, SIZE, 3))
    result = export_encoder(encoder, tmp_path / "out", SIZE, formats=("litert",))
    checks = [c for c in result.report["parity"]["checks"] if c["target"] == "litert"]
    assert [c["batch"] for c in checks] == [1, 7] and all(c["max_rel_diff"] <= 1e-4 for c in checks)
    # The same inputs through the interpreter here: within 1e-4 of Keras, element by element.
    pixels = np.random.default_rng(0).normal(size=(5, SIZE, SIZE, 3)).astype(np.float32)
    runner = Interpreter(model_path=str(result.litert_path)).get_signature_runner("serve_float")
    got = runner(images=pixels)["embedding"]
    np.testing.assert_allclose(got, encoder(pixels, training=False).numpy(), atol=1e-4, rtol=0)
    # The contract travels in the model and beside it.
    sidecar = json.loads(result.litert_path.with_suffix(".preprocessing.json").read_text())
    assert read_metadata(result.litert_path) == sidecar
    assert sidecar["preprocessing"]["image_size"] == SIZE and sidecar["layout"] == "NHWC"
    assert result.report["artifacts"]["litert"]["preprocessing"] == "litert/encoder.preprocessing.json"


def test_bt_export_takes_the_image_size_from_a_static_input(tmp_path, capsys):
    from bt_keras.cli.export import main as bt_export
    from bt_keras.encoders import small_cnn

    for name, shape in (("static", (24, 24, 3)), ("dynamic", (None, None, 3))):
        (tmp_path / name).mkdir()
        small_cnn(widths=(4,), input_shape=shape).save(tmp_path / name / "enc.keras")
    args = ["--encoder", str(tmp_path / "static/enc.keras"), "--out", str(tmp_path / "e"), "--formats", "onnx"]
    code, out, err = _cli(bt_export, args, capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "e/export_report.json").read_text())["preprocessing"]["image_size"] == 24
    args = ["--encoder", str(tmp_path / "dynamic/enc.keras"), "--out", str(tmp_path / "f")]
    code, out, err = _cli(bt_export, args, capsys)
    assert code == 2 and "pass --image-size" in err and len(err.strip().splitlines()) == 1
