"""``bt-data``: write a folder of images (or any source) as TFRecord shards for TPU runs.

Every image is decoded once to check it; bad files are skipped and listed in
``OUTPUT/NAME.skipped.tsv``. The shards hold the original encoded bytes
(JPEGs stay JPEGs, so training decodes only each crop) in a fixed shuffled
order, with ``image/class/label`` from the first-level sub-folders, and
``OUTPUT/NAME.bt-data.json`` records counts and class names. Output may be a
``gs://`` path. The output is built aside and published whole: an earlier
output of the same ``--name`` is refused unless ``--overwrite`` (which then
replaces all of it), and an interrupted run leaves the earlier output as it was.

Example::

    bt-data folder:~/photos/train gs://my-bucket/photos --name train --shards 64
    bt-train --config my.yaml --set data.source='tfrecord:gs://my-bucket/photos/train-*.tfrecord'
"""

from __future__ import annotations

import sys

from bt_keras.cli import ArgumentParser, UserError, load_tensorflow, run_command
from bt_keras.cli.args import seed

PROG = "bt-data"


def _parser() -> ArgumentParser:
    p = ArgumentParser(
        prog=PROG,
        description="Write images as TFRecord shards (image/encoded, image/class/label) for bt_keras.",
    )
    p.add_argument("source", help="folder:PATH, a plain directory path, tfds:NAME[:SPLIT] or demo[:SPLIT]")
    p.add_argument("output", help="output directory (local or gs://)")
    p.add_argument("--name", default="train", help="shard file prefix (default: train)")
    p.add_argument("--shards", type=int, default=8, help="number of shard files (default: 8)")
    p.add_argument("--data-dir", default=None, help="TFDS data directory for tfds: sources")
    p.add_argument("--seed", type=seed, default=0, help="seed of the fixed shuffle across shards")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a previous output of this --name in OUTPUT as a whole (all its shards and its sidecar)",
    )
    p.add_argument(
        "--runner",
        help="write with an Apache Beam pipeline on this runner (DirectRunner, DataflowRunner, FlinkRunner, "
        "SparkRunner; folder sources); Beam's own --flags follow (e.g. --direct_num_workers=2). Default: in-process",
    )
    return p


def _body(argv) -> int:
    parser = _parser()
    args, beam_args = parser.parse_known_args(argv)
    if beam_args and (not args.runner or not all(a.startswith("--") for a in beam_args)):
        parser.error(f"unrecognized arguments: {' '.join(beam_args)}")
    source = args.source
    if not source.startswith(("folder:", "tfds:", "tfrecord:", "demo")):
        source = "folder:" + source  # a bare path (local or gs://) is a folder
    if args.shards < 1:
        raise UserError(f"--shards: must be >= 1, got {args.shards}")

    load_tensorflow()
    if args.runner:
        info = _write_with_beam(source, args, beam_args)
    else:
        from bt_keras.data.tfrecords import write_tfrecords

        info = write_tfrecords(
            source,
            args.output,
            name=args.name,
            num_shards=args.shards,
            data_dir=args.data_dir,
            seed=args.seed,
            overwrite=args.overwrite,
        )
    out = args.output.rstrip("/")
    print(
        f"wrote {info['num_examples']:,} images in {len(info['counts'])} shards to "
        f"{out}/{args.name}-*.tfrecord"
        + (f" ({len(info['class_names'])} classes)" if info.get("class_names") else "")
        + (f"; skipped {info['skipped']:,}: see {out}/{args.name}.skipped.tsv" if info["skipped"] else "")
    )
    print(f"train with: data.source='tfrecord:{out}/{args.name}-*.tfrecord'")
    return 0


def _write_with_beam(source, args, beam_args) -> dict:
    """The same output, written by an Apache Beam pipeline (``--runner``)."""
    from bt_keras.beam import pipeline_options, require_beam

    require_beam(args.verbose)  # a missing extra is one line; Beam's import-time warnings hidden
    from bt_keras.data.tfrecords_beam import write_tfrecords_beam

    return write_tfrecords_beam(
        source,
        args.output,
        options=pipeline_options(args.runner, beam_args, args.verbose),
        name=args.name,
        num_shards=args.shards,
        seed=args.seed,
        overwrite=args.overwrite,
    )


def main(argv=None) -> int:
    """Entry point of the ``bt-data`` console script (SIGTERM: ``interrupted``, 130, the staging folder removed)."""
    from bt_keras.export.publish import stop_on_sigterm

    with stop_on_sigterm():
        return run_command(PROG, _body, argv)


if __name__ == "__main__":
    sys.exit(main())
