"""Reading a config file's YAML strictly: bounded size, no aliases (a "billion laughs" file), no
duplicate keys (the last one would win silently), local or ``gs://``.

:mod:`bt_keras.config` builds the typed dataclasses from what :func:`load_yaml` returns.
"""

from __future__ import annotations

import os
import stat

import yaml

from bt_keras.errors import ConfigError, short_repr
from bt_keras.io import is_remote


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing aliases (``*name``) and a key given twice in one mapping.

    An alias repeats a node without copying its text, so a few hundred bytes of
    nested aliases ("billion laughs") expand to gigabytes; a config never needs one.
    A repeated key (two ``train:`` sections) would silently keep only the last one.
    """

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key in seen:
                raise ConfigError(
                    f"{self.name}: line {key_node.start_mark.line + 1}: the key {short_repr(key, 40)} appears "
                    f"twice in one mapping (first on line {seen[key] + 1}); keep one"
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(
                f"{self.name}: line {event.start_mark.line + 1} uses a YAML alias (*{event.anchor[:40]}); "
                "aliases are not supported in configs: write the value out"
            )
        return super().compose_node(parent, index)


def load_yaml(text: str, name: str):
    """YAML text as Python values, aliases refused (:class:`_NoAliasLoader`)."""
    loader = _NoAliasLoader(text)
    loader.name = name
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


MAX_CONFIG_BYTES = 16 * 2**20


def read_text(path: str) -> str:
    # TensorFlow (for gs:// and other remote file systems) only when the path needs it.
    if is_remote(path):
        import tensorflow as tf

        if not tf.io.gfile.exists(path):
            raise ConfigError(f"config file not found: {path}")
        with tf.io.gfile.GFile(path) as f:
            return f.read()
    try:
        # Only a regular file of bounded size: /dev/zero would be read forever, a FIFO block at open.
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
            raise ConfigError(f"config file {path} is not a regular file")
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_CONFIG_BYTES + 1)
        if len(text) > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES // 2**20} MiB; not a config")
        return text
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory; pass a YAML file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {getattr(e, 'strerror', None) or e}") from None
