#!/usr/bin/env bash
# Classify the example digits with curl. Start the service first (`make run`), then run this from
# the repository root. Each command prints one JSON answer on its own line; the same commands are
# in examples/README.md.
set -euo pipefail

# One image as the raw request body.
curl -s -w '\n' --data-binary @examples/digit-3.png -H 'Content-Type: image/png' http://127.0.0.1:8000/predict

# Several images in one multipart request: one result per file, in order.
curl -s -w '\n' -F file=@examples/digit-0.png -F file=@examples/digit-4.png -F file=@examples/digit-7.png 'http://127.0.0.1:8000/predict?top_k=1'

# A float32 tensor (1, 1, 8, 8), already preprocessed, as a NumPy .npy file.
curl -s -w '\n' --data-binary @examples/digit-5.npy -H 'Content-Type: application/x-npy' 'http://127.0.0.1:8000/predict?top_k=1'

# KServe v2 (Open Inference Protocol) with a JSON tensor; the answer holds the 10 logits.
curl -s -w '\n' -H 'Content-Type: application/json' --data-binary @examples/digit-3.v2.json http://127.0.0.1:8000/v2/models/digits/infer
