"""``train.cpu_threads``: TensorFlow's CPU pools sized for the two views, before the runtime starts."""

import json
import os
import subprocess
import sys

import pytest

from bt_keras.config import config_from_dict
from bt_keras.cpu_threads import thread_layout
from bt_keras.errors import ConfigError, UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("cores, layout", [(1, (1, 2)), (2, (1, 2)), (3, (1, 2)), (16, (8, 2)), (96, (48, 2))])
def test_auto_gives_each_view_half_the_cores(cores, layout):
    assert thread_layout("auto", cores=cores) == layout


def test_explicit_and_default_layouts():
    assert thread_layout(" 6,3 ", cores=2) == (6, 3)
    assert thread_layout("tf", cores=2) is None


@pytest.mark.parametrize("bad", ["", "4", "4,0", "0,2", "a,b", "1,2,3", "-1,2", "fast"])
def test_a_bad_setting_is_one_line_naming_the_key(bad):
    with pytest.raises(UserError, match=r"^train\.cpu_threads: must be 'auto', 'tf' or 'INTRA,INTER'"):
        thread_layout(bad)
    with pytest.raises(ConfigError, match=r"^train\.cpu_threads: "):
        config_from_dict({"train": {"cpu_threads": bad}})


def test_the_config_default_is_auto():
    assert config_from_dict({}).train.cpu_threads == "auto"


APPLY = """
import json, sys
import tensorflow as tf
from bt_keras.cpu_threads import apply_cpu_threads, usable_cores
out = {"cores": usable_cores(), "line": apply_cpu_threads(sys.argv[1], sys.argv[2])}
out["pools"] = [tf.config.threading.get_intra_op_parallelism_threads(),
                tf.config.threading.get_inter_op_parallelism_threads()]
tf.constant(1.0) + 1.0  # the runtime starts: the pools can no longer change
out["late"] = apply_cpu_threads("3,1", "cpu")
print(json.dumps(out))
"""


def _apply(setting, strategy):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-c", APPLY, setting, strategy], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # a subprocess that starts TensorFlow
def test_auto_sizes_the_pools_of_a_cpu_run_and_a_started_runtime_keeps_its_own():
    out = _apply("auto", "cpu")
    intra = max(1, out["cores"] // 2)
    assert out["pools"] == [intra, 2]
    assert out["line"] == f"{intra} thread{'s' * (intra != 1)} per op, 2 ops at a time"
    assert out["late"].startswith("TensorFlow had already started: its thread pools stay as they are")


@pytest.mark.slow  # two subprocesses that start TensorFlow
def test_auto_leaves_a_multi_device_strategy_alone_and_tf_keeps_the_defaults():
    for setting, strategy in (("auto", "mirrored"), ("tf", "cpu")):
        out = _apply(setting, strategy)
        assert out["pools"] == [0, 0]  # 0: TensorFlow picks
        assert out["line"] == "TensorFlow's default thread pools"
