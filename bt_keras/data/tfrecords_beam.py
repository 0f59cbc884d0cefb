"""``bt-data --runner``: TFRecord shards written by an Apache Beam pipeline (DirectRunner, Dataflow, Flink, Spark).

The driver lists the folder (local or ``gs://``) exactly as the in-process
:func:`bt_keras.data.tfrecords.write_tfrecords` does and fixes a seeded
shuffle of the listing; the workers read each file (``tf.io.gfile``),
validate it by decoding it (:func:`bt_keras.data.validation.diagnose`, the
reasons of the in-process report), and write the records
(:func:`~bt_keras.data.tfrecords.serialize_example`: the same features) into
``NAME-SSSSS-of-TTTTT.tfrecord`` shards of a hidden staging directory. The
driver then writes the sidecar and ``NAME.skipped.tsv`` and publishes the
output as a whole, as the in-process path does.

The records are those of the in-process path, byte for byte; their order
across and within shards is another fixed shuffle (the in-process path
shuffles the usable files, known only after validation; here the listing is
shuffled before it).
"""

from __future__ import annotations

import json
import re
import uuid

import apache_beam as beam
import numpy as np

from bt_keras.beam import BytesSource, pipeline_failure, shard_name


class ValidateFn(beam.DoFn):
    """``(position, uid, path, label)`` → ``(shard, (position, record))``, or ``(uid, path, reason)`` on ``bad``.

    Args:
        num_shards: the shard count (position modulo it is the shard).
        class_names: names by label, or None.
        labelled: whether the source has labels.
    """

    def __init__(self, num_shards: int, class_names, labelled: bool):
        self.num_shards = num_shards
        self.class_names = class_names
        self.labelled = labelled

    def process(self, item):
        import tensorflow as tf

        from bt_keras.data.tfrecords import serialize_example
        from bt_keras.data.validation import diagnose
        from bt_keras.errors import one_line

        position, uid, path, label = item
        try:
            with tf.io.gfile.GFile(path, "rb") as f:
                data = f.read()
        except (OSError, tf.errors.OpError) as e:
            yield beam.pvalue.TaggedOutput("bad", (uid, path, f"unreadable: {one_line(e)}"))
            return
        reason = diagnose(BytesSource(data), uid)  # decodes once, as validate="full" does in-process
        if reason is not None:
            yield beam.pvalue.TaggedOutput("bad", (uid, path, reason))
            return
        record = serialize_example(data, label if self.labelled else None, self.class_names, path)
        yield position % self.num_shards, (position, record)


class WriteShardFn(beam.DoFn):
    """``(shard, [(position, record)])`` → the shard file in ``staging``, in position order; yields its count."""

    def __init__(self, staging: str, name: str, num_shards: int):
        self.staging, self.name, self.num_shards = staging, name, num_shards

    def process(self, element):
        import tensorflow as tf

        shard, records = element
        records = sorted(records)
        with tf.io.TFRecordWriter(f"{self.staging}/{self.name}-{shard_name(shard, self.num_shards)}.tfrecord") as w:
            for _, record in records:
                w.write(record)
        yield shard, len(records)


def _write_json(path: str):
    def write(value):
        import tensorflow as tf

        with tf.io.gfile.GFile(path, "w") as f:
            f.write(json.dumps(sorted(value)))

    return write


def run_pipeline(files, staging, name, num_shards, class_names, labelled, options) -> None:
    """Validates and writes ``files`` (``(position, uid, path, label)``) into ``staging``."""
    with beam.Pipeline(options=options) as p:
        checked = (
            p
            | "List" >> beam.Create(files)
            | "Spread" >> beam.Reshuffle()
            | "Validate" >> beam.ParDo(ValidateFn(num_shards, class_names, labelled)).with_outputs("bad", main="good")
        )
        (
            checked.good
            | "Group" >> beam.GroupByKey()
            | "Write" >> beam.ParDo(WriteShardFn(staging, name, num_shards))
            | "Counts" >> beam.combiners.ToList()
            | "WriteCounts" >> beam.Map(_write_json(f"{staging}/counts.json"))
        )
        checked.bad | "Bad" >> beam.combiners.ToList() | "WriteBad" >> beam.Map(_write_json(f"{staging}/bad.json"))


def write_tfrecords_beam(
    source: str, output_dir: str, *, options, name="train", num_shards=8, seed=0, overwrite=False
) -> dict:
    """:func:`~bt_keras.data.tfrecords.write_tfrecords` for a ``folder:`` source, as a Beam pipeline.

    Args:
        source: ``folder:PATH`` (local or ``gs://``).
        output_dir: the shards' directory (local or ``gs://``).
        options: Beam ``PipelineOptions`` (:func:`bt_keras.embed.beam.pipeline_options`).
        name, num_shards, seed, overwrite: as in ``write_tfrecords``.
    """
    import tensorflow as tf

    from bt_keras.data import tfrecords
    from bt_keras.data.sources import FolderSource
    from bt_keras.errors import DataError, UserError

    if not source.startswith("folder:"):
        raise UserError(f"{source}: --runner writes folder:PATH sources (local or gs://)")
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
        raise DataError(f"name: use letters, digits, '.', '_' or '-', got {name!r}")
    out = output_dir.rstrip("/") or "/"
    if tfrecords._previous_output(out, name) and not overwrite:
        raise DataError(f"{out}: already holds a '{name}' output; pass --overwrite to replace it as a whole")
    src = FolderSource(source[len("folder:") :])
    if not src.paths:
        raise DataError(f"{src.name}: no image files")
    labels = src.labels if src.labels is not None else np.full([len(src.paths)], -1)
    order = np.random.default_rng(seed).permutation(len(src.paths))  # a fixed shuffle of the listing
    files = [(pos, int(u), src.paths[u], int(labels[u])) for pos, u in enumerate(order)]
    num_shards = min(num_shards, len(files))
    tf.io.gfile.makedirs(out)
    staging = f"{out}/.{name}.bt-data-{uuid.uuid4().hex[:12]}"
    tf.io.gfile.makedirs(staging)
    try:
        try:
            run_pipeline(files, staging, name, num_shards, src.class_names, src.labels is not None, options)
        except Exception as e:  # noqa: BLE001 - a worker's failure, reported by the runner: one line
            raise pipeline_failure(e) from None
        info = _finish(src, staging, out, name, num_shards, source)
        tfrecords._publish(staging, out, name, tfrecords._previous_output(out, name))
    finally:
        if tf.io.gfile.exists(staging):
            tf.io.gfile.rmtree(staging)
    return info


def _finish(src, staging, out, name, num_shards, source) -> dict:
    """Empty shards for ranges with no usable image, the sidecar and the skipped report, in ``staging``."""
    import tensorflow as tf

    from bt_keras.data.sources import source_name
    from bt_keras.data.validation import report_skipped
    from bt_keras.errors import DataError
    from bt_keras.io import atomic_write

    def read(fname):  # no file: the runner ran no step on an empty PCollection
        if not tf.io.gfile.exists(f"{staging}/{fname}"):
            return []
        with tf.io.gfile.GFile(f"{staging}/{fname}") as f:
            content = json.load(f)
        tf.io.gfile.remove(f"{staging}/{fname}")
        return content

    counts = dict(read("counts.json"))
    bad = [(src.locate(u), reason) for u, _, reason in read("bad.json")]  # in listing order
    if not counts:
        raise DataError(f"{src.name}: no usable image among {len(src.paths):,} files")
    shards = [f"{name}-{shard_name(s, num_shards)}.tfrecord" for s in range(num_shards)]
    for s, fname in enumerate(shards):
        if s not in counts:
            tf.io.TFRecordWriter(f"{staging}/{fname}").close()
    total = int(sum(counts.values()))
    info = {
        "num_examples": total,
        "counts": {fname: int(counts.get(s, 0)) for s, fname in enumerate(shards)},
        "has_labels": src.labels is not None,
        "class_names": list(src.class_names) if src.class_names else None,
        "source": source_name(source),
        "skipped": len(bad),
    }
    atomic_write(f"{staging}/{name}.bt-data.json", json.dumps(info, indent=2))
    report_skipped(bad + src.ignored, total, f"{staging}/{name}.skipped.tsv", shown_as=f"{out}/{name}.skipped.tsv")
    return info
