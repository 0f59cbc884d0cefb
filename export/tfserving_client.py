#!/usr/bin/env python3
"""Embed images with a bt_keras encoder served by TF Serving's REST API (standard library only).

The ``serving_default`` signature takes the encoded image files (JPEG, PNG, BMP,
GIF) and does all preprocessing in the graph, so the client just sends the
bytes base64-encoded, in TF Serving's row format::

    POST http://HOST:8501/v1/models/<name>[/versions/<N>]:predict
    {"signature_name": "serving_default", "instances": [{"b64": "..."}, ...]}
    -> {"predictions": [[e_1, ..., e_D], ...]}

Usage::

    python export/tfserving_client.py cat.jpg dog.png --url http://localhost:8501 --model encoder
    python export/tfserving_client.py cat.jpg --print-request > request.json   # no server needed

Python::

    from tfserving_client import embed_files
    emb = embed_files(["cat.jpg"], url="http://localhost:8501", model="encoder")   # [[float] * D]
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import urllib.error
import urllib.request


def build_request(encoded_images, signature_name: str = "serving_default") -> dict:
    """The JSON body of a ``:predict`` call for a batch of encoded images."""
    return {
        "signature_name": signature_name,
        "instances": [{"b64": base64.b64encode(b).decode("ascii")} for b in encoded_images],
    }


def predict_url(url: str, model: str, version: int | None = None) -> str:
    """``<url>/v1/models/<model>[/versions/<version>]:predict``."""
    path = f"/v1/models/{model}" + (f"/versions/{version}" if version is not None else "") + ":predict"
    return url.rstrip("/") + path


def predict(body: dict, url: str, model: str, version: int | None = None, timeout: float = 30.0) -> list:
    """POSTs a predict request; returns ``predictions`` (one embedding per instance)."""
    request = urllib.request.Request(
        predict_url(url, model, version),
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read()
    except urllib.error.HTTPError as e:
        # TF Serving explains a rejected request (e.g. undecodable bytes) in {"error": ...}.
        detail = e.read().decode(errors="replace")
        try:
            parsed = json.loads(detail)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and "error" in parsed:  # any other body is shown as it is
            detail = str(parsed["error"])
        raise RuntimeError(f"TF Serving returned HTTP {e.code}: {' '.join(detail.split())[:300]}") from None
    try:
        reply = json.loads(text)
    except ValueError:
        reply = None
    if not isinstance(reply, dict) or not isinstance(reply.get("predictions"), list):
        shown = " ".join(text.decode(errors="replace").split())[:200]
        raise RuntimeError(f"unexpected reply from TF Serving (no JSON 'predictions' list): {shown}")
    return reply["predictions"]


def embed_bytes(encoded_images, url: str = "http://localhost:8501", model: str = "encoder", version=None) -> list:
    """Encoded images → list of embeddings (lists of floats)."""
    return predict(build_request(encoded_images), url, model, version)


def embed_files(paths, url: str = "http://localhost:8501", model: str = "encoder", version=None) -> list:
    """Image files → list of embeddings (lists of floats)."""
    encoded = []
    for p in paths:
        with open(p, "rb") as f:
            encoded.append(f.read())
    return embed_bytes(encoded, url, model, version)


def _version(text: str) -> int:
    """A TF Serving model version: an integer from 1 to 2**63-1 (0 would silently mean the latest)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 2**63 - 1:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to 2**63-1, got {text!r}")
    return value


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Embed images through TF Serving's REST API.")
    p.add_argument("images", nargs="+", help="image files (JPEG, PNG, BMP, GIF)")
    p.add_argument("--url", default="http://localhost:8501", help="TF Serving REST address")
    p.add_argument("--model", default="encoder", help="model name (the --name given to bt-export)")
    p.add_argument("--version", type=_version, help="model version, 1 or more (default: the latest served)")
    p.add_argument("--print-request", action="store_true", help="print the JSON request instead of sending it")
    p.add_argument("--out", help="write the embeddings as JSON to this file")
    args = p.parse_args(argv)
    try:
        encoded = []
        for path in args.images:
            with open(path, "rb") as f:
                encoded.append(f.read())
        body = build_request(encoded)
        if args.print_request:
            json.dump(body, sys.stdout)
            sys.stdout.write("\n")
            return 0
        embeddings = predict(body, args.url, args.model, args.version)
    except (OSError, RuntimeError) as e:
        print(f"tfserving_client: error: {e}", file=sys.stderr)
        return 2
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"images": args.images, "embeddings": embeddings}, f)
        print(f"wrote {len(embeddings)} embeddings of dim {len(embeddings[0])} to {args.out}")
    else:
        for path, row in zip(args.images, embeddings):
            print(f"{path}: dim {len(row)}, first {[round(v, 4) for v in row[:4]]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
