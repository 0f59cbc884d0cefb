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

``--index``: duplicates and top-10 neighbours over synthetic vectors (1M
rows of 128-d and 512-d by default, drawn around 1,000 centres, with 1,000
planted near-duplicate pairs), brute force (exact: FAISS's k-NN over the
set normalised once, BLAS products with the top 10 kept; the duplicate scan
of :mod:`bt_keras.embed.duplicates`) against the FAISS index that
``bt-embed`` builds (:mod:`bt_keras.embed.index`), side by side: build time,
search time, memory, recall@10. Brute force over 1M × 1M is hours here, so
it is *measured* on ``--queries`` queries (top-10) and on the first
``--dup-rows`` rows against all rows (duplicates) and extrapolated linearly
to every row (said so in the table); the index's duplicates likewise from the
range queries of the first ``--index-dup-rows`` rows. Recall@10 is measured on
those queries against brute force's answers; duplicate recall on the planted
pairs whose first row was queried.
``--libraries`` also compares usearch's HNSW with FAISS IVF-Flat on a
smaller set (why FAISS was chosen).

``--beam``: ``bt-embed`` in-process against ``bt-embed --runner DirectRunner``
(two worker processes) on the same photos, each as a command from process
start, in images per CPU-second of the whole process tree.

Usage:

    PYTHONPATH=. python benchmarks/embed.py                   # Imagenette val, 500 photos
    PYTHONPATH=. python benchmarks/embed.py --split train --rounds 3
    PYTHONPATH=. python benchmarks/embed.py --index           # 1M x 128 and 1M x 512
    PYTHONPATH=. python benchmarks/embed.py --index --rows 200000 --dims 128 --libraries
    PYTHONPATH=. python benchmarks/embed.py --beam
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
    p.add_argument("--index", action="store_true", help="brute force against the index on synthetic vectors")
    p.add_argument("--rows", type=int, default=1_000_000, help="--index: vectors in the set")
    p.add_argument("--dims", default="128,512", help="--index: embedding sizes, comma-separated")
    p.add_argument("--queries", type=int, default=1000, help="--index: top-10 queries measured by brute force")
    p.add_argument("--dup-rows", type=int, default=2048, help="--index: rows whose duplicates brute force measures")
    p.add_argument("--index-dup-rows", type=int, default=100_000, help="--index: rows the index's duplicates query")
    p.add_argument("--libraries", action="store_true", help="--index: also usearch HNSW against FAISS IVF-Flat")
    p.add_argument("--beam", action="store_true", help="bt-embed in-process against --runner DirectRunner")
    args = p.parse_args(argv)
    if args.index:
        return index_benchmark(args)
    if args.beam:
        return beam_benchmark(args)

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


def synthetic(rows: int, dim: int, pairs: int = 1000, seed: int = 0):
    """``(vectors [rows, dim], planted pairs [pairs, 2])``: clustered rows, and near-copies of ``pairs`` of them."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(1000, dim)).astype(np.float32)
    x = np.empty([rows, dim], np.float32)
    for start in range(0, rows, 100_000):  # in blocks: bounded temporaries
        n = min(100_000, rows - start)
        x[start : start + n] = centers[rng.integers(0, 1000, n)] + rng.normal(size=(n, dim)).astype(np.float32)
    a = rng.choice(rows // 2, pairs, replace=False)
    b = rows // 2 + rng.choice(rows // 2, pairs, replace=False)
    x[b] = x[a] + 0.05 * rng.normal(size=(pairs, dim)).astype(np.float32)  # cosine ≈ 0.999
    return x, np.sort(np.stack([a, b], axis=1), axis=1)


def _rss_gib() -> float:
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
    return kib / 2**20


def _brute_force_knn(x, q, n):
    """``(exact top-10 of q, seconds for all n rows as queries)``: the set normalised once, outside the timing.

    The timed part is FAISS's exact k-NN (BLAS products, top-10 kept) of the
    queries against the whole unit set: what every-row-a-query brute force
    costs per query; linear in the queries, so extrapolated to ``n``.
    """
    import faiss
    import numpy as np

    from bt_keras.embed.neighbors import unit_rows

    unit = np.concatenate([unit_rows(x[s : s + 100_000]) for s in range(0, len(x), 100_000)])
    t = time.perf_counter()
    _, truth = faiss.knn(unit_rows(q), unit, 10, metric=faiss.METRIC_INNER_PRODUCT)
    seconds = (time.perf_counter() - t) * n / len(q)
    del unit
    return truth, seconds


def _brute_force_rows(x, threshold, dup_rows):
    """Seconds to find the duplicates of the first ``dup_rows`` rows against all rows (the scan bt-embed had)."""
    from bt_keras.embed.duplicates import BLOCK_ROWS
    from bt_keras.embed.neighbors import unit_rows

    t = time.perf_counter()
    found = 0
    for a in range(0, dup_rows, BLOCK_ROWS):
        block = unit_rows(x[a : min(a + BLOCK_ROWS, dup_rows)])
        for b in range(0, len(x), BLOCK_ROWS):
            found += int(((block @ unit_rows(x[b : b + BLOCK_ROWS]).T) >= threshold).sum())
    return time.perf_counter() - t


def index_benchmark(args) -> None:
    """Top-10 neighbours and duplicates: brute force against the index, per embedding size."""
    import faiss
    import numpy as np

    from bt_keras.embed import index as ann

    print(f"faiss-cpu {faiss.__version__}, {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}")
    threshold, table = 0.98, []
    for dim in map(int, args.dims.split(",")):
        x, planted = synthetic(args.rows, dim)
        n, q = len(x), x[np.random.default_rng(7).choice(len(x), args.queries, replace=False)]
        rss0 = _rss_gib()
        truth, bf_knn = _brute_force_knn(x, q, n)
        bf_dup = _brute_force_rows(x, threshold, args.dup_rows) * (n / args.dup_rows) / 2  # pairs a < b: half
        print(f"{n:,} x {dim}: brute force measured", flush=True)
        t = time.perf_counter()
        index = ann.build_index(x, exact_below=0)
        build = time.perf_counter() - t
        index_gib = _rss_gib() - rss0
        t = time.perf_counter()
        found, _ = index.search(q, 10)
        knn_q = (time.perf_counter() - t) * n / args.queries
        recall = ann.recall_at(found, truth)
        t = time.perf_counter()
        part = min(n, args.index_dup_rows)  # rows whose range queries are measured; the rest extrapolated
        pairs = {(a, b) for a, b, _ in index.pairs(x[:part], threshold)}
        dup = (time.perf_counter() - t) * n / part
        mine = planted[planted[:, 0] < part]  # planted pairs whose first row was queried
        dup_recall = np.mean([tuple(p) in pairs for p in mine.tolist()])
        m = index.meta
        print(f"{n:,} x {dim}: {m['kind']} nlist {m['nlist']} nprobe {m['nprobe']}, build {build:.0f} s", flush=True)
        table.append((n, dim, bf_knn, build, knn_q, recall, bf_dup, dup, dup_recall, len(pairs), index_gib, m))
        del x, index
    _print_index_table(table, args)
    if args.libraries:
        compare_libraries(min(args.rows, 200_000), 128, args.queries)


def _print_index_table(table, args) -> None:
    print(
        f"\n| vectors | top-10, every row a query: brute force (extrapolated from {args.queries:,} queries) | "
        "index: build + search (search extrapolated likewise) | speed-up | recall@10 | "
        f"duplicates >= 0.98: brute force (extrapolated from {args.dup_rows:,} rows) | "
        f"index (extrapolated from {args.index_dup_rows:,} rows' range queries) | "
        "planted pairs found | index memory |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, dim, bf, build, knn, recall, bf_dup, dup, dup_recall, found, gib, m in table:
        print(
            f"| {n:,} × {dim} ({m['kind']}, nlist {m['nlist']}, nprobe {m['nprobe']}) | {bf / 60:.1f} min | "
            f"{build:.0f} s + {knn / 60:.1f} min | {bf / (build + knn):.0f}× | {recall:.3f} | "
            f"{bf_dup / 60:.1f} min | {dup / 60:.1f} min ({found:,} pairs) | {dup_recall:.3f} | {gib:.1f} GiB |"
        )


def compare_libraries(rows: int, dim: int, queries: int) -> None:
    """FAISS IVF-Flat (what bt-embed builds) against usearch HNSW: build, search, recall@10, on one set."""
    import numpy as np
    from usearch.index import Index

    from bt_keras.embed import index as ann
    from bt_keras.embed.neighbors import unit_rows

    x, _ = synthetic(rows, dim)
    q = x[np.random.default_rng(7).choice(rows, queries, replace=False)]
    truth = ann.exact_neighbors(x, q, 10)
    t = time.perf_counter()
    faiss_index = ann.build_index(x, exact_below=0)
    faiss_build = time.perf_counter() - t
    t = time.perf_counter()
    faiss_recall = ann.recall_at(faiss_index.search(q, 10)[0], truth)
    faiss_search = time.perf_counter() - t
    t = time.perf_counter()
    hnsw = Index(ndim=dim, metric="ip", dtype="f32")
    hnsw.add(np.arange(rows), unit_rows(x))
    hnsw_build = time.perf_counter() - t
    t = time.perf_counter()
    hnsw_recall = ann.recall_at(hnsw.search(unit_rows(q), 10).keys, truth)
    hnsw_search = time.perf_counter() - t
    print(f"\n| {rows:,} × {dim}, {queries:,} queries | build | search | recall@10 |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| FAISS IVF-Flat (nprobe tuned) | {faiss_build:.1f} s | {faiss_search:.2f} s | {faiss_recall:.3f} |")
    print(f"| usearch HNSW (defaults, f32) | {hnsw_build:.1f} s | {hnsw_search:.2f} s | {hnsw_recall:.3f} |")


def _command_cost(cmd) -> tuple:
    """``(wall seconds, CPU-seconds of the whole process tree)`` of a command (children waited for count)."""
    t, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        sys.exit(proc.stderr)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - t, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def beam_benchmark(args) -> None:
    """``bt-embed`` in-process against ``--runner DirectRunner`` (2 workers), commands end to end."""
    import keras

    from bt_keras.contract import make_contract
    from bt_keras.encoders import resnet
    from bt_keras.training import save_encoder

    root = extracted(Path(args.data) / "imagenette-224-mini.tar.gz", Path(args.cache), "train")
    source = f"folder:{root / args.split}"
    n = sum(1 for q in (root / args.split).rglob("*") if q.suffix.lower() in (".jpg", ".jpeg", ".png"))
    work = Path(tempfile.mkdtemp(prefix="bt-embed-beam-bench-"))
    keras.utils.set_random_seed(0)
    save_encoder(resnet(18, stem="imagenet", input_shape=(224, 224, 3)), str(work / "run"), make_contract(224))
    print(f"{source}: {n} photos, ResNet-18 at 224 px, batch {args.batch_size}, {os.cpu_count()} CPU cores")
    base = [sys.executable, "-m", "bt_keras.cli.embed", source, "--run", str(work / "run"), "--no-index"]
    base += ["--batch-size", str(args.batch_size)]
    beam = ["--runner", "DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    rows = {"in-process": [], "DirectRunner, 2 workers": []}
    for r in range(args.rounds):
        rows["in-process"].append(_command_cost(base + ["--out", str(work / f"local{r}")]))
        rows["DirectRunner, 2 workers"].append(_command_cost(base + ["--out", str(work / f"beam{r}"), *beam]))
        print(
            f"round {r + 1}: " + ", ".join(f"{k} {v[-1][0]:.0f} s wall, {v[-1][1]:.0f} CPU-s" for k, v in rows.items())
        )
    best = {k: (min(w for w, _ in v), min(c for _, c in v)) for k, v in rows.items()}
    cpu0 = best["in-process"][1]
    print(
        f"\n| bt-embed, {n} Imagenette photos, command end to end | wall s | images/s | CPU-s | "
        "images per CPU-s | CPU per image vs in-process |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for k, (wall, cpu) in best.items():
        print(f"| {k} | {wall:.0f} | {n / wall:.1f} | {cpu:.0f} | {n / cpu:.1f} | {cpu / cpu0:.2f}× |")
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
