"""``bt-embed``: embed every image of a source with a trained encoder, into ``embeddings.npy`` + ``index.tsv``.

    bt-embed folder:photos --run runs/photos --out emb/photos
    bt-embed folder:photos --onnx exports/photos/onnx/encoder.onnx --out emb/photos --neighbors 8
    bt-embed tfrecord:'shards/*.tfrecord' --saved-model exports/photos --out emb --duplicates 0.95 --projector

The encoder is a run directory, a ``.keras`` file, a SavedModel or an ONNX
model from ``bt-export``; the preprocessing contract is the recorded one
(``--image-size/--mean/--std/--crop-fraction`` may repeat it, not contradict
it). Options write next to the embeddings: ``neighbors.png`` (each query and
its K nearest neighbours by cosine), ``duplicates.tsv`` (pairs at or above a
cosine threshold) and ``projector/`` (``tensorboard --logdir OUT/projector``).
Bad images are skipped and listed in ``skipped.tsv``. See :mod:`bt_keras.embed`.
"""

from __future__ import annotations

import sys
import time

from bt_keras.cli import ArgumentParser, load_tensorflow, run_command, use_tensorflow_backend
from bt_keras.cli.args import add_encoder_arguments, load_encoder_from_args, positive_int, run_max_image_pixels, seed
from bt_keras.errors import UserError

PROG = "bt-embed"


def similarity(text: str) -> float:
    """A cosine similarity threshold in [-1, 1].

    >>> similarity("0.95")
    0.95
    >>> similarity("2")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected a cosine similarity in [-1, 1], got '2'
    """
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a cosine similarity in [-1, 1], got {text!r}")
    return value


def build_parser() -> ArgumentParser:
    """The ``bt-embed`` argument parser."""
    parser = ArgumentParser(prog=PROG, description="Embed every image of a source with a trained encoder.")
    parser.add_argument(
        "source", help="folder:PATH, tfrecord:GLOB, tfds:NAME[:SPLIT] or demo[:SPLIT] (labels are optional)"
    )
    add_encoder_arguments(parser)
    parser.add_argument("--out", required=True, help="output directory (embeddings.npy, index.tsv, ...)")
    parser.add_argument("--overwrite", action="store_true", help="replace embeddings already in --out")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="images per batch (default 256)")
    parser.add_argument("--data-dir", help="TFDS data_dir")
    parser.add_argument(
        "--neighbors", type=positive_int, metavar="K", help="write neighbors.png: queries and their K nearest"
    )
    parser.add_argument(
        "--query",
        action="append",
        metavar="PATH",
        help="a query image for --neighbors (repeatable; an embedded path or any image file); "
        "default: --queries images drawn at random",
    )
    parser.add_argument("--queries", type=positive_int, default=8, help="random queries for --neighbors (default 8)")
    parser.add_argument(
        "--duplicates",
        type=similarity,
        metavar="THRESHOLD",
        help="write duplicates.tsv: pairs with cosine similarity >= THRESHOLD (e.g. 0.95)",
    )
    parser.add_argument("--projector", action="store_true", help="write TensorBoard Embedding Projector files")
    parser.add_argument(
        "--projector-max", type=positive_int, default=10_000, help="points in the projector (random sample above)"
    )
    parser.add_argument("--seed", type=seed, default=0, help="seed of the random queries and projector sample")
    parser.add_argument(
        "--no-index",
        action="store_true",
        help="do not build the nearest-neighbour index ann.faiss (built when FAISS is installed: bt_keras[index])",
    )
    parser.add_argument(
        "--runner",
        help="run as an Apache Beam pipeline on this runner (DirectRunner, DataflowRunner, FlinkRunner, "
        "SparkRunner; folder: sources); Beam's own --flags follow (e.g. --direct_num_workers=2). Default: in-process",
    )
    parser.add_argument(
        "--num-shards", type=positive_int, help="with --runner: embedding shards written (default: one per 50,000)"
    )
    return parser


class Progress:
    """A one-line progress bar on a terminal (stderr); nothing otherwise."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.start = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        width = 30
        filled = int(width * min(done / max(total, 1), 1.0))
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(f"\r{PROG}: [{bar}] {done:,}/{total:,} images, {rate:,.0f}/s")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.enabled = False  # once
            self.stream.write("\n")
            self.stream.flush()


def _check_args(args) -> None:
    """Argument checks that need no TensorFlow."""
    import os

    from bt_keras.embed.api import check_out_dir

    if args.query and not args.neighbors:
        raise UserError("--query needs --neighbors K")
    for q in args.query or ():
        # An image file, or a record of the source as index.tsv names it (FILE#N): checked before any work.
        if "#" not in q and not os.path.isfile(q):
            raise UserError(f"--query {q}: no such file")
    check_out_dir(args.out, args.overwrite)
    for name in ("encoder", "onnx"):
        path = getattr(args, name)
        if path and "://" not in path and not os.path.isfile(path):
            raise UserError(f"--{name} {path}: no such file")
    if args.run and "://" not in args.run and not os.path.isdir(args.run):
        raise UserError(f"--run {args.run}: no such directory")


def _parse(argv):
    """The arguments; with ``--runner``, the ``--flags`` bt-embed does not know are Beam's pipeline options."""
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    if beam_args and (not args.runner or not all(a.startswith("--") for a in beam_args)):
        parser.error(f"unrecognized arguments: {' '.join(beam_args)}")
    if args.num_shards and not args.runner:
        parser.error("--num-shards needs --runner")
    return args, beam_args


def _run_beam(args, beam_args):
    """The embedding pass as a Beam pipeline (``--runner``)."""
    from bt_keras.beam import pipeline_options, require_beam

    require_beam(args.verbose)  # a missing extra is one line; Beam's import-time warnings hidden
    from bt_keras.embed.beam import embed_folder_beam

    spec = {k: getattr(args, k) for k in ("run", "encoder", "saved_model", "onnx", "image_size", "mean", "std")}
    spec["crop_fraction"] = args.crop_fraction
    return embed_folder_beam(
        args.source,
        spec,
        args.out,
        options=pipeline_options(args.runner, beam_args, args.verbose),
        batch_size=args.batch_size,
        num_shards=args.num_shards,
        overwrite=args.overwrite,
        index=False if args.no_index else None,
    )


def _main(argv) -> int:
    args, beam_args = _parse(argv)
    use_tensorflow_backend(PROG)
    _check_args(args)
    load_tensorflow()
    from bt_keras.embed import embed_source

    progress = Progress()
    extras = []

    def finish(result):
        # In-process: written into the staging directory, so they are published with the embeddings.
        progress.close()
        if args.neighbors:
            _, queries, _, _ = result.write_neighbors(args.neighbors, args.query, args.queries, args.seed)
            extras.append(f"neighbours of {len(queries)} queries in {args.out}/neighbors.png")
        if args.duplicates is not None:
            _, count = result.write_duplicates(args.duplicates)
            extras.append(
                f"{count:,} pair{'' if count == 1 else 's'} >= {args.duplicates:g} in {args.out}/duplicates.tsv"
            )
        if args.projector:
            _, points = result.write_projector(args.projector_max, args.seed)
            extras.append(f"projector ({points:,} points) in {args.out}/projector")

    if args.runner:
        result = _run_beam(args, beam_args)
        finish(result)
    else:
        encoder = load_encoder_from_args(args)
        try:
            result = embed_source(
                args.source,
                encoder,
                args.out,
                batch_size=args.batch_size,
                data_dir=args.data_dir,
                overwrite=args.overwrite,
                progress=progress,
                max_image_pixels=run_max_image_pixels(args),
                finish=finish,
                index=False if args.no_index else None,
            )
        finally:
            progress.close()
    skipped = f", {result.num_skipped:,} skipped (see {args.out}/skipped.tsv)" if result.num_skipped else ""
    rate = result.num_images / max(result.seconds, 1e-9)
    where = result.embeddings_path if not args.runner else f"{args.out}/embeddings.shards.json"
    print(
        f"{PROG}: {result.num_images:,} images -> {where} ({result.num_images}x{result.dim} float32)"
        f"{skipped}, {rate:,.1f} images/s" + "".join(f"; {e}" for e in extras)
    )
    return 0


def main(argv=None) -> int:
    """``bt-embed`` entry point; returns the exit code (130 after SIGTERM or Ctrl-C: nothing published)."""
    from bt_keras.export.publish import stop_on_sigterm

    with stop_on_sigterm():
        return run_command(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
