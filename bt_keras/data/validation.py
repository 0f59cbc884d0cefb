"""Bad files: checking images before training, diagnosing each bad one, reporting them.

``full`` validation decodes everything (in :mod:`~bt_keras.data.prepare`);
``quick`` validation (:func:`quick_check`) checks size, format signature,
end markers and the pixel count in the header inside the pipeline
without decoding, and every flagged item is then diagnosed on its own
(:func:`diagnose`) for a precise one-line reason. Both refuse images of more
than ``max_pixels`` pixels before decoding them (decompression bombs).
:func:`report_skipped` writes the list as TSV (fields escaped with
:func:`tsv_field`, so no file name can add a row) and logs a one-line
summary through ``logging.getLogger("bt_keras")``.

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

from bt_keras.contract import MAX_IMAGE_PIXELS
from bt_keras.errors import one_line
from bt_keras.io import atomic_write, is_remote
from bt_keras.preprocess import decode_rgb, header_size

__all__ = [
    "confirm_quick",
    "diagnose",
    "image_size",
    "parse_tsv_field",
    "quick_check",
    "reason_summary",
    "reasons",
    "report_skipped",
    "sniff",
    "too_large",
    "tsv_field",
]

log = logging.getLogger("bt_keras")
MAX_DIAGNOSED = 10_000  # bad items examined one by one for a precise reason

_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF8", "GIF"), (b"BM", "BMP"))


def sniff(data: bytes) -> str | None:
    """The image format from the first bytes (JPEG, PNG, GIF, BMP, WebP), or None."""
    for magic, fmt in _SIGNATURES:
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


def image_size(data: bytes) -> tuple | None:
    """``(height, width)`` from the header of encoded image bytes, without decoding; None if unreadable.

    >>> import tensorflow as tf
    >>> image_size(tf.io.encode_png(tf.zeros([3, 5, 1], tf.uint8)).numpy())
    (3, 5)
    """
    try:
        if sniff(data) == "JPEG":
            shape = tf.io.extract_jpeg_shape(data)
        else:
            shape = header_size(tf.constant(data))
    except (tf.errors.OpError, ValueError):
        return None
    height, width = int(shape[0]), int(shape[1])
    return (height, width) if height >= 0 and width >= 0 else None


def too_large(size: tuple | None, max_pixels: int) -> str | None:
    """The skip reason of an image of ``size`` above ``max_pixels``, else None.

    >>> too_large((20000, 20000), 100_000_000)
    'too large: 20000x20000 = 400,000,000 pixels, more than data.max_image_pixels (100,000,000)'
    """
    if size is None or size[0] * size[1] <= max_pixels:
        return None
    height, width = size
    return f"too large: {width}x{height} = {width * height:,} pixels, more than data.max_image_pixels ({max_pixels:,})"


def diagnose(source, uid, max_pixels: int = MAX_IMAGE_PIXELS) -> str | None:
    """Why item ``uid`` cannot be used (one line), or None if it decodes after all.

    The size is read from the header first: an image above ``max_pixels`` is
    reported as too large without being decoded.
    """
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
    reason = too_large(image_size(data), max_pixels)
    if reason is not None:
        return reason
    try:
        decode_rgb(tf.constant(data), max_pixels)
    except tf.errors.OpError as e:
        return f"corrupt or truncated {fmt}: {one_line(e)}"
    return None


def quick_check(data, max_pixels: int = MAX_IMAGE_PIXELS):
    """0 if ``data`` looks like a complete image, else a reason code; never raises.

    An image whose header announces more than ``max_pixels`` pixels is
    flagged (code 5).
    """
    n = tf.strings.length(data)
    head = tf.strings.substr(data, 0, 8)
    is_jpeg = tf.strings.substr(head, 0, 3) == b"\xff\xd8\xff"
    is_png = head == b"\x89PNG\r\n\x1a\n"
    is_gif = tf.strings.substr(head, 0, 4) == b"GIF8"
    is_bmp = tf.strings.substr(head, 0, 2) == b"BM"
    is_webp = (tf.strings.substr(data, 0, 4) == b"RIFF") & (tf.strings.substr(data, 8, 4) == b"WEBP")
    # Files often carry padding after the JPEG end marker: look for it near the end.
    tail = tf.strings.bytes_split(tf.strings.substr(data, tf.maximum(n - 256, 0), 256))
    jpeg_end = tf.reduce_any((tail[:-1] == b"\xff") & (tail[1:] == b"\xd9"))
    png_end = tf.strings.substr(data, tf.maximum(n - 8, 0), 4) == b"IEND"
    size = header_size(data)
    return tf.case(
        [
            (size[0] * size[1] > max_pixels, lambda: 5),
            (n == 0, lambda: 1),
            (~(is_jpeg | is_png | is_gif | is_bmp | is_webp), lambda: 2),
            (size[0] < 0, lambda: 2),  # a size the header check cannot read: refused when decoded
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
    5: "too large: more pixels than data.max_image_pixels",
}


def reasons(src, bad_uids, max_pixels: int = MAX_IMAGE_PIXELS) -> list:
    """``(location, reason)`` of each bad item (the first ``MAX_DIAGNOSED`` diagnosed one by one)."""
    out = []
    for i, u in enumerate(bad_uids):
        reason = diagnose(src, u, max_pixels) if i < MAX_DIAGNOSED else "could not be decoded"
        out.append((src.locate(u), reason or "could not be decoded in the input pipeline"))
    return out


def confirm_quick(src, uids, codes, max_pixels: int = MAX_IMAGE_PIXELS):
    """Flagged items with their precise reasons; flags that decode after all are dropped."""
    skipped, cleared = [], []
    for u, c in zip(uids[codes != 0], codes[codes != 0]):
        reason = diagnose(src, u, max_pixels)
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


_TSV_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_TSV_UNESCAPES = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


def tsv_field(text: str) -> str:
    """``text`` as one TSV field: backslash, tab, newline and CR escaped as ``\\\\ \\t \\n \\r``.

    Bytes of a file name that are not UTF-8 (kept by Python as surrogate
    escapes, see :func:`os.fsdecode`) are written ``\\xNN``. So a file name
    can never split a row or add one; :func:`parse_tsv_field` reverses it.

    >>> tsv_field("a\\tb\\nc\\\\d"), tsv_field("caf\\udce9.png")
    ('a\\\\tb\\\\nc\\\\\\\\d', 'caf\\\\xe9.png')
    """
    out = []
    for ch in text:
        if "\udc80" <= ch <= "\udcff":
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        else:
            out.append(_TSV_ESCAPES.get(ch, ch))
    return "".join(out)


def parse_tsv_field(field: str) -> str:
    """The text :func:`tsv_field` escaped (``\\xNN`` back to a surrogate escape, as :func:`os.fsdecode` gives).

    >>> parse_tsv_field(tsv_field("x\\ty\\\\n\\udcff")) == "x\\ty\\\\n\\udcff"
    True
    """
    out, i = [], 0
    while i < len(field):
        ch = field[i]
        if ch == "\\" and i + 1 < len(field):
            nxt = field[i + 1]
            if nxt == "x":
                out.append(chr(0xDC00 + int(field[i + 2 : i + 4], 16)))
                i += 4
                continue
            out.append(_TSV_UNESCAPES.get(nxt, nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def report_skipped(skipped: list, num_examples: int, skipped_path: str | None, shown_as: str | None = None) -> None:
    """Writes ``skipped`` as TSV to ``skipped_path`` (if given) and logs a one-line summary.

    One row per item: ``path<TAB>reason``, both escaped by :func:`tsv_field`.
    An empty list still writes an (empty) file, so a run directory always says
    what was skipped. Files ``ignored:`` (not images by extension) are listed
    but not counted.

    Args:
        skipped: ``(path, reason)`` pairs.
        num_examples: usable images, for the "N of M" summary.
        skipped_path: TSV destination (local or ``gs://``), or None.
        shown_as: the path the summary names (default ``skipped_path``): where the
            file will be once published, when it is written into a staging directory.
    """
    if skipped_path is not None:
        parent = os.path.dirname(skipped_path)
        if parent and is_remote(parent):
            tf.io.gfile.makedirs(parent)
        atomic_write(
            skipped_path,
            "".join(f"{tsv_field(path)}\t{tsv_field(' '.join(reason.split()))}\n" for path, reason in skipped),
        )
    bad = [s for s in skipped if not s[1].startswith("ignored:")]
    if not bad:
        return
    total = num_examples + len(bad)
    where = (
        f"see {shown_as or skipped_path}"
        if skipped_path
        else "first: " + "; ".join(f"{tsv_field(p)} ({r})" for p, r in bad[:3])
    )
    log.warning("skipped %s of %s files: %s", f"{len(bad):,}", f"{total:,}", where)
