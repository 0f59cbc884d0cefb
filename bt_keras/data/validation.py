"""Bad files: checking images before training, diagnosing each bad one, reporting them.

``full`` validation decodes everything (in :mod:`~bt_keras.data.prepare`);
``quick`` validation (:func:`quick_check`) checks size, format signature and
end markers inside the pipeline without decoding, and every flagged item is
then diagnosed on its own (:func:`diagnose`) for a precise one-line reason.
:func:`report_skipped` writes the list as TSV and logs a one-line summary
through ``logging.getLogger("bt_keras")``.

Examples:

>>> from bt_keras.data.validation import sniff
>>> sniff(b"\\x89PNG\\r\\n\\x1a\\n...."), sniff(b"hello")
('PNG', None)
"""

from __future__ import annotations

import logging
import os

import numpy as np
import tensorflow as tf

from bt_keras.errors import one_line
from bt_keras.io import atomic_write, is_remote
from bt_keras.preprocess import decode_rgb

__all__ = ["confirm_quick", "diagnose", "quick_check", "reason_summary", "reasons", "report_skipped", "sniff"]

log = logging.getLogger("bt_keras")
MAX_DIAGNOSED = 10_000  # bad items examined one by one for a precise reason

_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF8", "GIF"), (b"BM", "BMP"))


def sniff(data: bytes) -> str | None:
    """The image format from the first bytes (JPEG, PNG, GIF, BMP), or None."""
    for magic, fmt in _SIGNATURES:
        if data.startswith(magic):
            return fmt
    return None


def diagnose(source, uid) -> str | None:
    """Why item ``uid`` cannot be used (one line), or None if it decodes after all."""
    try:
        data = source.read(uid)
    except Exception as e:  # noqa: BLE001 - any I/O failure is a reason to report
        return f"unreadable: {one_line(e)}"
    data, reason = source.image_bytes(data)
    if reason is not None:
        return reason
    if len(data) == 0:
        return "empty file"
    fmt = sniff(data)
    if fmt is None:
        head = data[:64]
        text = all(32 <= c < 127 or c in (9, 10, 13) for c in head)
        return "not an image: " + ("text content" if text else "unrecognised content")
    try:
        decode_rgb(tf.constant(data))
    except tf.errors.OpError as e:
        return f"corrupt or truncated {fmt}: {one_line(e)}"
    return None


def quick_check(data):
    """0 if ``data`` looks like a complete image, else a reason code; never raises."""
    n = tf.strings.length(data)
    head = tf.strings.substr(data, 0, 8)
    is_jpeg = tf.strings.substr(head, 0, 3) == b"\xff\xd8\xff"
    is_png = head == b"\x89PNG\r\n\x1a\n"
    is_gif = tf.strings.substr(head, 0, 4) == b"GIF8"
    is_bmp = tf.strings.substr(head, 0, 2) == b"BM"
    # Files often carry padding after the JPEG end marker: look for it near the end.
    tail = tf.strings.bytes_split(tf.strings.substr(data, tf.maximum(n - 256, 0), 256))
    jpeg_end = tf.reduce_any((tail[:-1] == b"\xff") & (tail[1:] == b"\xd9"))
    png_end = tf.strings.substr(data, tf.maximum(n - 8, 0), 4) == b"IEND"
    return tf.case(
        [
            (n == 0, lambda: 1),
            (~(is_jpeg | is_png | is_gif | is_bmp), lambda: 2),
            (is_jpeg & ~jpeg_end, lambda: 3),
            (is_png & ~png_end, lambda: 4),
        ],
        default=lambda: 0,
    )


QUICK_REASONS = {
    1: "empty file",
    2: "not an image: unrecognised content",
    3: "truncated JPEG: no end-of-image marker",
    4: "truncated PNG: no IEND chunk",
}


def reasons(src, bad_uids) -> list:
    """``(location, reason)`` of each bad item (the first ``MAX_DIAGNOSED`` diagnosed one by one)."""
    out = []
    for i, u in enumerate(bad_uids):
        reason = diagnose(src, u) if i < MAX_DIAGNOSED else "could not be decoded"
        out.append((src.locate(u), reason or "could not be decoded in the input pipeline"))
    return out


def confirm_quick(src, uids, codes):
    """Flagged items with their precise reasons; flags that decode after all are dropped."""
    skipped, cleared = [], []
    for u, c in zip(uids[codes != 0], codes[codes != 0]):
        reason = diagnose(src, u)
        if reason is None:
            cleared.append(u)
        else:
            skipped.append((src.locate(u), reason if reason else QUICK_REASONS[int(c)]))
    return skipped, np.array(cleared, np.int64)


def reason_summary(skipped) -> str:
    """Counts of skipped items by reason and one example path, for a one-line error."""
    if not skipped:
        return "nothing decodable"
    counts = {}
    for _, reason in skipped:
        key = reason.split(":")[0]
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) + f"; e.g. {skipped[0][0]}"


def report_skipped(skipped: list, num_examples: int, skipped_path: str | None) -> None:
    """Writes ``skipped`` as TSV to ``skipped_path`` (if given) and logs a one-line summary.

    An empty list still writes an (empty) file, so a run directory always says
    what was skipped. Files ``ignored:`` (not images by extension) are listed
    but not counted.

    Args:
        skipped: ``(path, reason)`` pairs.
        num_examples: usable images, for the "N of M" summary.
        skipped_path: TSV destination (local or ``gs://``), or None.
    """
    if skipped_path is not None:
        parent = os.path.dirname(skipped_path)
        if parent and is_remote(parent):
            tf.io.gfile.makedirs(parent)
        atomic_write(skipped_path, "".join(f"{path}\t{' '.join(reason.split())}\n" for path, reason in skipped))
    bad = [s for s in skipped if not s[1].startswith("ignored:")]
    if not bad:
        return
    total = num_examples + len(bad)
    where = f"see {skipped_path}" if skipped_path else "first: " + "; ".join(f"{p} ({r})" for p, r in bad[:3])
    log.warning("skipped %s of %s files: %s", f"{len(bad):,}", f"{total:,}", where)
