"""Local tf.distribute clusters for the tests: free ports and TF_CONFIG on 127.0.0.1."""

import json
import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tf_config(ports, index: int) -> str:
    """TF_CONFIG of worker ``index`` in a cluster of one worker per port."""
    return json.dumps(
        {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
    )
