#!/usr/bin/env python3
"""Embed images with an exported bt_keras encoder in ONNX Runtime, without TensorFlow.

The ONNX model takes preprocessed NHWC float32 images (ONNX cannot decode
JPEG/PNG). This client applies the preprocessing contract recorded in the
model's ``metadata_props``, reproducing the SavedModel's ``serving_default``
signature: decode to RGB (Pillow), centre crop of ``crop_fraction`` × the
shorter side, bilinear resize with half-pixel centres and no antialiasing (as
``tf.image.resize``), scale to [0, 1], ``(x - mean) / std``.

It answers hostile input as the SavedModel does: an image of more than the
export's ``--max-image-pixels`` (recorded in the metadata as ``max_image_pixels``;
``MAX_IMAGE_PIXELS``, 100 MP, for older exports) is refused from its header
before decoding (for a GIF, the larger of the canvas and the first frame;
only the first frame is decoded); so is a format the SavedModel does not
decode (only JPEG, PNG, GIF, BMP and WebP are read); a path that is not a regular file
(a FIFO, ``/dev/zero``) is refused without being opened; an image with a NaN
or infinite value gets a NaN row; an empty batch gives ``[0, dim]``. Errors
are one line (``onnx_client: error: ...``, exit code 2).

The int8 model of ``bt-export --quantize int8`` (``<name>.int8.onnx``) is
served the same way: same input, output and contract metadata; its
``metadata["precision"]`` is ``"int8"``.

Needs: numpy, onnxruntime, Pillow.

Usage::

    python export/onnx_client.py exports/cifar/onnx/encoder.onnx cat.jpg dog.png --out embeddings.npy
    python export/onnx_client.py exports/cifar/onnx/encoder.int8.onnx cat.jpg dog.png --out embeddings.npy

Python::

    from onnx_client import OnnxEncoder
    enc = OnnxEncoder("exports/cifar/onnx/encoder.onnx")
    emb = enc.embed_files(["cat.jpg", "dog.png"])    # [2, D] float32
"""

from __future__ import annotations

import argparse
import io
import json
import os
import stat
import sys
import warnings

import numpy as np

MAX_IMAGE_PIXELS = 100_000_000  # bt_keras.contract.MAX_IMAGE_PIXELS, the SavedModel's default limit
_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")  # what TensorFlow's decode_image reads


def _open_checked(data: bytes, max_pixels: int):
    """A lazily opened Pillow image (header read, nothing decoded) of at most ``max_pixels`` pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow's own bomb limits (89/179 MP) are replaced by ours, the same as the SavedModel's.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ValueError(f"image too large: more than the limit of {max_pixels:,} pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"not a decodable image: {e}") from None
    if image.format not in _FORMATS:
        image.close()
        raise ValueError(f"not a JPEG, PNG, GIF, BMP or WebP image ({image.format}): the SavedModel refuses it too")
    width, height = image.size  # a GIF's: its canvas, grown to the first frame's extent
    if width * height > max_pixels:
        image.close()
        raise ValueError(
            f"image too large: {width}x{height} = {width * height:,} pixels, more than the limit of {max_pixels:,}"
        )
    return image


def decode_rgb(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Encoded JPEG/PNG/BMP/GIF bytes → uint8 [H, W, 3] RGB (first frame of a GIF).

    Like TensorFlow's decoder, alpha is dropped (not composited) and EXIF
    orientation is ignored. An image of more than ``max_pixels`` pixels
    (read from the header) raises ``ValueError`` before decoding; so do
    undecodable bytes.
    """
    from PIL import Image

    with _open_checked(data, max_pixels) as image:
        image.seek(0)
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16-bit: keep the high byte, as tf.io.decode_png with dtype uint8 does.
            pixels = np.asarray(image, dtype=np.uint32) >> 8
            return np.repeat(pixels.astype(np.uint8)[..., None], 3, axis=-1)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                return np.asarray(image.convert("RGB"), dtype=np.uint8)
        except (OSError, SyntaxError) as e:
            raise ValueError(f"corrupt or truncated image: {e}") from None


def _resize_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """``tf.image.resize(method="bilinear", antialias=False)``: half-pixel centres, float32."""

    def weights(in_size: int):
        scale = np.float32(in_size) / np.float32(size)
        pos = (np.arange(size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
        floor = np.floor(pos)
        lower = np.maximum(floor, 0).astype(np.int64)
        upper = np.minimum(np.ceil(pos), in_size - 1).astype(np.int64)
        return lower, upper, (pos - floor).astype(np.float32)

    x = image.astype(np.float32)
    y0, y1, wy = weights(x.shape[0])
    x0, x1, wx = weights(x.shape[1])
    wx = wx[None, :, None]
    top = x[y0][:, x0] + (x[y0][:, x1] - x[y0][:, x0]) * wx
    bottom = x[y1][:, x0] + (x[y1][:, x1] - x[y1][:, x0]) * wx
    return top + (bottom - top) * wy[:, None, None]


class OnnxEncoder:
    """An exported encoder plus the preprocessing contract from its ``metadata_props``."""

    def __init__(self, path: str, threads: int | None = None, max_pixels: int | None = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
            message = " ".join(str(e).split())[:200]
            raise ValueError(f"{path}: not a loadable ONNX model: {message}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        missing = {"image_size", "mean", "std", "crop_fraction", "layout"} - set(meta)
        if missing:
            raise ValueError(f"{path} lacks the preprocessing metadata {sorted(missing)}: not a bt-export model?")
        if meta["layout"] != "NHWC":
            raise ValueError(f"unsupported layout {meta['layout']}")
        self.metadata = dict(meta)
        # The export's --max-image-pixels (recorded since it is), as the SavedModel applies it.
        self.max_pixels = max_pixels or int(meta.get("max_image_pixels", MAX_IMAGE_PIXELS))
        self.image_size = int(meta["image_size"])
        self.mean = np.asarray(json.loads(meta["mean"]), np.float32)
        self.std = np.asarray(json.loads(meta["std"]), np.float32)
        self.crop_fraction = float(meta["crop_fraction"])
        self.input_name = meta.get("input_name", self.session.get_inputs()[0].name)
        self.output_name = meta.get("output_name", self.session.get_outputs()[0].name)
        self._check_shapes(path)

    def _check_shapes(self, path: str) -> None:
        """Refuses a model that does not map a batch of images to ``[batch, dim]`` (as bt-export checks)."""
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        shape_in, shape_out = inputs.get(self.input_name), outputs.get(self.output_name)
        if shape_in is None or shape_out is None:
            raise ValueError(f"{path}: no input {self.input_name!r} or output {self.output_name!r}")
        if len(shape_out) != 2 or len(shape_in) != 4 or isinstance(shape_in[0], int):
            raise ValueError(
                f"{path}: expected a model from images [batch, S, S, 3] (any batch) to embeddings [batch, dim], "
                f"got {shape_in} -> {shape_out}"
            )

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """uint8 [H, W, 3] RGB → normalised float32 [S, S, 3], as the SavedModel does it."""
        height, width = image.shape[:2]
        side = max(int(np.float32(min(height, width)) * np.float32(self.crop_fraction)), 1)
        top, left = (height - side) // 2, (width - side) // 2
        crop = image[top : top + side, left : left + side]
        x = _resize_bilinear(crop, self.image_size) / np.float32(255.0)
        return ((x - self.mean) / self.std).astype(np.float32)

    def embed_pixels(self, batch: np.ndarray) -> np.ndarray:
        """Already preprocessed float32 [N, S, S, 3] → embeddings [N, D] (NaN rows for non-finite images)."""
        batch = np.ascontiguousarray(batch, dtype=np.float32).reshape([-1, self.image_size, self.image_size, 3])
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def embed_bytes(self, encoded: list, names: list | None = None) -> np.ndarray:
        """Encoded image bytes (JPEG/PNG/BMP/GIF) → embeddings [N, D]; ``ValueError`` names the bad image."""
        names = names or [f"image {i}" for i in range(len(encoded))]
        pixels = []
        for name, data in zip(names, encoded):
            try:
                pixels.append(self.preprocess(decode_rgb(data, self.max_pixels)))
            except ValueError as e:
                raise ValueError(f"{name}: {e}") from None
        shape = [len(pixels), self.image_size, self.image_size, 3]
        return self.embed_pixels(np.stack(pixels) if pixels else np.zeros(shape, np.float32))

    def embed_files(self, paths: list) -> np.ndarray:
        """Image files → embeddings [N, D]; only regular files are opened."""
        encoded = []
        for p in paths:
            # A FIFO would block and /dev/zero never ends: check before opening.
            if not stat.S_ISREG(os.stat(p).st_mode):
                raise ValueError(f"{p}: not a regular file")
            with open(p, "rb") as f:
                encoded.append(f.read())
        return self.embed_bytes(encoded, [str(p) for p in paths])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Embed images with a bt-export ONNX encoder.")
    p.add_argument("model", help="path to <name>.onnx")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", help="write the embeddings to this .npy file (default: print a summary)")
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args(argv)
    if args.batch < 1:
        print(f"onnx_client: error: --batch must be a positive integer, got {args.batch}", file=sys.stderr)
        return 2
    if args.out and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        print(f"onnx_client: error: --out {args.out}: its directory does not exist", file=sys.stderr)
        return 2
    try:
        encoder = OnnxEncoder(args.model)
        parts = [encoder.embed_files(args.images[i : i + args.batch]) for i in range(0, len(args.images), args.batch)]
    except (OSError, ValueError) as e:
        print(f"onnx_client: error: {e}", file=sys.stderr)
        return 2
    embeddings = np.concatenate(parts)
    if args.out:
        try:
            np.save(args.out, embeddings)
        except OSError as e:
            print(f"onnx_client: error: --out {args.out}: {e.strerror or e}", file=sys.stderr)
            return 2
        print(f"wrote {embeddings.shape} embeddings to {args.out}")
    else:
        for path, row in zip(args.images, embeddings):
            print(f"{path}: dim {row.shape[0]}, norm {np.linalg.norm(row):.4f}, first {np.round(row[:4], 4).tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
