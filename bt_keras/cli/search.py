"""``bt-search``: the nearest neighbours, in a saved embedding set, of images that need not be in it.

    bt-search emb/photos new.jpg other.png --run runs/photos
    bt-search emb/photos folder:incoming --onnx exports/photos/onnx/encoder.onnx -k 5 --out matches.tsv

Each image (a file, or every image of a ``folder:PATH``) is embedded by the
encoder given (the same flags as ``bt-embed``; its preprocessing contract
must be the one the set was embedded with, recorded in ``embeddings.json``)
and looked up in the set's saved index (``ann.faiss``, written by
``bt-embed``). The result is a TSV (quoted like ``index.tsv``): ``query``,
``rank``, ``similarity``, ``row``, ``path``; on stdout, or written atomically
to ``--out``. A file that is not a readable image is a one-line error.
"""

from __future__ import annotations

import sys

from bt_keras.cli import ArgumentParser, load_tensorflow, run_command
from bt_keras.cli.args import add_encoder_arguments, load_encoder_from_args, positive_int
from bt_keras.errors import UserError

PROG = "bt-search"
COLUMNS = ("query", "rank", "similarity", "row", "path")


def build_parser() -> ArgumentParser:
    """The ``bt-search`` argument parser."""
    parser = ArgumentParser(prog=PROG, description="Nearest neighbours of images in a saved bt-embed set.")
    parser.add_argument("embeddings", help="a bt-embed output directory (embeddings.json, ann.faiss)")
    parser.add_argument("images", nargs="+", help="image files, or folder:PATH (every image under it)")
    add_encoder_arguments(parser)
    parser.add_argument("-k", type=positive_int, default=10, help="neighbours per image (default 10)")
    parser.add_argument("--out", help="write the TSV here (default: stdout)")
    return parser


def query_files(items) -> list:
    """The image files named: files as given, ``folder:PATH`` expanded to its images (sorted).

    >>> query_files(["/nonexistent.jpg"])
    Traceback (most recent call last):
    ...
    bt_keras.errors.UserError: /nonexistent.jpg: no such file (give image files or folder:PATH)
    """
    import os

    files = []
    for item in items:
        if item.startswith("folder:"):
            from bt_keras.data.sources import FolderSource

            files.extend(FolderSource(item[len("folder:") :]).paths)
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise UserError(f"{item}: no such file (give image files or folder:PATH)")
    return files


def write_results(stream, files, results) -> None:
    """The TSV rows of each query's neighbours."""
    from bt_keras.embed.writer import tsv_writer

    writer = tsv_writer(stream)
    writer.writerow(COLUMNS)
    for file, found in zip(files, results):
        for rank, (row, sim, path) in enumerate(found, 1):
            writer.writerow([file, rank, f"{sim:.6f}", row, path])


def _main(argv) -> int:
    import os

    args = build_parser().parse_args(argv)
    if not os.path.isfile(os.path.join(args.embeddings, "embeddings.json")):
        raise UserError(f"{args.embeddings}: not a bt-embed output directory (no embeddings.json)")
    load_tensorflow()
    from bt_keras.embed.embedding_set import EmbeddingSet
    from bt_keras.io import atomic_path

    files = query_files(args.images)  # a bad folder is a DataError: a UserError, one line
    encoder = load_encoder_from_args(args)
    emb_set = EmbeddingSet.open(args.embeddings, encoder)
    if emb_set.ann_index() is None:
        raise UserError(f"{args.embeddings}: no nearest-neighbour index (ann.faiss); run bt-embed with FAISS installed")
    results = emb_set.search(files, args.k)
    if args.out:
        with atomic_path(args.out) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
            write_results(f, files, results)
    else:
        write_results(sys.stdout, files, results)
    return 0


def main(argv=None) -> int:
    """``bt-search`` entry point; returns the exit code."""
    return run_command(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
