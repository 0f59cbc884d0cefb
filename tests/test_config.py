"""Config files load; bad configs are one-line errors with exit code 2."""

import glob
import os
import subprocess
import sys

import pytest

from bt_keras.config import ConfigError, config_from_dict, config_to_yaml, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml"))))
def test_shipped_configs_load_and_round_trip(path, tmp_path):
    cfg = load_config(path)
    again = tmp_path / "resolved.yaml"
    again.write_text(config_to_yaml(cfg))
    assert load_config(str(again)) == cfg


def test_required_configs_exist():
    names = {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "configs", "*.yaml"))}
    assert {"demo.yaml", "cifar10_resnet18.yaml", "imagenet_resnet50_tpu.yaml"} <= names


def test_overrides_and_types():
    cfg = config_from_dict(
        {"model": {"projector_dims": [64, 64]}},
        overrides=[
            "train.epochs=3",
            "optim.weight_decay=1e-4",
            "train.jit_compile=true",
            "data.augment.flip.enabled=false",
        ],
    )
    assert cfg.train.epochs == 3 and cfg.optim.weight_decay == 1e-4 and cfg.train.jit_compile is True
    assert cfg.model.projector_dims == (64, 64)
    assert cfg.data.augment.flip.enabled is False


@pytest.mark.parametrize(
    "raw,overrides,message",
    [
        ({"trian": {}}, [], "unknown key 'trian'; allowed: data, model, optim, train, eval"),
        ({"train": {"epoch": 3}}, [], "unknown key 'train.epoch'"),
        ({"train": {"epochs": "ten"}}, [], "train.epochs: expected int, got 'ten'"),
        ({"train": {"strategy": "horovod"}}, [], "train.strategy: expected one of 'auto'"),
        ({"model": {"encoder": "vit"}}, [], "model.encoder: unknown encoder 'vit'; choose one of small_cnn"),
        ({"train": {"batch_size": 1}}, [], "train.batch_size: must be >= 2"),
        ({}, ["train.epochs"], "--set expects key.sub=value"),
        ({"model": {"projector_dims": [64, "x"]}}, [], "model.projector_dims[1]: expected int"),
    ],
)
def test_bad_values_name_the_key(raw, overrides, message):
    with pytest.raises(ConfigError) as e:
        config_from_dict(raw, overrides)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def _bt_train(capsys, *args):
    """Runs the real bt-train entry point in-process (config errors stop before any TF work)."""
    from bt_keras.cli.train import main

    with pytest.raises(SystemExit) as e:
        main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, e.value.code, out, err)


@pytest.mark.parametrize(
    "yaml_text,args,expected",
    [
        ("train:\n  epochz: 1\n", [], "bt-train: error: unknown key 'train.epochz'; allowed: epochs,"),
        ("train: [1, 2\n", [], "not valid YAML (line"),
        ("model:\n  lambd: high\n", [], "model.lambd: expected float, got 'high'"),
        ("{}\n", ["--set", "optim.name=sgd"], "optim.name: expected one of 'lars', 'adamw'"),
        ("{}\n", ["--bogus"], "bt-train: error: unrecognized arguments: --bogus"),
    ],
)
def test_cli_config_errors_exit_2_with_one_line(tmp_path, capsys, yaml_text, args, expected):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    proc = _bt_train(capsys, "--config", str(cfg), "--run-dir", str(tmp_path / "run"), *args)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("bt-train")]
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_cli_missing_config_file(tmp_path, capsys):
    proc = _bt_train(capsys, "--config", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2 and "config file not found" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_global_batch_must_divide_over_replicas():
    code = (
        "import tensorflow as tf\n"
        "cpu = tf.config.list_physical_devices('CPU')[0]\n"
        "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 3)\n"
        "from bt_keras.distribute import make_strategy, per_replica_batch_size\n"
        "from bt_keras.cli import UserError\n"
        "s = make_strategy('mirrored')\n"
        "assert per_replica_batch_size(12, s) == 4\n"
        "for b in (16, 3):\n"
        "    try:\n"
        "        per_replica_batch_size(b, s)\n"
        "    except UserError as e:\n"
        "        print(e)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "global batch 16 is not divisible by the 3 replicas" in proc.stdout
    assert "per-replica batch is 1" in proc.stdout
