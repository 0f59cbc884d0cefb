"""``bt-embed --runner``: the embedding pass as an Apache Beam pipeline (DirectRunner, Dataflow, Flink, Spark).

The driver lists the folder (local or ``gs://``, the same sorted listing and
labels as the in-process path); the pipeline reads and decodes each file in
the workers (through ``tf.io.gfile``, so ``gs://`` works on any runner),
preprocesses it by the encoder's contract (:func:`bt_keras.preprocess.preprocess_for_eval`,
the in-process code), embeds batches with ``RunInference`` and a model handler
that loads the encoder in each worker (:func:`bt_keras.frozen.load_frozen_encoder`:
a ``.keras`` encoder, an exported SavedModel's ``serve_float`` signature, or
ONNX), and writes one ``.npy`` shard per contiguous range of the listing.
The driver then writes ``index.tsv`` (global rows, in listing order),
``embeddings.shards.json`` (the shards in row order), ``skipped.tsv`` (the
same reasons, through :func:`bt_keras.data.validation.diagnose`, as the
in-process path) and ``embeddings.json``, and builds the nearest-neighbour
index. :meth:`bt_keras.embed.EmbeddingSet.open` reads the shards as one set.

Why a model handler of our own rather than Beam's ``TFModelHandlerTensor``:
that one loads with ``tf.keras.models.load_model``, which under Keras 3 loads
neither a SavedModel nor a bt_keras encoder's preprocessing contract; ours
loads exactly what the in-process ``bt-embed`` loads.

``pip install "bt_keras[beam]"`` installs Apache Beam; Dataflow needs
``apache-beam[gcp]``.
"""

from __future__ import annotations

import json
import os
import time
import uuid

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference

from bt_keras.beam import BytesSource, pipeline_failure, shard_name
from bt_keras.data.validation import MAX_IMAGE_PIXELS

SHARD_ROWS = 50_000  # listed files per output shard (default)


class EncoderHandler(ModelHandler):
    """A Beam model handler that loads a bt_keras frozen encoder and embeds batches of preprocessed images.

    Args:
        spec: keyword arguments of :func:`bt_keras.frozen.load_frozen_encoder` (picklable).
        batch_size: images per ``RunInference`` batch.
    """

    def __init__(self, spec: dict, batch_size: int):
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
        self.spec = dict(spec)
        self.batch_size = batch_size

    def load_model(self):
        from bt_keras.frozen import load_frozen_encoder

        return _Loaded(load_frozen_encoder(**self.spec))

    def run_inference(self, batch, model, inference_args=None):
        vectors = model.infer(np.stack(batch))
        return [PredictionResult(x, v) for x, v in zip(batch, vectors)]

    def batch_elements_kwargs(self):
        return {"min_batch_size": self.batch_size, "max_batch_size": self.batch_size}


class _Loaded:
    """A worker's encoder and its compiled inference function (which holds the encoder only weakly)."""

    def __init__(self, frozen):
        from bt_keras.evaluation.features import inference_fn

        self.frozen = frozen
        self.infer = inference_fn(frozen)


class DecodeFn(beam.DoFn):
    """``(uid, path, label)`` → ``((uid, path, label), image)``, or ``(path, reason)`` on the ``bad`` output.

    Args:
        contract: the encoder's preprocessing contract, as JSON.
        max_pixels: images above this many pixels are refused (as in-process).
    """

    def __init__(self, contract_json: str, max_pixels: int = MAX_IMAGE_PIXELS):
        self.contract_json = contract_json
        self.max_pixels = max_pixels

    def setup(self):
        import tensorflow as tf

        from bt_keras.contract import PreprocessingContract
        from bt_keras.preprocess import preprocess_for_eval

        c = PreprocessingContract.from_json(self.contract_json)
        self.preprocess = tf.function(
            lambda data: preprocess_for_eval(data, c.image_size, c.mean, c.std, c.crop_fraction, self.max_pixels),
            input_signature=[tf.TensorSpec([], tf.string)],
        )

    def process(self, item):
        import tensorflow as tf

        from bt_keras.data.validation import diagnose
        from bt_keras.errors import one_line

        uid, path, label = item
        try:
            with tf.io.gfile.GFile(path, "rb") as f:
                data = f.read()
        except (OSError, tf.errors.OpError) as e:
            yield beam.pvalue.TaggedOutput("bad", (uid, path, f"unreadable: {one_line(e)}"))
            return
        reason = diagnose(BytesSource(data), uid, self.max_pixels) if _suspect(data, self.max_pixels) else None
        if reason is None:
            try:
                yield (uid, path, label), self.preprocess(tf.constant(data)).numpy()
                return
            except tf.errors.OpError:
                reason = diagnose(BytesSource(data), uid, self.max_pixels) or "could not be decoded"
        yield beam.pvalue.TaggedOutput("bad", (uid, path, reason))


def _suspect(data: bytes, max_pixels: int) -> bool:
    """Whether a file needs the full diagnosis before decoding (empty, or a header too large to decode)."""
    from bt_keras.data.validation import image_size

    size = image_size(data) if data else None
    return not data or (size is not None and size[0] * size[1] > max_pixels)


class WriteShardFn(beam.DoFn):
    """``(shard, [((uid, path, label), vector)])`` → ``embeddings-S-of-T.npy`` + ``index-S-of-T.tsv`` in ``staging``.

    Args:
        staging: the directory the driver publishes from (local or ``gs://``).
        num_shards: the shard count (for the names).
    """

    def __init__(self, staging: str, num_shards: int):
        self.staging = staging
        self.num_shards = num_shards

    def process(self, element):
        import io

        import tensorflow as tf

        from bt_keras.embed.writer import tsv_writer

        shard, rows = element
        rows = sorted(rows, key=lambda r: r[0][0])
        name = shard_name(shard, self.num_shards)
        buffer = io.BytesIO()
        np.save(buffer, np.stack([v for _, v in rows]).astype(np.float32))
        with tf.io.gfile.GFile(f"{self.staging}/embeddings-{name}.npy", "wb") as f:
            f.write(buffer.getvalue())
        text = io.StringIO()
        tsv_writer(text).writerows([uid, path, label] for (uid, path, label), _ in rows)
        with tf.io.gfile.GFile(f"{self.staging}/index-{name}.tsv", "w") as f:
            f.write(text.getvalue())
        yield shard


def _write_bad(staging: str):
    def write(bad):
        import tensorflow as tf

        from bt_keras.embed.writer import tsv_writer

        with tf.io.gfile.GFile(f"{staging}/bad.tsv", "w") as f:
            tsv_writer(f).writerows(sorted(bad))

    return write


def run_pipeline(files, staging: str, spec: dict, contract_json: str, options, batch_size: int, num_shards: int):
    """Runs the Beam pipeline over ``files`` (``(uid, path, label)``); shards and ``bad.tsv`` land in ``staging``."""
    n = max(len(files), 1)
    with beam.Pipeline(options=options) as p:
        decoded = (
            p
            | "List" >> beam.Create(files)
            | "Spread" >> beam.Reshuffle()
            | "Decode" >> beam.ParDo(DecodeFn(contract_json)).with_outputs("bad", main="good")
        )
        (
            decoded.good
            | "Embed" >> RunInference(KeyedModelHandler(EncoderHandler(spec, batch_size)))
            | "Shard" >> beam.Map(lambda kv: (kv[0][0] * num_shards // n, (kv[0], kv[1].inference)))
            | "Group" >> beam.GroupByKey()
            | "Write" >> beam.ParDo(WriteShardFn(staging, num_shards))
        )
        (decoded.bad | "Bad" >> beam.combiners.ToList() | "WriteBad" >> beam.Map(_write_bad(staging)))


def embed_folder_beam(
    source: str,
    spec: dict,
    out_dir: str,
    *,
    options,
    batch_size: int = 256,
    num_shards=None,
    overwrite: bool = False,
    index: bool | None = None,
):
    """Embeds a ``folder:`` source with Beam into ``out_dir``; returns the :class:`~bt_keras.embed.EmbeddingSet`.

    Args:
        source: ``folder:PATH`` (local or ``gs://``).
        spec: :func:`~bt_keras.frozen.load_frozen_encoder` keyword arguments.
        out_dir: local output directory.
        options: Beam ``PipelineOptions`` (:func:`pipeline_options`).
        batch_size: images per ``RunInference`` batch.
        num_shards: output shards (None: one per ``SHARD_ROWS`` listed files).
        overwrite: replace embeddings already in ``out_dir``.
        index: as in :func:`~bt_keras.embed.embed_source`.
    """
    from bt_keras.data.sources import FolderSource
    from bt_keras.embed.api import check_out_dir
    from bt_keras.errors import UserError
    from bt_keras.frozen import load_frozen_encoder

    if not source.startswith("folder:"):
        raise UserError(f"{source}: --runner embeds folder:PATH sources (local or gs://)")
    check_out_dir(out_dir, overwrite)
    frozen = load_frozen_encoder(**spec)  # fails here, in one line, before any worker starts
    start = time.perf_counter()
    src = FolderSource(source[len("folder:") :])
    labels = src.labels if src.labels is not None else np.full([len(src.paths)], -1)
    files = [(i, p, int(y)) for i, (p, y) in enumerate(zip(src.paths, labels))]
    num_shards = num_shards or max(1, -(-len(files) // SHARD_ROWS))
    os.makedirs(out_dir, exist_ok=True)
    staging = os.path.join(out_dir, f".beam-{uuid.uuid4().hex[:12]}")
    os.makedirs(staging)
    try:
        try:
            run_pipeline(files, staging, spec, frozen.contract.to_json(), options, batch_size, num_shards)
        except Exception as e:  # noqa: BLE001 - a worker's failure, reported by the runner: one line, nothing published
            raise pipeline_failure(e) from None
        return _publish(src, staging, out_dir, frozen, num_shards, time.perf_counter() - start, index)
    finally:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)


def _publish(src, staging, out_dir, frozen, num_shards, seconds, index):
    """Global ``index.tsv``, the shards and their manifest, ``skipped.tsv``, ``embeddings.json``, the index."""
    import csv

    from bt_keras.data.validation import report_skipped
    from bt_keras.embed.api import SKIPPED_FILE, SUMMARY_FILE, build_ann_index
    from bt_keras.embed.embedding_set import EmbeddingSet
    from bt_keras.embed.shards import MANIFEST_FILE, write_manifest
    from bt_keras.embed.writer import EMBEDDINGS_FILE, INDEX_COLUMNS, INDEX_FILE, tsv_writer
    from bt_keras.errors import UserError
    from bt_keras.io import atomic_path, atomic_write

    names = src.class_names or []
    shards, rows, dim = [], 0, None
    with atomic_path(os.path.join(out_dir, INDEX_FILE)) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = tsv_writer(f)
        writer.writerow(INDEX_COLUMNS)
        for s in range(num_shards):
            name = shard_name(s, num_shards)
            part = os.path.join(staging, f"index-{name}.tsv")
            if not os.path.exists(part):
                continue  # no usable image in that range
            with open(part, encoding="utf-8", newline="") as p:
                entries = list(csv.reader(p, delimiter="\t"))
            for uid, path, label in entries:
                y = int(label)
                writer.writerow([rows, int(uid), path, y, names[y] if 0 <= y < len(names) else ""])
                rows += 1
            dim = np.load(os.path.join(staging, f"embeddings-{name}.npy"), mmap_mode="r").shape[1]
            os.replace(os.path.join(staging, f"embeddings-{name}.npy"), os.path.join(out_dir, f"embeddings-{name}.npy"))
            shards.append((f"embeddings-{name}.npy", len(entries)))
        if not rows:
            raise UserError(f"{src.name}: no usable image to embed")
    write_manifest(out_dir, shards, dim)
    if os.path.exists(os.path.join(out_dir, EMBEDDINGS_FILE)):
        os.remove(os.path.join(out_dir, EMBEDDINGS_FILE))  # the manifest is the set now (--overwrite)
    bad = []  # no file: the runner ran no step on an empty PCollection
    if os.path.exists(os.path.join(staging, "bad.tsv")):
        with open(os.path.join(staging, "bad.tsv"), encoding="utf-8", newline="") as f:
            bad = [(src.locate(int(u)), reason) for u, _, reason in csv.reader(f, delimiter="\t")]  # listing order
    report_skipped(bad + src.ignored, rows, os.path.join(out_dir, SKIPPED_FILE))
    contract = frozen.contract
    result = EmbeddingSet(out_dir, src.name, contract, frozen, rows, int(dim), len(bad), seconds)
    summary = {
        "source": src.name,
        "encoder": frozen.origin,
        "preprocessing": json.loads(contract.to_json()),
        "num_images": rows,
        "dim": int(dim),
        "num_skipped": len(bad),
        "seconds": round(seconds, 3),
        "runner": "beam",
        "files": {"embeddings": MANIFEST_FILE, "index": INDEX_FILE, "skipped": SKIPPED_FILE},
    }
    ann_meta = build_ann_index(result, index)
    if ann_meta is not None:
        summary["files"]["ann_index"] = "ann.faiss"
        summary["ann_index"] = ann_meta
    atomic_write(os.path.join(out_dir, SUMMARY_FILE), json.dumps(summary, indent=2) + "\n")
    return result
