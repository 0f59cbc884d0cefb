"""``bt-export --quantize int8``: int8 ONNX and LiteRT models, published only when retrieval survives.

One small encoder, trained for a few Barlow Twins steps, is exported once per
module through the real ``bt-export`` command with ``--quantize int8``; the
tests then run the int8 files in the runtimes that serve them (ONNX Runtime
in a process without bt_keras or TensorFlow, the LiteRT interpreter) on the
offline digits (``demo:test``), and check that a broken calibration makes the
gate refuse without touching the float32 files.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import onnx
import pytest
import tensorflow as tf

import bt_keras
from bt_keras import export, preprocess
from bt_keras.cli import export as export_cli
from bt_keras.data.labelled import sample_labelled
from bt_keras.export.litert_export import litert_runner

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
COMMON = ["--formats", "onnx,litert", "--quantize", "int8", "--calibration-images", "64", "--gate-images", "240"]


def _trained_encoder(contract):
    """A small CNN after 24 Barlow Twins steps on digits (two noisy views, one mirrored): about 2 s."""
    keras.utils.set_random_seed(0)
    encoder = bt_keras.encoders.small_cnn(widths=(8, 16), input_shape=(None, None, 3))
    model = bt_keras.BarlowTwins(encoder, projector_dims=(32, 32, 32))
    model.compile(optimizer=bt_keras.LARS(learning_rate=0.1))
    x, _ = sample_labelled("demo:train", 256, contract, seed=0)
    rng = np.random.default_rng(0)
    views = [v + rng.normal(0, 0.3, x.shape).astype(np.float32) for v in (x, x[:, :, ::-1])]
    model.fit(tf.data.Dataset.from_tensor_slices(tuple(views)).batch(32, drop_remainder=True), epochs=3, verbose=0)
    return encoder


@pytest.fixture(scope="module")
def q(tmp_path_factory):
    root = tmp_path_factory.mktemp("quantize")
    contract = preprocess.PreprocessingContract(SIZE, preprocess.CIFAR10_MEAN, preprocess.CIFAR10_STD, 1.0)
    encoder = _trained_encoder(contract)
    run = root / "run"
    run.mkdir()
    encoder.save(run / "encoder.keras")
    (run / "preprocessing.json").write_text(contract.to_json())
    # The run's own data: config.yaml's data.source is the default calibration source.
    (run / "config.yaml").write_text("data:\n  source: demo:test\n")
    out = root / "out"
    code = export_cli.main(["--run", str(run), "--out", str(out), *COMMON])
    assert code == 0
    pixels, _ = sample_labelled("demo:test", 40, contract, seed=7)
    np.save(root / "pixels.npy", pixels)
    return SimpleNamespace(root=root, run=run, out=out, encoder=encoder, contract=contract, pixels=pixels)


def _cosines(a, b) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.slow  # uses the module's trained and quantised export (end to end)
def test_report_records_the_gate_next_to_parity(q):
    report = json.loads((q.out / "export_report.json").read_text())
    assert report["parity"]["passed"]
    gate = report["int8"]
    assert gate["calibration_images"] == 64 and gate["held_out_images"] == 240 and gate["labels"]
    assert gate["thresholds"] == export.layout.INT8_THRESHOLDS
    for target, path in (("onnxruntime", "onnx/encoder.int8.onnx"), ("litert", "litert/encoder.int8.tflite")):
        entry = gate["targets"][target]
        assert entry["published"] and entry["path"] == path and (q.out / path).is_file()
        assert entry["median_cosine"] >= 0.98 and entry["p5_cosine"] >= 0.95
        assert entry["neighbour_overlap"] >= 0.9 and entry["neighbours"] == 10
        assert entry["knn_top1_drop"] <= 0.02 and 0 <= entry["knn_top1_int8"] <= 1
        assert entry["bytes"] == (q.out / path).stat().st_size
    # The float32 files are the ones bt-export writes without --quantize.
    assert (q.out / "onnx" / "encoder.onnx").is_file() and (q.out / "litert" / "encoder.tflite").is_file()


_CLEAN_ONNX = r"""
import sys, numpy as np, onnxruntime
root, float_path, int8_path = sys.argv[1:4]
pixels = np.load(root + "/pixels.npy")
out = {}
for key, path in (("float32", float_path), ("int8", int8_path)):
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    out[key] = session.run(["embedding"], {"images": pixels})[0]
    out[key + "_one"] = session.run(["embedding"], {"images": pixels[:1]})[0]
    ops = sorted({n.op_type for n in __import__("onnx").load(path).graph.node})
    out[key + "_ops"] = np.array(ops)
meta = onnxruntime.InferenceSession(int8_path, providers=["CPUExecutionProvider"]).get_modelmeta()
out["meta"] = np.array(sorted(meta.custom_metadata_map.items()))
assert "bt_keras" not in sys.modules and "tensorflow" not in sys.modules
np.savez(root + "/clean_int8.npz", **out)
"""


@pytest.mark.slow  # uses the module's trained and quantised export (end to end)
def test_int8_onnx_runs_without_bt_keras_and_keeps_the_embeddings(q):
    script = q.root / "clean_int8.py"
    script.write_text(_CLEAN_ONNX)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    onnx_dir = q.out / "onnx"
    proc = subprocess.run(
        [sys.executable, str(script), str(q.root), str(onnx_dir / "encoder.onnx"), str(onnx_dir / "encoder.int8.onnx")],
        cwd=q.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(q.root / "clean_int8.npz")
    assert got["int8"].shape == got["float32"].shape == (40, 16) and got["int8"].dtype == np.float32
    assert np.median(_cosines(got["int8"], got["float32"])) >= 0.98
    assert not np.array_equal(got["int8"], got["float32"])  # it is not the float32 model under another name
    np.testing.assert_allclose(got["int8_one"][0], got["int8"][0], rtol=1e-5, atol=1e-5)  # batch 1 == row 0
    assert "QuantizeLinear" in got["int8_ops"] and "QuantizeLinear" not in got["float32_ops"]
    meta = dict(got["meta"])
    assert meta["precision"] == "int8" and json.loads(meta["preprocessing"])["image_size"] == SIZE
    assert meta["source_weights_sha256"] == export.weights_sha256(q.encoder)
    assert onnx.load(str(onnx_dir / "encoder.int8.onnx")).graph.input[0].name == "images"


@pytest.mark.slow  # uses the module's trained and quantised export (end to end)
def test_onnx_client_serves_the_int8_model_like_the_float32_one(q):
    import importlib.util

    spec = importlib.util.spec_from_file_location("onnx_client", REPO / "export" / "onnx_client.py")
    client = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(client)
    images = [tf.io.encode_png(np.asarray(x * 40 + 128, np.uint8)).numpy() for x in q.pixels[:5]]
    float_emb = client.OnnxEncoder(str(q.out / "onnx" / "encoder.onnx")).embed_bytes(images)
    int8_enc = client.OnnxEncoder(str(q.out / "onnx" / "encoder.int8.onnx"))
    assert int8_enc.metadata["precision"] == "int8"
    assert np.min(_cosines(int8_enc.embed_bytes(images), float_emb)) >= 0.95


def _tensor_types(path) -> list:
    from tensorflow.lite.tools import flatbuffer_utils

    return [t.type for sg in flatbuffer_utils.read_model(str(path)).subgraphs for t in sg.tensors]


@pytest.mark.slow  # uses the module's trained and quantised export (end to end)
def test_litert_int8_runs_in_the_interpreter(q):
    from ai_edge_litert.interpreter import Interpreter

    path = q.out / "litert" / "encoder.int8.tflite"
    # Full-integer inside (the network is the subgraph of serve_float's non-empty-batch branch);
    # float32 only at the edges. 9 is the flatbuffer's INT8 tensor type.
    int8_tensors = [_tensor_types(p).count(9) for p in (path, path.with_name("encoder.tflite"))]
    assert int8_tensors[0] >= 8 and int8_tensors[1] == 0, int8_tensors
    runner = Interpreter(model_path=str(path)).get_signature_runner("serve_float")
    got = runner(images=q.pixels)["embedding"]
    want = q.encoder(q.pixels, training=False).numpy()
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.median(_cosines(got, want)) >= 0.98
    sidecar = json.loads(path.with_suffix(".preprocessing.json").read_text())
    assert sidecar["precision"] == "int8" and sidecar["signature"] == "serve_float"
    float_run = litert_runner(q.out / "litert" / "encoder.tflite")
    assert path.stat().st_size < (q.out / "litert" / "encoder.tflite").stat().st_size
    assert np.median(_cosines(got, float_run(q.pixels))) >= 0.98


@pytest.mark.slow  # uses the module's trained and quantised export (end to end)
def test_constant_calibration_is_refused_and_the_float32_files_stay(q, capsys):
    import shutil

    # Constant images: every activation range collapses to a point, so the int8 model saturates.
    calib = q.root / "constant"
    (calib / "grey").mkdir(parents=True)
    for i in range(8):
        (calib / "grey" / f"{i}.png").write_bytes(tf.io.encode_png(np.full((40, 40, 3), 128, np.uint8)).numpy())
    # Into a copy of the accepted export (--overwrite): the earlier int8 files must go too, as they
    # belong to the float32 files this export replaces.
    out = q.root / "refused"
    shutil.copytree(q.out, out)
    argv = ["--run", str(q.run), "--out", str(out), *COMMON, "--calibration-source", f"folder:{calib}", "--overwrite"]
    assert export_cli.main([*argv, "--gate-source", "demo:test"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2, err  # one line per refused file
    for line, target in zip(err, ("onnxruntime", "litert")):
        assert line.startswith(f"bt-export: int8 {target} not published: ") and "(--int8-min-" in line
        assert "short by" in line and "Traceback" not in line
    assert sorted(p.name for p in (out / "onnx").iterdir()) == ["encoder.onnx"]
    assert sorted(p.name for p in (out / "litert").iterdir()) == ["encoder.preprocessing.json", "encoder.tflite"]
    report = json.loads((out / "export_report.json").read_text())
    assert report["parity"]["passed"]
    assert not any(t["published"] for t in report["int8"]["targets"].values())
    # The float32 files are the same model as the accepted export's.
    import onnxruntime

    got, want = (
        onnxruntime.InferenceSession(str(d / "onnx" / "encoder.onnx")).run(None, {"images": q.pixels})[0]
        for d in (out, q.out)
    )
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--int8-min-cosine", "1.5"], "--int8-min-cosine: expected a number in [0, 1]"),
        (["--formats", "saved_model"], "add onnx or litert to --formats"),
        (["--gate-images", "5"], "--gate-images must be an integer >= 22"),
        (["--calibration-source", "folder:/nonexistent/dir"], "--calibration-source: folder:/nonexistent/dir"),
    ],
)
@pytest.mark.slow  # uses the module's trained and quantised export (end to end)
def test_bad_int8_arguments_are_one_line_and_write_nothing(q, capsys, extra, message):
    out = q.root / "bad"
    argv = ["--run", str(q.run), "--out", str(out), "--quantize", "int8", "--calibration-images", "8", *extra]
    assert export_cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists() and not list(q.root.glob(".bad.bt-export-*"))


@pytest.mark.slow  # uses the module's trained and quantised export (end to end)
def test_encoder_without_a_run_needs_a_calibration_source(q, capsys):
    argv = ["--encoder", str(q.run / "encoder.keras"), "--out", str(q.root / "enc"), "--quantize", "int8"]
    assert export_cli.main(argv) == 2
    assert "pass --calibration-source" in capsys.readouterr().err


def _batching_parameters_class():
    """TF Serving's ``BatchingParameters`` (session_bundle_config.proto), the fields bt-export writes.

    tensorflow-serving-api does not ship this message; it is rebuilt with the same
    field names and types so that the text-format parser checks the file as the server would.
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(
        descriptor_pb2.FileDescriptorProto.FromString(wrappers_pb2.DESCRIPTOR.serialized_pb).SerializeToString()
    )
    f = descriptor_pb2.FileDescriptorProto(name="batching.proto", package="tensorflow.serving")
    f.dependency.append("google/protobuf/wrappers.proto")
    m = f.message_type.add(name="BatchingParameters")
    label, int64_value = descriptor_pb2.FieldDescriptorProto, ".google.protobuf.Int64Value"
    for number, name in enumerate(
        ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"), 1
    ):
        m.field.add(
            name=name, number=number, type=label.TYPE_MESSAGE, type_name=int64_value, label=label.LABEL_OPTIONAL
        )
    m.field.add(name="pad_variable_length_inputs", number=7, type=label.TYPE_BOOL, label=label.LABEL_OPTIONAL)
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


def test_batching_parameters_parse_as_tf_serving_reads_them(tmp_path):
    from google.protobuf import text_format

    from bt_keras.export.saved_model import write_batching_parameters

    path = write_batching_parameters(tmp_path, "encoder")
    text = path.read_text()
    params = text_format.Parse(text, _batching_parameters_class()())
    assert params.max_batch_size.value == 32 and params.batch_timeout_micros.value == 2000
    assert params.num_batch_threads.value == params.max_enqueued_batches.value == 2
    assert not params.pad_variable_length_inputs
    assert "--batching_parameters_file=/models/encoder/batching_parameters.txt" in text


def test_held_out_images_are_never_calibration_images():
    from bt_keras.export.quantize import Int8Settings, quantization_images

    # Every image a different flat grey: an image's mean names it after preprocessing.
    images = np.repeat(np.arange(0, 240, 4, dtype=np.uint8), 8 * 8 * 3).reshape(60, 8, 8, 3)
    labels = np.arange(60) % 3
    contract = preprocess.PreprocessingContract(8, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 1.0)
    settings = Int8Settings((images, labels), calibration_images=20, gate_images=30)
    calibration, gate, gate_labels = quantization_images(settings, contract)
    assert len(calibration) == 20 and len(gate) == 30
    calibration_ids = set(np.round(calibration.mean(axis=(1, 2, 3)) * 255).astype(int))
    gate_ids = np.round(gate.mean(axis=(1, 2, 3)) * 255).astype(int)
    assert not calibration_ids & set(gate_ids) and len(set(gate_ids)) == 30
    np.testing.assert_array_equal(gate_labels, (gate_ids // 4) % 3)  # each held-out image keeps its label
    # A source smaller than both counts is split in half, not left without calibration images.
    small = quantization_images(Int8Settings((images, labels), calibration_images=256, gate_images=256), contract)
    assert (len(small[0]), len(small[1])) == (30, 30)
