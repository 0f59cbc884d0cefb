"""docs/guarantees.md, "Runs, checkpoints and outputs": each promise there, tested on real files and processes.

Config refusals run ``bt-train``'s own ``main`` in this process (they stop
before any TensorFlow work); checkpoints, the lock and ``history.csv`` use the
real classes on a tiny model; the full disk is a real file-size limit
(``RLIMIT_FSIZE``); Ctrl-C, the second process and the non-finite loss are
real ``bt-train`` processes and real signals (one test, three processes).
"""

import contextlib
import csv
import hashlib
import io
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

import bt_keras
from bt_keras import checkpointing
from bt_keras.callbacks.health import representation_health
from bt_keras.callbacks.history import HistoryCSV
from bt_keras.cli import export as export_cli
from bt_keras.cli import train as train_cli
from bt_keras.config import config_from_dict
from bt_keras.errors import (
    CheckpointUnreadable,
    ConfigError,
    ExportArgumentError,
    RunLocked,
    TrainingStopped,
    UserError,
)
from bt_keras.export.publish import publish, staging_directory
from bt_keras.frozen import load_frozen_encoder
from bt_keras.io import atomic_write
from bt_keras.run_lock import RunDirectoryLock
from bt_keras.saving import load_encoder

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.yaml")
TINY = [
    "--set",
    "model.width=4",
    "--set",
    "model.projector_dims=[32,32]",
    "--set",
    "train.batch_size=64",
    "--set",
    "train.verbose=0",
    "--set",
    "eval.train_source=null",
    "--set",
    "monitor.report=false",
]


def _train_main(argv, capsys):
    """``bt-train``'s exit code and its stderr lines."""
    with pytest.raises(SystemExit) as stop:
        train_cli.main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return stop.value.code, err


# ---- configs: refused in one line, exit 2, nothing unbounded in the message


def _write(path: Path, data) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


@pytest.mark.parametrize(
    "case, expected",
    [
        ("alias_bomb", "uses a YAML alias"),
        ("directory", "is a directory"),
        ("not_utf8", "not UTF-8"),
        ("lr_1e400", "optim.lr_weights: expected a finite number"),
        ("warmup_inf", "optim.warmup_epochs: expected a finite number"),
        ("seed_negative", "train.seed: must be in [0, 2**32)"),
        ("set_not_utf8", "argument --set is not valid UTF-8"),
        ("run_dir_not_utf8", "argument --run-dir is not valid UTF-8"),
        ("huge_value", "model.width: expected int"),
    ],
)
def test_bad_configs_are_one_bounded_line_exit_2(tmp_path, capsys, case, expected):
    laughs = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    for i in range(1, 9):  # 9**9 ≈ 387 million strings once expanded, from a few hundred bytes
        laughs += f"{chr(97 + i)}: &{chr(97 + i)} [{', '.join([f'*{chr(96 + i)}'] * 9)}]\n"
    config = {
        "alias_bomb": lambda: _write(tmp_path / "bomb.yaml", laughs + "model:\n  projector_dims: *i\n"),
        "directory": lambda: tmp_path,
        "not_utf8": lambda: _write(tmp_path / "latin1.yaml", "train:\n  run_dir: caf\xe9\n".encode("latin-1")),
    }.get(case, lambda: DEMO)()
    extra = {
        "lr_1e400": ["--set", "optim.lr_weights=1e400"],
        "warmup_inf": ["--set", "optim.warmup_epochs=.inf"],
        "seed_negative": ["--set", "train.seed=-1"],
        "set_not_utf8": ["--set", "train.run_dir=" + os.fsdecode(b"runs/\xff")],
        "run_dir_not_utf8": ["--run-dir", os.fsdecode(str(tmp_path).encode() + b"/\xfe")],
        "huge_value": ["--set", "model.width=[" + ",".join(["1"] * 5000) + "]"],
    }.get(case, [])
    code, err = _train_main(["--config", str(config), *extra], capsys)
    assert code == 2 and len(err) == 1, err
    (line,) = err
    assert line.startswith("bt-train: error:") and expected in line, line
    assert len(line) < 400, len(line)  # the value is quoted cut short, never whole
    assert not (tmp_path / "runs").exists()


def test_error_messages_quote_values_cut_short():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"model": {"projector_dims": [list(range(1000))] * 1000}})
    assert len(str(e.value)) < 300


# ---- names and versions: a full match, int64


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--name", "enc\n"], "--name must match"),
        (["--name", "enc\t2"], "--name must match"),
        (["--version", str(2**63)], "argument --version"),
    ],
)
def test_export_names_and_versions_are_checked_whole(tmp_path, capsys, flags, expected):
    code = export_cli.main(["--encoder", str(tmp_path / "enc.keras"), "--out", str(tmp_path / "out"), *flags])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "out").exists()


# ---- .keras archives: the zip directory is checked before Keras reads a byte


def test_keras_archive_guard_refuses_bombs_and_non_zips(tmp_path, capsys):
    bomb = tmp_path / "bomb.keras"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("metadata.json", "{}")
        z.writestr("config.json", b" " * (65 * 2**20))  # 65 MiB of spaces: about 64 KB compressed
    assert bomb.stat().st_size < 2**20
    not_zip = _write(tmp_path / "text.keras", "not a zip")
    for path, expected in ((bomb, "'config.json' is 68157440 bytes uncompressed"), (not_zip, "not a zip file")):
        with pytest.raises(ExportArgumentError, match=expected):
            load_encoder(path)
        with pytest.raises(UserError, match=expected):  # bt-eval's loader goes through the same guard
            load_frozen_encoder(encoder=str(path), image_size=32)
    code = export_cli.main(["--encoder", str(bomb), "--image-size", "32", "--out", str(tmp_path / "out")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "refusing to read it" in err[0], err


# ---- exports: --overwrite replaces this version and ONNX file only; readable by other users


def _stage(out: Path, name: str, version: int, text: str):
    """A finished export of ``name``/``version`` in a staging directory, published with ``overwrite``."""
    with staging_directory(out) as tmp:
        (tmp / "saved_model" / name / str(version)).mkdir(parents=True)
        (tmp / "saved_model" / name / str(version) / "saved_model.pb").write_text(text)
        (tmp / "onnx").mkdir()
        (tmp / "onnx" / f"{name}.onnx").write_text(text)
        atomic_write(tmp / "export_report.json", json.dumps({"version": version, "text": text}))
        entries = [f"saved_model/{name}/{version}", f"onnx/{name}.onnx", "export_report.json"]
        publish(tmp, out, overwrite=True, entries=entries)


def test_overwrite_replaces_only_the_version_being_written(tmp_path):
    out = tmp_path / "exports"
    old_umask = os.umask(0o022)
    try:
        _stage(out, "encoder", 1, "v1")
    finally:
        os.umask(old_umask)
    assert out.stat().st_mode & 0o777 == 0o755  # not mkdtemp's 0700: a server running as another user reads it
    assert (out / "export_report.json").stat().st_mode & 0o777 == 0o644
    _stage(out, "other", 1, "other")
    (out / "NOTES.txt").write_text("the user's own file")
    _stage(out, "encoder", 2, "v2")
    _stage(out, "encoder", 2, "v2 again")
    files = {str(p.relative_to(out)): p.read_text() for p in out.rglob("*") if p.is_file()}
    assert files == {
        "saved_model/encoder/1/saved_model.pb": "v1",  # TF Serving keeps serving it beside version 2
        "saved_model/encoder/2/saved_model.pb": "v2 again",
        "saved_model/other/1/saved_model.pb": "other",
        "onnx/encoder.onnx": "v2 again",
        "onnx/other.onnx": "other",
        "NOTES.txt": "the user's own file",
        "export_report.json": json.dumps({"version": 2, "text": "v2 again"}),
    }
    assert sorted(os.listdir(tmp_path)) == ["exports"]  # no staging or moved-aside leftovers


@contextlib.contextmanager
def _file_size_limit(limit: int):
    """Files of this process may not grow past ``limit`` bytes inside the block (EFBIG, as on a full disk)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_full_disk_during_export_is_one_line_and_keeps_the_previous_export(tmp_path, capsys):
    encoder = tmp_path / "enc.keras"
    bt_keras.encoders.small_cnn(widths=(4,), input_shape=(16, 16, 3)).save(encoder)
    out = tmp_path / "exports"
    _stage(out, "encoder", 1, "v1")
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    argv = ["--encoder", str(encoder), "--image-size", "16", "--out", str(out), "--version", "2", "--overwrite"]
    with _file_size_limit(20_000):
        code = export_cli.main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 1 and len(err) == 1 and err[0].startswith("bt-export: "), err
    assert "File too large" in err[0] and "Traceback" not in err[0]
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert sorted(os.listdir(tmp_path)) == ["enc.keras", "exports"]  # the staging directory is gone


# ---- the run directory's lock


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_run_directory_lock_refuses_a_live_holder_and_takes_over_a_stale_one(tmp_path):
    run = tmp_path / "run"
    with RunDirectoryLock(run):
        with pytest.raises(RunLocked, match=f"in use by process {os.getpid()} on {socket.gethostname()}"):
            RunDirectoryLock(run).acquire()
    assert os.listdir(run) == []
    (run / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid()}))
    with RunDirectoryLock(run) as lock:  # its holder is dead on this host: stale, taken over
        assert lock.holder()["pid"] == os.getpid()
    (run / ".lock").write_text(json.dumps({"host": "elsewhere.example", "pid": 1}))
    with pytest.raises(RunLocked, match="process 1 on elsewhere.example.*if that process is gone, remove"):
        RunDirectoryLock(run).acquire()
    a_file = _write(tmp_path / "a_file", "x")
    with pytest.raises(UserError, match="exists and is not a directory"):
        RunDirectoryLock(a_file).acquire()
    with pytest.raises(UserError, match="cannot create the run directory"):
        RunDirectoryLock(a_file / "run").acquire()


def test_run_dir_errors_and_unreachable_sources_stop_before_anything_is_written(tmp_path, capsys):
    a_file = _write(tmp_path / "a_file", "precious")
    code, err = _train_main(["--config", DEMO, "--run-dir", str(a_file), *TINY], capsys)
    assert code == 2 and len(err) == 1 and "exists and is not a directory" in err[0], err
    assert a_file.read_text() == "precious"
    run = tmp_path / "run"
    argv = ["--config", DEMO, "--run-dir", str(run), *TINY, "--set", "eval.train_source=demo:train"]
    code, err = _train_main([*argv, "--set", f"eval.test_source=folder:{tmp_path / 'gone'}"], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("bt-train: error: eval.test_source:"), err
    assert not run.exists()


# ---- checkpoints: fingerprint, damage, full disk, signals


def _tiny_model(projector=(8, 8), optimizer="adam"):
    keras.utils.set_random_seed(0)
    enc = bt_keras.encoders.small_cnn(widths=(4,), input_shape=(8, 8, 3))
    model = bt_keras.BarlowTwins(enc, projector_dims=projector)
    model.build((None, 8, 8, 3))
    model.compile(optimizer=optimizer)
    return model


def _settings(projector, optimizer="adam"):
    return {"model.projector_dims": list(projector), "optim.name": optimizer}


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A checkpoint of the tiny model with its fingerprint, and the model."""
    path = tmp_path_factory.mktemp("ckpt") / "checkpoints" / checkpointing.CHECKPOINT_NAME
    model = _tiny_model()
    assert checkpointing.restore_checkpoint(model, str(path), _settings((8, 8))) == 0  # builds the optimizer
    fingerprint = checkpointing.state_fingerprint(model, _settings((8, 8)))
    checkpointing.save_checkpoint(model, str(path), fingerprint)
    return path, model, fingerprint


@pytest.mark.parametrize(
    "projector, optimizer, expected",
    [
        ((16, 8), "adam", "model.projector_dims is [8, 8] in the checkpoint, [16, 8] now"),
        ((8, 8), "sgd", "optim.name is 'adam' in the checkpoint, 'sgd' now"),
    ],
)
def test_resuming_another_model_or_optimizer_is_refused(saved, projector, optimizer, expected):
    path, _, _ = saved
    before = _sha(path)
    with pytest.raises(UserError) as e:
        checkpointing.restore_checkpoint(_tiny_model(projector, optimizer), str(path), _settings(projector, optimizer))
    message = str(e.value)
    assert expected in message and "start fresh with another --run-dir" in message and "\n" not in message
    assert _sha(path) == before
    assert checkpointing.restore_checkpoint(_tiny_model(), str(path), _settings((8, 8))) == 0  # same model: resumes


def test_a_checkpoint_without_fingerprint_of_another_optimizer_is_refused(saved, tmp_path):
    _, model, _ = saved
    legacy = tmp_path / "checkpoints" / checkpointing.CHECKPOINT_NAME
    checkpointing.save_checkpoint(model, str(legacy))  # as bt_keras wrote it before fingerprints
    with pytest.raises(UserError, match="holds another optimizer's state .*use the checkpoint's optim.name"):
        checkpointing.restore_checkpoint(_tiny_model(optimizer="sgd"), str(legacy))


def test_damaged_checkpoint_is_one_line_and_left_in_place(saved, tmp_path):
    path, _, _ = saved
    for name, data in (("truncated", path.read_bytes()[:5000]), ("garbage", b"\0" * 100)):
        damaged = tmp_path / name / checkpointing.CHECKPOINT_NAME
        damaged.parent.mkdir()
        damaged.write_bytes(data)
        with pytest.raises(CheckpointUnreadable, match="cannot be read .*left as it is: move it away") as e:
            checkpointing.restore_checkpoint(_tiny_model(), str(damaged), _settings((8, 8)))
        assert "\n" not in str(e.value) and damaged.read_bytes() == data


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(saved):
    path, model, fingerprint = saved
    before = _sha(path)
    guard = checkpointing.TrainingGuard(str(path), fingerprint=fingerprint)
    guard.set_model(model)
    with _file_size_limit(path.stat().st_size // 2):
        with pytest.raises(TrainingStopped, match="cannot write the checkpoint .*File too large.*previous checkpoint"):
            guard._save()
    assert _sha(path) == before and os.listdir(path.parent) == [path.name]


def test_sigint_is_handled_like_sigterm_and_a_second_one_stops_at_once():
    guard = checkpointing.TrainingGuard("/unused", write=False)
    before = signal.getsignal(signal.SIGINT)
    guard.on_train_begin()
    os.kill(os.getpid(), signal.SIGINT)
    assert guard.preempted and guard.signal_name == "SIGINT"
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before  # the handlers went back


# ---- history.csv: one row per epoch across reruns


def test_history_keeps_one_row_per_epoch_when_an_epoch_is_rerun(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.zeros((4, 2)), np.zeros((4, 1))
    path = tmp_path / "history.csv"
    model.fit(x, y, epochs=2, verbose=0, callbacks=[HistoryCSV(str(path), append=True)])  # epoch 1 cut short...
    model.fit(x, y, initial_epoch=1, epochs=3, verbose=0, callbacks=[HistoryCSV(str(path), append=True)])  # ...rerun
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]


def test_health_indicators_of_a_diverged_batch_are_nan_not_an_error():
    stats = representation_health(np.full((8, 4), np.nan), np.full((8, 4), np.inf))
    assert np.isnan(stats["effective_rank"])


# ---- real processes: Ctrl-C, a second bt-train, a non-finite loss under default settings


def _cmd(run_dir, *extra):
    return [sys.executable, "-m", "bt_keras.cli.train", "--config", DEMO, "--run-dir", str(run_dir), *TINY, *extra]


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")


def _history_epochs(run):
    return [r["epoch"] for r in csv.DictReader(open(run / "history.csv"))]


@pytest.mark.slow
def test_ctrl_c_checkpoints_a_second_run_is_refused_and_nan_is_one_line(tmp_path):
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / checkpointing.CHECKPOINT_NAME
    first = subprocess.Popen(
        _cmd(run, "--set", "train.epochs=100", "--set", "train.checkpoint_every_steps=4"),  # stopped long before
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=ROOT,
    )
    try:
        deadline = time.time() + 300
        while not ckpt.exists():
            assert first.poll() is None and time.time() < deadline, first.communicate()[1][-3000:]
            time.sleep(0.05)
        second = subprocess.run(_cmd(run), capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=300)
        assert first.poll() is None  # still training: the refusal came from its lock
        first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert f"bt-train: error: run directory {run} is in use by process {first.pid}" in second.stderr
    assert first.returncode == 130 and "Traceback" not in err, err[-3000:]
    marker = "SIGINT received: checkpoint written at step "
    assert marker in out, out + err[-2000:]
    step = int(out.split(marker)[1].split(";")[0])
    assert not (run / ".lock").exists()

    # A diverging rerun: resumes at the Ctrl-C step, stops with the documented line (health monitor on),
    # leaves the checkpoint as it was; an orphaned temporary of a killed writer is gone.
    orphan = ckpt.parent / f".{ckpt.name}.abcd1234.tmp.weights.h5"
    orphan.write_bytes(b"half a checkpoint")
    config_before, ckpt_before = (run / "config.yaml").read_text(), _sha(ckpt)
    rerun = subprocess.run(
        _cmd(run, "--set", "train.epochs=100", "--set", "optim.lr_weights=1e30"),
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
        timeout=300,
    )
    assert f"resuming from step {step} " in rerun.stdout, rerun.stdout
    errors = [line for line in rerun.stderr.splitlines() if line.strip()]
    assert rerun.returncode == 1 and len(errors) == 1, rerun.stderr[-3000:]
    # The loss, or (where an epoch's end fell right after the overflowing update) the weights checked
    # before its checkpoint: either way nothing diverged is written.
    assert errors[0].startswith(
        ("bt-train: error: loss is not finite at step ", "bt-train: error: weights are not finite after step ")
    ), errors
    assert _sha(ckpt) == ckpt_before and not orphan.exists()
    assert (run / "config.yaml").read_text() != config_before  # it started: the record says with what
    epochs = _history_epochs(run)
    assert len(epochs) == len(set(epochs)), epochs  # the cut epoch's row was replaced, not repeated
