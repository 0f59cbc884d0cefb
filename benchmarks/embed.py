"""bt-embed throughput: images per second for ResNet-18 at 224 px on a folder of photos.

Compared, in one run, with a plain ``model.predict`` loop over the same
images already decoded and preprocessed in memory (the inference-only bound:
no file reading, no decoding, no resizing, nothing written). bt-embed's time
is :func:`bt_keras.embed_source`, what the command runs after loading the
encoder: listing and checking the folder, reading and decoding every JPEG,
the contract's centre crop and resize, inference, and writing
``embeddings.npy`` + ``index.tsv``.

- *cold*: the first pass (the folder is listed, validated and decoded; a
  small folder is then kept in memory, as in training);
- *warm*: later passes over the same folder in the same process (the decoded
  images are reused; preprocessing, inference and writing remain);
- *command*: ``python -m bt_keras.cli.embed`` as a new process, end to end
  (Python and TensorFlow start-up, model load, one cold pass).

The machine may be shared: the warm passes and the predict loop alternate for
``--rounds`` rounds and the best of each is reported.

Usage:

    PYTHONPATH=. python benchmarks/embed.py                   # Imagenette val, 500 photos
    PYTHONPATH=. python benchmarks/embed.py --split train --rounds 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def extracted(archive: Path, cache: Path, expect: str) -> Path:
    root = cache / archive.name.split(".")[0]
    if not (root / expect).is_dir():
        root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
    return root


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="directory with the .tar.gz archives")
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "bt_keras" / "bench-data"))
    p.add_argument("--split", default="val", choices=["train", "val"], help="Imagenette split (val: 500, train: 1,000)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--no-command", action="store_true", help="skip the end-to-end command row")
    args = p.parse_args(argv)

    import keras
    import numpy as np
    import tensorflow as tf

    import bt_keras
    from bt_keras.contract import make_contract
    from bt_keras.encoders import resnet
    from bt_keras.preprocess import preprocess_for_eval
    from bt_keras.saving import load_frozen_encoder
    from bt_keras.training import save_encoder

    root = extracted(Path(args.data) / "imagenette-224-mini.tar.gz", Path(args.cache), "train")
    folder = root / args.split
    source = f"folder:{folder}"
    load = os.getloadavg()[0]
    print(f"TF {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPU cores, load average {load:.1f}")

    work = Path(tempfile.mkdtemp(prefix="bt-embed-bench-"))
    keras.utils.set_random_seed(0)
    contract = make_contract(224)  # ImageNet statistics, centre crop 0.875
    save_encoder(resnet(18, stem="imagenet", input_shape=(224, 224, 3)), str(work / "run"), contract)
    encoder = load_frozen_encoder(run=str(work / "run"))
    model = encoder.model

    paths = sorted(str(q) for q in folder.rglob("*") if q.suffix.lower() in (".jpg", ".jpeg", ".png"))
    n = len(paths)
    print(f"{source}: {n} photos, ResNet-18 (11.2 M parameters), batch {args.batch_size}")

    def embed(out):
        t = time.perf_counter()
        result = bt_keras.embed_source(source, encoder, str(work / out), batch_size=args.batch_size, overwrite=True)
        assert result.num_images == n, result.num_images
        return n / (time.perf_counter() - t)

    cold = embed("cold")
    # The same decoded and preprocessed images for the plain loop, outside its timing.
    c = contract
    x = np.stack(
        [preprocess_for_eval(tf.io.read_file(q), c.image_size, c.mean, c.std, c.crop_fraction).numpy() for q in paths]
    )
    model.predict(x[: args.batch_size], batch_size=args.batch_size, verbose=0)  # trace once
    warm, plain = [], []
    for r in range(args.rounds):
        warm.append(embed("warm"))
        t = time.perf_counter()
        model.predict(x, batch_size=args.batch_size, verbose=0)
        plain.append(n / (time.perf_counter() - t))
        print(f"round {r + 1}: bt-embed warm {warm[-1]:.1f} images/s, model.predict {plain[-1]:.1f} images/s")
    same = np.allclose(np.load(work / "warm" / "embeddings.npy"), model.predict(x, verbose=0), atol=1e-4)

    command = None
    if not args.no_command:
        t = time.perf_counter()
        cmd = [
            sys.executable,
            "-m",
            "bt_keras.cli.embed",
            source,
            "--run",
            str(work / "run"),
            "--out",
            str(work / "cmd"),
        ]
        cmd += ["--batch-size", str(args.batch_size)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        if proc.returncode != 0:
            sys.exit(proc.stderr)
        command = n / (time.perf_counter() - t)

    best = max(plain)
    print()
    print(f"| ResNet-18, 224 px, {n} Imagenette photos, batch {args.batch_size} | images/s | vs model.predict |")
    print("| --- | ---: | ---: |")
    print(f"| `model.predict` on decoded, preprocessed arrays (inference only) | {best:.1f} | 1.00× |")
    print(
        f"| bt-embed, warm (decoded images reused; crop, resize, inference, write) | {max(warm):.1f} | "
        f"{max(warm) / best:.2f}× |"
    )
    print(f"| bt-embed, cold (list, validate, read, decode + the above) | {cold:.1f} | {cold / best:.2f}× |")
    if command is not None:
        print(
            f"| `bt-embed` command end to end (process start, model load, cold pass) | {command:.1f} | "
            f"{command / best:.2f}× |"
        )
    print(f"\nembeddings equal model.predict's (atol 1e-4): {same}; load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
