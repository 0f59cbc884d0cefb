"""The docs site's "Python API in 15 lines" page runs as written (at one epoch instead of its 5)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import pytest

pytestmark = pytest.mark.slow  # trains a small user encoder for one epoch on the digits, then kNN

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "python_api.md"
EPOCHS_LINE = re.compile(r"^(batch_size, epochs = \d+, )(\d+)$", re.MULTILINE)


def test_the_python_api_page_runs_as_written(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.DOTALL)
    assert len(blocks) == 2, "docs/python_api.md: expected the training block and the evaluation block"
    train, count = EPOCHS_LINE.subn(r"\g<1>1", blocks[0])
    assert count == 1 and len(train.strip().splitlines()) <= 16  # the page's title promises 15 lines of code
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-c", train + blocks[1]], capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    top1 = float(proc.stdout.strip().splitlines()[-1])
    assert 0.1 < top1 <= 1.0  # above chance on 10 digits: the pipeline, model and evaluation fit together
    encoder = keras.saving.load_model(tmp_path / "encoder.keras")
    assert encoder.output_shape == (None, 64)
