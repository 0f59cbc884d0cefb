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
``--rounds`` rounds and the best of each is reported, both per second of wall
time and per CPU-second of the process (user + system time of all its
threads; the command's from ``RUSAGE_CHILDREN``). On a busy machine the wall
times depend on the other jobs; the CPU-seconds much less.

Usage:

    PYTHONPATH=. python benchmarks/embed.py                   # Imagenette val, 500 photos
    PYTHONPATH=. python benchmarks/embed.py --split train --rounds 3
"""

from __future__ import annotations

import argparse
import os
import resource
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
    from bt_keras.frozen import load_frozen_encoder
    from bt_keras.preprocess import preprocess_for_eval
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
    print(f"{source}: {n} photos, ResNet-18 (11.2 M parameters), batch {args.batch_size}", flush=True)

    def timed(fn):
        """``(images per wall second, images per CPU-second)`` of ``fn()``."""
        t, cpu = time.perf_counter(), time.process_time()
        fn()
        return n / (time.perf_counter() - t), n / (time.process_time() - cpu)

    def embed(out):
        def run():
            result = bt_keras.embed_source(source, encoder, str(work / out), batch_size=args.batch_size, overwrite=True)
            assert result.num_images == n, result.num_images

        return timed(run)

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
        plain.append(timed(lambda: model.predict(x, batch_size=args.batch_size, verbose=0)))
        print(
            f"round {r + 1}: bt-embed warm {warm[-1][0]:.1f} images/s ({warm[-1][1]:.1f} per CPU-s), "
            f"model.predict {plain[-1][0]:.1f} images/s ({plain[-1][1]:.1f} per CPU-s)",
            flush=True,
        )
    same = np.allclose(np.load(work / "warm" / "embeddings.npy"), model.predict(x, verbose=0), atol=1e-4)

    rows = [
        ("`model.predict` on decoded, preprocessed arrays (inference only)", plain),
        ("bt-embed, warm (decoded images reused; crop, resize, inference, write)", warm),
        ("bt-embed, cold (list, validate, read, decode + the above)", [cold]),
    ]
    if not args.no_command:
        t, usage = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
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
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
        rows.append(
            (
                "`bt-embed` command end to end (process start, model load, cold pass)",
                [(n / (time.perf_counter() - t), n / cpu)],
            )
        )

    wall0, cpu0 = max(w for w, _ in plain), max(u for _, u in plain)
    title = f"ResNet-18, 224 px, {n} Imagenette photos, batch {args.batch_size}"
    print(f"\n| {title} | images/s | vs predict | images per CPU-s | vs predict |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, runs in rows:
        wall, cpu = max(w for w, _ in runs), max(u for _, u in runs)
        print(f"| {name} | {wall:.1f} | {wall / wall0:.2f}× | {cpu:.1f} | {cpu / cpu0:.2f}× |")
    print(f"\nembeddings equal model.predict's (atol 1e-4): {same}; load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
