"""The tf.data service: views computed on workers are the local pipeline's, a lost worker, bad addresses.

The pipeline tests run a dispatcher and workers inside the test process (real
gRPC servers on 127.0.0.1) on a folder of 36 small JPEGs; the end-to-end test
starts ``bt-data-service`` dispatcher and two workers as processes, trains
with ``bt-train`` through them and kills one worker mid-run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, BATCH, SIZE = 36, 4, 16


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(N):
        (root / f"c{i % 2}").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)).save(root / f"c{i % 2}" / f"{i}.jpg")
    return root


def _servers(workers: int):
    """An in-process dispatcher and ``workers`` workers; returns (address, servers to keep alive)."""
    import tensorflow as tf

    svc = tf.data.experimental.service
    dispatcher = svc.DispatchServer(svc.DispatcherConfig(port=0))
    address = dispatcher.target.split("://")[1]
    kept = [dispatcher]
    for _ in range(workers):
        kept.append(svc.WorkerServer(svc.WorkerConfig(dispatcher_address=address, heartbeat_interval_ms=200)))
    return address, kept


def _config(folder, **service):
    from bt_keras.data.config import DataConfig

    return DataConfig(
        source=f"folder:{folder}", image_size=SIZE, augment="imagenet", cache=False, deterministic=True, seed=7,
        service=service,
    )  # fmt: skip


def _pairs(ds, batches):
    """The first ``batches`` batches as one array of pairs: ``[n, 2, SIZE, SIZE, 3]``."""
    out = [np.stack([a.numpy(), b.numpy()], axis=1) for a, b in ds.take(batches)]
    return np.concatenate(out)


def _match(got, want):
    """Index into ``want`` of each pair in ``got`` (the closest one, which must agree to float rounding)."""
    flat_got, flat_want = got.reshape(len(got), -1), want.reshape(len(want), -1)
    idx = []
    for g in flat_got:
        d = np.abs(flat_want - g).max(axis=1)
        assert d.min() < 1e-3, f"a pair from the service is none of the local pipeline's (closest: {d.min()})"
        idx.append(int(d.argmin()))
    return np.array(idx)


@pytest.fixture(scope="module")
def local(folder):
    """The local pipeline's first two epochs of pairs (``N`` each)."""
    return _pairs(_config(folder).train_dataset(BATCH, repeat=True), 2 * (N // BATCH))


@pytest.mark.slow  # a dispatcher and workers: distributed
def test_off_mode_one_worker_gives_the_local_pairs_epoch_after_epoch(folder, local):
    address, kept = _servers(1)
    steps = N // BATCH
    served = _pairs(_config(folder, dispatcher=address, mode="off").train_dataset(BATCH, repeat=True), 2 * steps)
    assert len(np.unique(local.reshape(len(local), -1), axis=0)) == 2 * N  # two epochs, all pairs distinct
    for epoch in range(2):  # the same multiset of pairs in each epoch: the keys follow the epoch, not the worker
        part = slice(epoch * N, (epoch + 1) * N)
        assert sorted(_match(served[part], local[part])) == list(range(N))
    del kept


@pytest.mark.slow  # a dispatcher and two workers: distributed
def test_distributed_epoch_two_workers_covers_each_example_once(folder, local):
    address, kept = _servers(2)
    served = _pairs(_config(folder, dispatcher=address).train_dataset(BATCH), N)  # as many as the service gives
    assert len(served) == N
    assert sorted(_match(served, local[:N])) == list(range(N))  # each example exactly once, the local views
    del kept


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_dispatcher_address_is_one_line_exit_2_before_training(tmp_path, capsys):
    from bt_keras.cli.train import main

    run = tmp_path / "run"
    argv = ["--config", os.path.join(ROOT, "configs", "demo.yaml"), "--run-dir", str(run)]
    with pytest.raises(SystemExit) as e:
        main([*argv, "--set", f"data.service.dispatcher=127.0.0.1:{_closed_port()}"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("bt-train: error: data.service.dispatcher: cannot reach a tf.data service dispatcher")
    assert not run.exists()  # nothing started
    with pytest.raises(SystemExit) as e:
        main([*argv, "--set", "data.service.mode=parallel"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "data.service.mode: must be one of off, distributed_epoch" in err


def test_worker_command_refuses_an_unreachable_dispatcher(capsys):
    from bt_keras.cli.data_service import main

    assert main(["worker", "--dispatcher", f"127.0.0.1:{_closed_port()}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bt-data-service: error: --dispatcher: cannot reach"), err


def _spawn(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def _wait_for_line(proc, text):
    """Reads ``proc``'s stdout until a line containing ``text`` (the server's own start-up report)."""
    for line in proc.stdout:
        if text in line:
            return line
    raise AssertionError(f"{proc.args} ended without printing {text!r}: {proc.communicate()[1][-2000:]}")


@pytest.mark.slow
def test_train_through_service_survives_a_killed_worker(folder, tmp_path):
    import tensorflow as tf

    svc = tf.data.experimental.service
    # Dispatcher and one worker here; the worker that dies and the trainer are processes.
    dispatcher = svc.DispatchServer(svc.DispatcherConfig(port=0, worker_timeout_ms=2000))
    address = dispatcher.target.split("://")[1]
    kept = [dispatcher, svc.WorkerServer(svc.WorkerConfig(dispatcher_address=address, heartbeat_interval_ms=200))]
    victim = _spawn("bt_keras.cli.data_service", "worker", "--dispatcher", address)
    procs = [victim]
    try:
        run = tmp_path / "run"
        sets = {
            "data.source": f"folder:{folder}", "data.image_size": SIZE, "data.augment.preset": "imagenet",
            "data.val_source": "null", "data.service.dispatcher": address, "model.width": 4,
            "model.projector_dims": "[16,16,16]", "train.batch_size": BATCH, "train.epochs": 1,
            "train.checkpoint_every_steps": 2, "train.verbose": 0, "eval.train_source": "null",
        }  # fmt: skip
        overrides = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
        config = os.path.join(ROOT, "configs", "demo.yaml")
        trainer = _spawn("bt_keras.cli.train", "--config", config, "--run-dir", str(run), *overrides)
        procs.append(trainer)
        _wait_for_line(victim, "worker on")  # it registers while the trainer starts; jobs reach late workers too
        ckpt = run / "checkpoints" / "latest.weights.h5"
        while not ckpt.exists():  # the first checkpoint (step 2 of 9): training is under way
            assert trainer.poll() is None, trainer.communicate()[1][-3000:]
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)  # one worker dies mid-epoch
        out, err = trainer.communicate(timeout=300)
        assert trainer.returncode == 0, err[-3000:]
        assert f"bt-train: {N // BATCH} steps" in out, out
        assert f"computed by the tf.data service at {address} (distributed_epoch)" in out, out
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        del kept
