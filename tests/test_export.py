"""Export to SavedModel (TF Serving) and ONNX (ONNX Runtime): round trips, CLI, safety.

One small encoder, trained for a few Barlow Twins steps, is exported once per
module through the real ``bt-export --run`` path; the tests then check the
artifacts with the tools that serve them: ``tf.saved_model.load`` in a process
that never imports bt_keras, ``saved_model_cli show/run`` (TF Serving's
SignatureDef path), onnx.checker and ONNX Runtime.
"""

import base64
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import onnx
import onnxruntime
import pytest
import tensorflow as tf

import bt_keras
from bt_keras import export, preprocess
from bt_keras.cli import export as export_cli

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
TOL = 1e-4
SAVED_MODEL_CLI = Path(sys.executable).with_name("saved_model_cli")


def _env(with_repo: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    if with_repo:
        env["PYTHONPATH"] = str(REPO)
    return env


def _rel(got, want) -> float:
    return export.relative_difference(got, want)[0]


def _images(count: int, seed: int = 123) -> list:
    """Encoded test images unlike the gate's own: odd sizes, JPEG 4:2:0 and PNG."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        h, w = 30 + 7 * i, 45 + 3 * i
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], -1)
        pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
        encode = tf.io.encode_jpeg if i % 2 == 0 else tf.io.encode_png
        out.append(encode(pixels).numpy())
    return out


def _trained_encoder(**kwargs):
    encoder = bt_keras.encoders.small_cnn(widths=(8, 16), input_shape=(None, None, 3), **kwargs)
    model = bt_keras.BarlowTwins(encoder, projector_dims=(32, 32, 32))
    model.compile(optimizer=bt_keras.LARS(learning_rate=0.1))
    x = np.random.default_rng(0).random((32, SIZE, SIZE, 3), dtype=np.float32)
    pairs = tf.data.Dataset.from_tensor_slices((x, x[::-1])).batch(16, drop_remainder=True)
    model.fit(pairs, epochs=2, verbose=0)
    return encoder


def _write_run(run: Path, encoder, contract) -> Path:
    run.mkdir(parents=True)
    encoder.save(run / "encoder.keras")
    (run / "preprocessing.json").write_text(contract.to_json())
    return run


def _leftovers(out: Path) -> list:
    return sorted(p.name for p in out.parent.glob(f".{out.name}.bt-export-*"))


@pytest.fixture(scope="module")
def ex(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    encoder = _trained_encoder()
    contract = preprocess.PreprocessingContract(SIZE, preprocess.CIFAR10_MEAN, preprocess.CIFAR10_STD, 1.0)
    run = _write_run(root / "run", encoder, contract)
    out = root / "out"
    assert export_cli.main(["--run", str(run), "--out", str(out)]) == 0
    images = _images(7)
    pixels = np.stack(
        [preprocess.preprocess_for_eval(tf.constant(b), SIZE, contract.mean, contract.std, 1.0).numpy() for b in images]
    )
    ref = encoder(pixels, training=False).numpy()
    np.save(root / "pixels7.npy", pixels)
    np.save(root / "bytes7.npy", np.array(images, dtype=object), allow_pickle=True)
    return SimpleNamespace(
        root=root,
        run=run,
        out=out,
        encoder=encoder,
        contract=contract,
        images=images,
        pixels=pixels,
        ref=ref,
        sm=out / "saved_model" / "encoder" / "1",
        onnx=out / "onnx" / "encoder.onnx",
    )


def test_layout_and_report(ex):
    assert (ex.sm / "saved_model.pb").is_file()
    assert (ex.sm / "assets.extra" / "tf_serving_warmup_requests").is_file()
    assert ex.onnx.is_file()
    assert sorted(p.name for p in ex.out.iterdir()) == ["export_report.json", "onnx", "saved_model"]
    assert sorted(p.name for p in ex.sm.parent.iterdir()) == ["1", "batching_parameters.txt"]
    assert _leftovers(ex.out) == []
    report = json.loads((ex.out / "export_report.json").read_text())
    parity = report["parity"]
    assert parity["passed"] and parity["tolerance"] == TOL
    targets = {(c["target"], c["batch"]) for c in parity["checks"]}
    assert targets == {
        (t, b) for t in ("saved_model:serve_float", "saved_model:serving_default", "onnxruntime") for b in (1, 7)
    }
    for check in parity["checks"]:
        assert check["max_rel_diff"] <= TOL and check["output_shape"] == [check["batch"], 16]
    for key in ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "bt_keras", "python"):
        assert report["versions"][key]
    assert report["embedding_dim"] == 16
    assert report["preprocessing"]["mean"] == list(preprocess.CIFAR10_MEAN)
    assert report["source"]["weights_sha256"] == export.weights_sha256(ex.encoder)
    assert report["source"]["run_dir"] == str(ex.run.absolute())
    assert report["artifacts"]["saved_model"]["batching_parameters"] == "saved_model/encoder/batching_parameters.txt"
    sig = report["artifacts"]["saved_model"]["signatures"]
    assert sig["serving_default"]["inputs"] == {"image_bytes": {"dtype": "string", "shape": [None]}}
    assert sig["serve_float"]["inputs"] == {"images": {"dtype": "float32", "shape": [None, SIZE, SIZE, 3]}}
    assert sig["serve_float"]["outputs"] == {"embedding": {"dtype": "float32", "shape": [None, 16]}}


_CLEAN_PROCESS = r"""
import sys, numpy as np, tensorflow as tf, onnxruntime
sm, onnx_path, root = sys.argv[1:4]
model = tf.saved_model.load(sm)
pixels = np.load(root + "/pixels7.npy")
encoded = list(np.load(root + "/bytes7.npy", allow_pickle=True))
results = {}
session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
for n in (1, 7):
    results[f"float{n}"] = model.signatures["serve_float"](images=tf.constant(pixels[:n]))["embedding"].numpy()
    serve_bytes = model.signatures["serving_default"]
    results[f"bytes{n}"] = serve_bytes(image_bytes=tf.constant(encoded[:n]))["embedding"].numpy()
    results[f"onnx{n}"] = session.run(["embedding"], {"images": pixels[:n]})[0]
assert "bt_keras" not in sys.modules, "bt_keras was imported"
np.savez(root + "/clean.npz", **results)
"""


@pytest.mark.slow
def test_round_trip_in_a_process_without_bt_keras(ex):
    script = ex.root / "clean.py"
    script.write_text(_CLEAN_PROCESS)
    proc = subprocess.run(
        [sys.executable, str(script), str(ex.sm), str(ex.onnx), str(ex.root)],
        cwd=ex.root,
        env=_env(with_repo=False),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(ex.root / "clean.npz")
    for n in (1, 7):
        for kind in ("float", "bytes", "onnx"):
            out = got[f"{kind}{n}"]
            assert out.shape == (n, 16) and out.dtype == np.float32
            assert _rel(out, ex.ref[:n]) <= TOL, (kind, n, _rel(out, ex.ref[:n]))
    # The signatures are not the same numbers by accident: different images, different embeddings.
    assert _rel(got["float7"][1:], got["float7"][:-1]) > 1e-2


def _saved_model_cli(*args) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(SAVED_MODEL_CLI), *args], env=_env(with_repo=False), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_saved_model_cli_show_lists_both_signatures(ex):
    text = _saved_model_cli("show", "--all", "--dir", str(ex.sm)).stdout
    default = text[text.index("signature_def['serving_default']") :]
    serve_float = text[text.index("signature_def['serve_float']") :]
    default = default[: default.index("Method name")]
    serve_float = serve_float[: serve_float.index("Method name")]
    assert "inputs['image_bytes']" in default and "DT_STRING" in default and "shape: (-1)" in default
    assert "outputs['embedding']" in default and "shape: (-1, 16)" in default
    assert "inputs['images']" in serve_float and f"shape: (-1, {SIZE}, {SIZE}, 3)" in serve_float
    assert "outputs['embedding']" in serve_float and "DT_FLOAT" in serve_float


@pytest.mark.parametrize(
    "signature,key,inputs",
    [
        ("serve_float", "images", "pixels7.npy"),
        ("serving_default", "image_bytes", "bytes7.npy"),
    ],
)
@pytest.mark.slow
def test_saved_model_cli_run_reproduces_embeddings(ex, signature, key, inputs):
    outdir = ex.root / f"cli_{signature}"
    _saved_model_cli(
        "run",
        "--dir",
        str(ex.sm),
        "--tag_set",
        "serve",
        "--signature_def",
        signature,
        "--inputs",
        f"{key}={ex.root / inputs}",
        "--outdir",
        str(outdir),
    )
    got = np.load(outdir / "embedding.npy")
    assert got.shape == (7, 16)
    assert _rel(got, ex.ref) <= TOL


def test_onnx_graph_contract(ex):
    model = onnx.load(str(ex.onnx))
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "images" and out.name == "embedding"
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", SIZE, SIZE, 3]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch", 16]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    meta = {p.key: p.value for p in model.metadata_props}
    assert int(meta["image_size"]) == SIZE
    assert json.loads(meta["mean"]) == list(preprocess.CIFAR10_MEAN)
    assert json.loads(meta["std"]) == list(preprocess.CIFAR10_STD)
    assert float(meta["crop_fraction"]) == 1.0
    assert meta["layout"] == "NHWC" and "[0, 1]" in meta["value_range"]
    assert int(meta["embedding_dim"]) == 16
    assert meta["bt_keras_version"] == bt_keras.__version__
    assert meta["source_weights_sha256"] == export.weights_sha256(ex.encoder)
    assert preprocess.PreprocessingContract.from_json(meta["preprocessing"]) == ex.contract
    session = onnxruntime.InferenceSession(str(ex.onnx), providers=["CPUExecutionProvider"])
    for n in (1, 7):
        assert _rel(session.run(None, {"images": ex.pixels[:n]})[0], ex.ref[:n]) <= TOL


@pytest.mark.parametrize("bad", ["garbage", "empty", "truncated_jpeg", "truncated_png", "one_bad_in_batch"])
def test_corrupt_bytes_are_an_error_not_an_embedding(ex, bad):
    good_jpeg, good_png = ex.images[0], ex.images[1]
    batch = {
        "garbage": [b"this is not an image"],
        "empty": [b""],
        "truncated_jpeg": [good_jpeg[: int(len(good_jpeg) * 0.9)]],
        "truncated_png": [good_png[: int(len(good_png) * 0.9)]],
        "one_bad_in_batch": [good_jpeg, b"\xff\xd8\xff\xe0 broken", good_png],
    }[bad]
    serve = tf.saved_model.load(str(ex.sm)).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError):
        serve(image_bytes=tf.constant(batch))


def _pb_fields(buf: bytes) -> list:
    """Minimal protobuf wire-format reader (varint and length-delimited fields only)."""

    def varint(i):
        shift = value = 0
        while True:
            byte = buf[i]
            value |= (byte & 0x7F) << shift
            i += 1
            if not byte & 0x80:
                return value, i
            shift += 7

    fields, i = [], 0
    while i < len(buf):
        key, i = varint(i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = varint(i)
        elif wire == 2:
            n, i = varint(i)
            value, i = buf[i : i + n], i + n
        else:
            raise AssertionError(f"unexpected wire type {wire}")
        fields.append((number, value))
    return fields


def test_warmup_requests_parse_and_run(ex):
    records = [r.numpy() for r in tf.data.TFRecordDataset(str(ex.sm / "assets.extra" / "tf_serving_warmup_requests"))]
    loaded = tf.saved_model.load(str(ex.sm))
    seen = set()
    for record in records:
        # PredictionLog.predict_log = 6 -> PredictLog.request = 1 -> PredictRequest{model_spec = 1, inputs = 2}
        ((number, predict_log),) = _pb_fields(record)
        assert number == 6
        ((number, request),) = _pb_fields(predict_log)
        assert number == 1
        spec = dict(f for f in _pb_fields(request) if f[0] == 1)[1]
        spec = dict(_pb_fields(spec))
        assert spec[1] == b"encoder"
        signature = spec[3].decode()
        inputs = {}
        for number, entry in _pb_fields(request):
            if number == 2:
                entry = dict(_pb_fields(entry))
                inputs[entry[1].decode()] = tf.make_ndarray(tf.make_tensor_proto(0).FromString(entry[2]))
        out = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})["embedding"]
        assert out.shape == (1, 16)
        seen.add(signature)
        from tensorflow_serving.apis import prediction_log_pb2  # the official definitions (the dev extra)

        log = prediction_log_pb2.PredictionLog.FromString(record)
        assert log.WhichOneof("log_type") == "predict_log"
        assert log.predict_log.request.model_spec.signature_name == signature
        assert set(log.predict_log.request.inputs) == set(inputs)
    assert seen == {"serving_default", "serve_float"}


def _fail_lines(capsys) -> list:
    err = capsys.readouterr().err
    return [line for line in err.splitlines() if line.strip()]


def test_refuses_to_overwrite_without_flag(ex, capsys):
    before = (ex.out / "export_report.json").read_bytes()
    assert export_cli.main(["--run", str(ex.run), "--out", str(ex.out)]) == 2
    (line,) = _fail_lines(capsys)
    assert line.startswith("bt-export: error:") and "--overwrite" in line
    assert (ex.out / "export_report.json").read_bytes() == before
    assert _leftovers(ex.out) == []


def test_overwrite_replaces_what_it_writes_and_keeps_the_rest(ex, tmp_path, capsys):
    out = tmp_path / "out"
    export.export_encoder(ex.encoder, out, SIZE, formats=("saved_model",), crop_fraction=1.0)
    assert (out / "saved_model").is_dir()
    # --encoder picks up the preprocessing.json next to the file (CIFAR statistics here).
    argv = ["--encoder", str(ex.run / "encoder.keras"), "--out", str(out), "--formats", "onnx", "--overwrite"]
    assert export_cli.main(argv) == 0
    # The SavedModel version it did not write stays (tests/test_guarantees.py: versions side by side).
    assert sorted(p.name for p in out.iterdir()) == ["export_report.json", "onnx", "saved_model"]
    report = json.loads((out / "export_report.json").read_text())
    assert report["formats"] == ["onnx"] and report["preprocessing"]["mean"] == list(preprocess.CIFAR10_MEAN)
    assert _leftovers(out) == []


@pytest.mark.parametrize(
    "case",
    [
        "missing_run",
        "run_without_encoder",
        "wrong_image_size_run",
        "wrong_image_size_encoder",
        "unknown_format",
        "encoder_without_image_size",
        "bad_version",
        "bad_name",
        "foreign_out_dir",
        "not_a_keras_file",
    ],
)
def test_bad_arguments_are_one_line_exit_2(ex, tmp_path, capsys, case):
    out = tmp_path / "out"
    static = tmp_path / "static" / "enc.keras"
    if case == "wrong_image_size_encoder":
        static.parent.mkdir()
        bt_keras.encoders.small_cnn(widths=(4,), input_shape=(SIZE, SIZE, 3)).save(static)
    if case == "foreign_out_dir":
        out.mkdir()
        (out / "precious.txt").write_text("user data")
    if case == "not_a_keras_file":
        (tmp_path / "enc.keras").write_bytes(b"not a zip")
    (tmp_path / "empty_run").mkdir()
    argv = {
        "missing_run": ["--run", str(tmp_path / "nope")],
        "run_without_encoder": ["--run", str(tmp_path / "empty_run")],
        "wrong_image_size_run": ["--run", str(ex.run), "--image-size", "64"],
        "wrong_image_size_encoder": ["--encoder", str(static), "--image-size", "48"],
        "unknown_format": ["--run", str(ex.run), "--formats", "saved_model,tflite"],
        "encoder_without_image_size": ["--encoder", str(static.parent.parent / "x.keras")],
        "bad_version": ["--run", str(ex.run), "--version", "0"],
        "bad_name": ["--run", str(ex.run), "--name", "../evil"],
        "foreign_out_dir": ["--run", str(ex.run)],
        "not_a_keras_file": ["--encoder", str(tmp_path / "enc.keras"), "--image-size", "32"],
    }[case]
    if case == "encoder_without_image_size":
        ex.encoder.save(tmp_path / "x.keras")
    assert export_cli.main([*argv, "--out", str(out)]) == 2
    (line,) = _fail_lines(capsys)
    assert line.startswith("bt-export: error:") and "Traceback" not in line
    expected = {
        "missing_run": "does not exist",
        "run_without_encoder": "encoder.keras",
        "wrong_image_size_run": "wrong image size",
        "wrong_image_size_encoder": "wrong image size",
        "unknown_format": "unknown format tflite",
        "encoder_without_image_size": "--image-size",
        "bad_version": "--version",
        "bad_name": "--name",
        "foreign_out_dir": "not a bt-export output",
        "not_a_keras_file": "cannot load",
    }[case]
    assert expected in line, line
    if case == "foreign_out_dir":
        assert (out / "precious.txt").read_text() == "user data"
    else:
        assert not out.exists()
    assert _leftovers(out) == []


@pytest.mark.slow
def test_cli_process_exit_code_and_single_error_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bt_keras.cli.export", "--run", str(tmp_path / "missing"), "--out", str(tmp_path / "o")],
        env=_env(with_repo=True),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("bt-export: error: run directory")
    assert not (tmp_path / "o").exists()


def _start_export(run: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bt_keras.cli.export", "--run", str(run), "--out", str(out)],
        env=_env(with_repo=True),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _freeze_mid_export(proc: subprocess.Popen, out: Path, timeout: float = 120.0) -> None:
    """Stops ``proc`` (SIGSTOP) once its temporary holds a SavedModel, and checks it had not published yet.

    A stopped process cannot finish in the meantime, so whatever signal the test sends next lands
    mid-export, whatever the machine's speed; the check after freezing says so, rather than a sleep
    hoping the export stays busy.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list(out.parent.glob(f".{out.name}.bt-export-tmp-{proc.pid}-*/saved_model")):
            proc.send_signal(signal.SIGSTOP)
            assert not out.exists(), "the export published before it could be frozen"
            return
        if proc.poll() is not None:
            pytest.fail(f"export ended before it could be interrupted: {proc.stderr.read()[-2000:]}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail("the export never created its temporary directory")


@pytest.mark.slow
def test_interrupted_export_leaves_nothing(tmp_path):
    encoder = bt_keras.encoders.resnet(18, stem="cifar", width=8, input_shape=(None, None, 3))
    run = _write_run(tmp_path / "run", encoder, export.make_contract(SIZE))
    out = tmp_path / "exports" / "enc"

    proc = _start_export(run, out)
    _freeze_mid_export(proc, out)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "bt-export: interrupted"
    assert not out.exists() and _leftovers(out) == []

    # SIGKILL cannot be cleaned up after, but the next export removes the dead writer's temporary.
    proc = _start_export(run, out)
    _freeze_mid_export(proc, out)
    proc.kill()
    proc.communicate(timeout=60)
    assert not out.exists() and len(_leftovers(out)) == 1
    export.export_encoder(bt_keras.encoders.small_cnn(widths=(4,)), out, SIZE, formats=("onnx",))
    assert (out / "onnx" / "encoder.onnx").is_file() and _leftovers(out) == []


def test_a_stop_request_whose_interrupt_was_swallowed_still_publishes_nothing(tmp_path):
    """bt-export's SIGTERM handler raises KeyboardInterrupt, but Python may run it inside a
    ``__del__`` or a bare ``except:`` (TensorFlow has one while it saves) that swallows it; the
    handler's flag then stops the export at the publish step (seen once under CI load)."""
    from bt_keras.export.publish import STOP_REQUESTED

    out = tmp_path / "out"
    STOP_REQUESTED.set()  # the handler ran; its exception is gone
    try:
        with pytest.raises(KeyboardInterrupt):
            export.export_encoder(bt_keras.encoders.small_cnn(widths=(4,)), out, SIZE, formats=("onnx",))
    finally:
        STOP_REQUESTED.clear()
    assert not out.exists() and _leftovers(out) == []
    export.export_encoder(bt_keras.encoders.small_cnn(widths=(4,)), out, SIZE, formats=("onnx",))
    assert (out / "onnx" / "encoder.onnx").is_file()


def test_parity_gate_rejects_a_wrong_conversion(tmp_path):
    # tf2onnx converts "area" resizing without error but into different numbers.
    inputs = keras.Input((SIZE, SIZE, 3), name="images")
    x = keras.layers.Lambda(lambda t: tf.image.resize(t, [13, 13], method="area"))(inputs)
    x = keras.layers.Conv2D(8, 3)(x)
    encoder = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    out = tmp_path / "out"
    with pytest.raises(export.ExportFailed, match=r"parity gate failed.*onnxruntime"):
        export.export_encoder(encoder, out, SIZE)
    assert not out.exists() and _leftovers(out) == []


def test_unconvertible_op_fails_cleanly(tmp_path):
    inputs = keras.Input((SIZE, SIZE, 3), name="images")
    x = keras.layers.Resizing(13, 13, antialias=True)(inputs)  # ScaleAndTranslate: no ONNX equivalent
    encoder = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(x)))
    out = tmp_path / "out"
    with pytest.raises(export.ExportFailed, match="ONNX checker"):
        export.export_encoder(encoder, out, SIZE)
    assert not out.exists() and _leftovers(out) == []


def test_mixed_precision_encoder_is_exported_in_float32(tmp_path):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        encoder = bt_keras.encoders.small_cnn(widths=(8, 16), input_shape=(SIZE, SIZE, 3))
    finally:
        keras.config.set_dtype_policy(previous)
    encoder.save(tmp_path / "mixed.keras")
    result = export.export_encoder(str(tmp_path / "mixed.keras"), tmp_path / "out", SIZE)
    source = result.report["source"]
    assert source["dtype_policies"] == ["mixed_bfloat16"] and source["rebuilt_in_float32"]
    assert result.report["parity"]["passed"]
    assert result.report["parity"]["source_precision"]["max_rel_diff"] < 0.05
    model = onnx.load(str(result.onnx_path))
    reduced = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    assert not [t.name for t in model.graph.initializer if t.data_type in reduced]
    assert not [v.name for v in model.graph.value_info if v.type.tensor_type.elem_type in reduced]
    assert not [
        n.name
        for n in model.graph.node
        if n.op_type == "Cast" and any(a.name == "to" and a.i in reduced for a in n.attribute)
    ]
    signatures = result.report["artifacts"]["saved_model"]["signatures"]
    assert signatures["serving_default"]["outputs"]["embedding"]["dtype"] == "float32"
    assert encoder.layers[1].compute_dtype == "bfloat16"  # the source is left alone


def test_pretraining_model_and_augmentation_are_refused(tmp_path):
    encoder = bt_keras.encoders.small_cnn(widths=(4,), input_shape=(SIZE, SIZE, 3))
    with pytest.raises(export.ExportArgumentError, match="export its .encoder"):
        export.export_encoder(bt_keras.BarlowTwins(encoder, projector_dims=(8, 8)), tmp_path / "a", SIZE)
    inputs = keras.Input((SIZE, SIZE, 3))
    augmented = keras.Model(inputs, encoder(keras.layers.RandomFlip()(inputs)))
    with pytest.raises(export.ExportArgumentError, match="augmentation"):
        export.export_encoder(augmented, tmp_path / "b", SIZE)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# --------------------------------------------------------------------------- serving kit


def _kit(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "export" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_onnx_client_applies_the_contract_from_metadata(ex, tmp_path):
    client = _kit("onnx_client")
    encoder = client.OnnxEncoder(str(ex.onnx))
    assert encoder.image_size == SIZE and encoder.crop_fraction == 1.0
    got = encoder.embed_bytes(ex.images)
    assert _rel(got, ex.ref) <= TOL
    paths = []
    for i, b in enumerate(ex.images[:2]):
        paths.append(tmp_path / f"img{i}")
        paths[-1].write_bytes(b)
    assert client.main([str(ex.onnx), *map(str, paths), "--out", str(tmp_path / "e.npy")]) == 0
    assert _rel(np.load(tmp_path / "e.npy"), ex.ref[:2]) <= TOL


class _FakeTFServing(BaseHTTPRequestHandler):
    """TF Serving's REST predict API (row format, b64 strings) on loopback, backed by the
    exported SavedModel: no TF Serving binary can be installed on this machine."""

    model = None

    def do_POST(self):
        if self.path not in ("/v1/models/encoder:predict", "/v1/models/encoder/versions/1:predict"):
            return self._reply(404, {"error": f"Servable not found for request: {self.path}"})
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        signature = self.model.signatures[body.get("signature_name", "serving_default")]
        images = [base64.b64decode(i["b64"]) for i in body["instances"]]
        try:
            out = signature(image_bytes=tf.constant(images))["embedding"].numpy()
        except tf.errors.InvalidArgumentError as e:
            return self._reply(400, {"error": e.message.splitlines()[0]})
        self._reply(200, {"predictions": out.tolist()})

    def _reply(self, code, payload):
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_tfserving_rest_client_and_example_request(ex):
    client = _kit("tfserving_client")
    example = json.loads((REPO / "export" / "requests" / "predict_bytes.json").read_text())
    assert example["signature_name"] == "serving_default"
    assert tf.io.decode_image(base64.b64decode(example["instances"][0]["b64"])).shape[-1] == 3
    _FakeTFServing.model = tf.saved_model.load(str(ex.sm))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeTFServing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        got = np.array(client.embed_bytes(ex.images, url=url, model="encoder", version=1), np.float32)
        assert _rel(got, ex.ref) <= TOL
        assert len(client.predict(example, url, "encoder")[0]) == 16
        with pytest.raises(RuntimeError, match="HTTP 400"):
            client.embed_bytes([b"not an image"], url=url)
    finally:
        server.shutdown()
        server.server_close()


def test_model_config_file_names_the_export_layout():
    text = (REPO / "export" / "models.config").read_text()
    assert 'name: "encoder"' in text and 'base_path: "/models/encoder"' in text
    assert 'model_platform: "tensorflow"' in text
