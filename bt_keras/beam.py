"""What the Apache Beam pipelines of ``bt-embed`` and ``bt-data`` share (``--runner``).

:func:`require_beam` imports Beam (a one-line error naming the extra when it
is missing), :func:`pipeline_options` turns ``--runner`` and the Beam flags
passed through into ``PipelineOptions`` and quiets Beam's logs,
:func:`pipeline_failure` turns a runner's error into one line. Beam itself is
imported only here and in the pipeline modules
(:mod:`bt_keras.embed.beam`, :mod:`bt_keras.data.tfrecords_beam`), never by
``import bt_keras``.

Examples:

>>> shard_name(3, 8)
'00003-of-00008'
>>> str(pipeline_failure(RuntimeError("Traceback ...\\nValueError: bad file [while running 'Decode']")))
'the Beam pipeline failed (ValueError: bad file); nothing was published'
"""

from __future__ import annotations

import logging

from bt_keras.errors import UserError


def require_beam(verbose: bool = False) -> None:
    """Imports Apache Beam, or raises a one-line error naming ``pip install "bt_keras[beam]"``.

    Beam warns on the root logger while it is imported (about optional GCP
    clients): hidden unless ``verbose``.
    """
    root = logging.getLogger()
    level = root.level
    if not verbose:
        root.setLevel(logging.ERROR)
    try:
        import apache_beam  # noqa: F401
    except ImportError:
        raise UserError('--runner needs Apache Beam: pip install "bt_keras[beam]"') from None
    finally:
        root.setLevel(level)


def pipeline_options(runner: str, beam_args, verbose: bool = False):
    """``PipelineOptions`` for ``runner`` and Beam's own ``--flag=value`` options, passed through.

    Beam's log lines show from WARNING with ``verbose``, else not at all: a
    failure is the command's one line (:func:`pipeline_failure`).

    Args:
        runner: ``DirectRunner``, ``DataflowRunner``, ``FlinkRunner``, ``SparkRunner``, ...
        beam_args: the command-line flags bt_keras does not know (``--direct_num_workers=2``, ...).
        verbose: show Beam's warnings.
    """
    from apache_beam.options.pipeline_options import PipelineOptions

    logging.getLogger("apache_beam").setLevel(logging.WARNING if verbose else logging.CRITICAL)
    return PipelineOptions([f"--runner={runner}", *beam_args])


def pipeline_failure(e: Exception) -> UserError:
    """A runner's error (a worker's exception, wrapped) as one line: its last line, without Beam's step note."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    last = (lines[-1] if lines else type(e).__name__).split(" [while running")[0]
    return UserError(f"the Beam pipeline failed ({last[:300]}); nothing was published")


def shard_name(shard: int, num_shards: int) -> str:
    """``SSSSS-of-TTTTT``, as TFRecord shards are named."""
    return f"{shard:05d}-of-{num_shards:05d}"


class BytesSource:
    """One file's bytes, shaped as the source :func:`bt_keras.data.validation.diagnose` reads.

    Args:
        data: the file's content.
    """

    def __init__(self, data: bytes):
        self.data = data

    def read(self, uid):
        return self.data

    def image_bytes(self, data):
        return data, None
