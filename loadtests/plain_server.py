"""The baseline for ``compare_servers``: a plain FastAPI + onnxruntime server without batching.

``python -m loadtests.plain_server --model M.onnx --port P`` runs one ``session.run`` per request in
FastAPI's thread pool, the way a first version of such a service is usually written.
``--noop`` answers without inference: the HTTP ceiling of the machine.
"""

from __future__ import annotations

import argparse
import io

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool


def create_app(model_path: str | None) -> FastAPI:
    app = FastAPI()

    @app.get("/readyz")
    async def readyz() -> dict:
        return {"status": "ready"}

    if model_path is None:

        @app.post("/predict")
        async def noop(request: Request) -> dict:
            await request.body()
            return {"ok": True}

        return app

    import onnxruntime

    session = onnxruntime.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def infer(body: bytes) -> dict:
        x = np.load(io.BytesIO(body), allow_pickle=False).astype(np.float32)
        logits = session.run(None, {input_name: x[None] if x.ndim == 3 else x})[0]
        results = []
        for row in logits:
            scores = np.exp(row - row.max())
            scores /= scores.sum()
            top = np.argsort(-scores)[:5]
            predictions = [{"index": int(i), "score": float(scores[i])} for i in top]
            results.append({"predictions": predictions})
        return {"results": results}

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        # One session.run per request, in the thread pool (what a plain `def` endpoint does).
        return await run_in_threadpool(infer, await request.body())

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="ONNX file (omit with --noop)")
    parser.add_argument("--noop", action="store_true", help="answer without inference")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    app = create_app(None if args.noop else args.model)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
