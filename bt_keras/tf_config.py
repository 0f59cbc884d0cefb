"""``TF_CONFIG``, the cluster a ``multi_worker`` run belongs to, checked without TensorFlow.

``bt-train`` checks it with the config, so a missing or malformed ``TF_CONFIG`` is said at once
rather than after TensorFlow's start-up.
"""

from __future__ import annotations

import json
import os

from bt_keras.errors import UserError


def check_tf_config() -> None:
    """A one-line ``UserError`` unless ``TF_CONFIG`` describes a worker of a cluster (no TensorFlow needed)."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise UserError("strategy 'multi_worker' needs the TF_CONFIG environment variable (see README: Multi-worker)")
    try:
        cfg = json.loads(raw)
        workers = cfg["cluster"]["worker"]
        task = cfg["task"]
        int(task["index"])
        task["type"]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(
            f"TF_CONFIG is malformed ({type(e).__name__}: {e}); expected "
            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}'
        ) from None
    if not isinstance(workers, list) or not workers:
        raise UserError("TF_CONFIG cluster.worker must be a non-empty list of host:port")
