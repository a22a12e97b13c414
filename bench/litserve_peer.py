"""The peer: LitServe serving a bonexr bundle, for :mod:`bench.peer_bench`.

What a user would write instead of running bonexr: a LitServe ``LitAPI`` around the same
two-stage engine (same runtime and precision choice:
:class:`service.adapters.engine.InferenceEngine`)
with bonexr's own decoding and preprocessing imported, so only the serving layer differs.
One request per image (``POST /predict``, multipart field ``file``), batched by LitServe
(``max_batch_size`` 8, ``batch_timeout`` 5 ms). No upload store: the peer keeps nothing,
which is exactly what bonexr's upload step adds (a durable, content-addressed copy).

    python -m bench.litserve_peer --bundle models/demo --port 8100
"""

import argparse
import os
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np
from starlette.requests import Request

from bonexr.imaging import decode_image, prepare_pixels
from bonexr.labels import display_name
from service.adapters.engine import InferenceEngine
from service.settings import Settings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class BonexrLitAPI(ls.LitAPI):
    """decode_request (bonexr decode + letterbox) -> batch -> predict_batch -> unbatch."""

    def __init__(self, bundle: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bundle = bundle

    def setup(self, device: str) -> None:
        self.engine = InferenceEngine(
            Settings(models_dir=self.bundle.parent, bundle=self.bundle.name)
        )
        self.engine.load()
        self.size = self.engine.input_size

    def decode_request(self, request: Request) -> np.ndarray:
        # LitServe reads this annotation at run time (no ``from __future__ import
        # annotations`` here): ``Request`` makes it hand over the parsed multipart form.
        data = request["file"].file.read()
        return prepare_pixels(decode_image(data), self.size)

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, x: np.ndarray) -> list[dict[str, Any]]:
        return [
            {
                "bone_type": display_name(p.bone_type),
                "abnormality_probability": p.abnormality_probability,
                "runtime": self.engine.runtime.describe(),
            }
            for p in self.engine.predict_batch(x)
        ]

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return output

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-timeout-ms", type=float, default=5.0)
    args = parser.parse_args(argv)
    api = BonexrLitAPI(
        args.bundle.resolve(),
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout_ms / 1000,
    )
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=120)
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
