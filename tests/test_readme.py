"""The README's Python API example runs as written (at one epoch instead of its 20) and trains quietly.

Quietly means one plain line per epoch, without Keras' ``1/Unknown`` progress
(a dataset of unknown length) and without ``Your input ran out of data`` (a
finite dataset shorter than ``epochs × steps_per_epoch``), the two messages the
example used to print.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import pytest

from bt_keras.saving import non_keras_layers

pytestmark = pytest.mark.slow  # trains a ResNet-18 (width 16) for one epoch on the digits

REPO = Path(__file__).resolve().parents[1]
EPOCHS_LINE = re.compile(r"^(batch_size, epochs = \d+, )(\d+)$", re.MULTILINE)


def python_api_example() -> str:
    """The first ```python block after the README's "## Python API" heading."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python API") :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "README.md: no python block under '## Python API'"
    return match.group(1)


def test_the_example_sets_its_epochs_in_one_place():
    code = python_api_example()
    assert len(EPOCHS_LINE.findall(code)) == 1, "the test shortens the run through 'batch_size, epochs = B, E'"
    assert "steps_per_epoch=steps" in code and ".repeat()" in code and "verbose=2" in code


def test_python_api_example_trains_quietly(tmp_path):
    code, count = EPOCHS_LINE.subn(r"\g<1>1", python_api_example())
    assert count == 1
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "Unknown" not in output and "ran out of data" not in output, output[-3000:]
    steps = 1438 // 128  # demo:train has 1,438 images
    assert f"{steps}/{steps} - " in proc.stdout and "loss: " in proc.stdout
    assert "\x1b[" not in proc.stdout and "\r" not in proc.stdout  # one plain line per epoch
    encoder = keras.saving.load_model(tmp_path / "encoder.keras")
    assert non_keras_layers(encoder) == [] and encoder.compute_dtype == "float32"
    assert encoder.output_shape == (None, 16 * 8)
