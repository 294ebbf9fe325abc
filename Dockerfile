# gemmserve image. One Dockerfile, two variants picked with a build argument:
#   docker build -t gemmserve:gpu .                       # CUDA 12 runtime + CuPy (default)
#   docker build -t gemmserve:cpu --build-arg VARIANT=cpu .   # slim Python, NumPy only
# Both run `python -m service` as a non-root user; every setting is a GEMMSERVE_* variable.

ARG VARIANT=gpu
# Pinned bases. The CUDA 12.6 runtime needs an NVIDIA driver >= 560 (docs/DEPLOY.md).
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu22.04
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- bases: Python 3.11 on each platform, plus tini so SIGTERM reaches the server -------------

FROM ${CUDA_IMAGE} AS base-gpu
# Ubuntu 22.04 ships Python 3.10; 3.11 comes from the distribution's own universe archive.
# DL3008: the base tag is pinned; pinning distro package versions breaks builds when the archive
# moves on, and security updates are what we want from these packages.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv tini \
 && rm -rf /var/lib/apt/lists/*

FROM ${PYTHON_IMAGE} AS base-cpu
# DL3008: as above.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*

# --- build: a virtualenv with the package and its runtime dependencies only -----------------

# DL3006: base-${VARIANT} is one of the stages above, whose images are pinned.
# hadolint ignore=DL3006
FROM base-${VARIANT} AS build
ARG VARIANT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python3.11 -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY engine ./engine
COPY service ./service
# Runtime dependencies only (no dev extra). Neither base has a compiler, so every dependency
# must come as a wheel: a build that would need one fails here rather than shipping it.
# A current pip first: the one Ubuntu's Python 3.11 bundles predates some wheels' metadata.
RUN extras=""; if [ "$VARIANT" = "gpu" ]; then extras="[gpu]"; fi \
 && /opt/venv/bin/pip install --no-cache-dir pip==24.3.1 \
 && /opt/venv/bin/pip install --no-cache-dir ".${extras}"

# --- runtime ------------------------------------------------------------------------------

# DL3006: as above.
# hadolint ignore=DL3006
FROM base-${VARIANT} AS runtime
LABEL org.opencontainers.image.title="gemmserve" \
      org.opencontainers.image.description="Image inference over im2col + GEMM (CuPy/cuBLAS or NumPy)" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid 10001 gemmserve \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin gemmserve \
 && install -d -o 10001 -g 10001 -m 0750 /var/cache/gemmserve

COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY models/digits/model.onnx models/digits/model.json ./models/digits/

# The same defaults as `make run`, except the bind address (a container must listen on all
# interfaces; Compose publishes 127.0.0.1:8000 only) and the autotune cache, which lives in a
# directory meant for a volume so restarts skip tuning. CuPy's compiled kernels go there too:
# the root filesystem is read-only at run time. GEMMSERVE_WORKERS HTTP worker processes hand
# images to the engine process in /dev/shm: run with --shm-size 256m (Compose sets shm_size).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    CUPY_CACHE_DIR=/var/cache/gemmserve/cupy \
    GEMMSERVE_MODEL=/app/models/digits \
    GEMMSERVE_HOST=0.0.0.0 \
    GEMMSERVE_PORT=8000 \
    GEMMSERVE_DEVICE=auto \
    GEMMSERVE_AUTOTUNE_CACHE=/var/cache/gemmserve/autotune.json \
    GEMMSERVE_WORKERS=2

VOLUME ["/var/cache/gemmserve"]
USER 10001:10001
EXPOSE 8000

# Liveness only (/healthz); readiness (/readyz) is for load balancers and Kubernetes.
# No curl in the image: the standard library does it.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('GEMMSERVE_PORT', '8000') + '/healthz', timeout=2)"]

# tini as PID 1 forwards SIGTERM to the server's supervisor (its workers drain, then the engine
# stops) and reaps children; exec form so no shell sits in between.
# `docker run IMAGE python -m engine.autotune ...` replaces CMD only.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["python", "-m", "service"]
