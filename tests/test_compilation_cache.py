"""``train.jax_compilation_cache``: where the JAX backend keeps compiled steps between runs.

In-process: the function only sets JAX's configuration (restored after each
test). That a resumed bt-train run reads the cache is test_jax_train's.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

jax = pytest.importorskip("jax")

from bt_keras.config import ConfigError, config_from_dict  # noqa: E402
from bt_keras.distribute import AUTO_CACHE_MAX_BYTES, MIN_COMPILE_SECONDS, use_jax_compilation_cache  # noqa: E402
from bt_keras.errors import UserError  # noqa: E402

SETTINGS = (
    "jax_enable_compilation_cache",
    "jax_compilation_cache_dir",
    "jax_compilation_cache_max_size",
    "jax_persistent_cache_min_compile_time_secs",
)


@pytest.fixture(autouse=True)
def jax_settings(monkeypatch):
    for key in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "XDG_CACHE_HOME"):
        monkeypatch.delenv(key, raising=False)
    saved = {name: getattr(jax.config, name) for name in SETTINGS}
    yield
    for name, value in saved.items():
        jax.config.update(name, value)


def test_auto_uses_the_user_cache_directory_capped(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = use_jax_compilation_cache("auto")
    assert path == str(tmp_path / "cache" / "bt_keras" / "jax") and os.path.isdir(path)
    assert jax.config.jax_compilation_cache_dir == path and jax.config.jax_enable_compilation_cache
    # Capped where JAX can evict (it needs filelock); the test below covers an environment without it.
    capped = importlib.util.find_spec("filelock") is not None
    assert jax.config.jax_compilation_cache_max_size == (AUTO_CACHE_MAX_BYTES if capped else -1)
    assert jax.config.jax_persistent_cache_min_compile_time_secs == MIN_COMPILE_SECONDS


def test_auto_defers_to_the_environment_and_a_threshold_the_user_set(tmp_path, monkeypatch):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
    assert use_jax_compilation_cache("auto") == str(tmp_path / "mine")
    assert jax.config.jax_compilation_cache_max_size != AUTO_CACHE_MAX_BYTES  # the user's cache: no cap of ours
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "5")
    threshold = jax.config.jax_persistent_cache_min_compile_time_secs
    assert use_jax_compilation_cache(str(tmp_path / "dir")) == str(tmp_path / "dir")
    assert jax.config.jax_persistent_cache_min_compile_time_secs == threshold


def test_null_turns_the_cache_off_even_where_the_environment_sets_one(tmp_path, monkeypatch):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
    assert use_jax_compilation_cache(None) is None
    assert not jax.config.jax_enable_compilation_cache


def test_a_directory_that_cannot_be_created(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    refusal = r"^train\.jax_compilation_cache: cannot create .*a-file/x: .*null \(no cache\)$"
    with pytest.raises(UserError, match=refusal):
        use_jax_compilation_cache(str(blocker / "x"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # auto: the run goes on without a cache
    assert use_jax_compilation_cache("auto") is None
    assert not jax.config.jax_enable_compilation_cache


def test_config_key_defaults_to_auto_and_refuses_an_empty_name():
    assert config_from_dict({}).train.jax_compilation_cache == "auto"
    assert config_from_dict({}, ["train.jax_compilation_cache=null"]).train.jax_compilation_cache is None
    with pytest.raises(ConfigError, match=r"^train: jax_compilation_cache: must be 'auto', a directory or null"):
        config_from_dict({}, ["train.jax_compilation_cache=''"])


WITHOUT_FILELOCK = """
import sys, warnings
sys.modules["filelock"] = None  # a user's environment without it: pip install "bt_keras[jax]" does not bring it
import jax, jax.numpy as jnp
from bt_keras.distribute import use_jax_compilation_cache
warnings.simplefilter("error")  # JAX warns on every compile when it cannot evict
print(use_jax_compilation_cache("auto"), jax.config.jax_compilation_cache_max_size)
print(float(jax.jit(lambda x: (x * 2 + 1).sum())(jnp.ones(3))))
"""


@pytest.mark.slow  # a process that imports TensorFlow and JAX
def test_auto_without_filelock_caches_without_a_cap_and_without_warnings(tmp_path):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    proc = subprocess.run([sys.executable, "-c", WITHOUT_FILELOCK], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == [str(tmp_path / "bt_keras" / "jax"), "-1", "9.0"]
    assert any((tmp_path / "bt_keras" / "jax").iterdir())  # the compiled function was cached
