# syntax=docker/dockerfile:1
# AdaptiveClick ML backend for Label Studio. One image for GPU and CPU hosts (DEVICE=auto picks CUDA when present).
#
#   docker build -t adaptiveclick .
#   docker build --build-arg FETCH_WEIGHTS=mae_vit_base -t adaptiveclick .    # also bake in registry weights
#   docker run --gpus all -p 9090:9090 -e LABEL_STUDIO_URL=http://<ls host>:8080 -e LABEL_STUDIO_API_KEY=<token> adaptiveclick
#
# torch==2.14.1 from PyPI is a CUDA 13.0 build that brings its own CUDA libraries (nvidia-* wheels); the base image is
# the matching CUDA 13.0 runtime (host driver >= 580 for the GPU). Python: Ubuntu 24.04's python3 (3.12), in a venv.
# The build checks that the installed torch is TORCH_VERSION built for CUDA TORCH_CUDA (keep both in step with
# pyproject.toml; tests/test_deploy.py checks that too).
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ARG TORCH_VERSION=2.14.1
ARG TORCH_CUDA=13.0
# Comma-separated names from `adaptiveclick weights list` to download into the image (checksum-verified when the
# registry pins one). Empty: nothing is downloaded at build time.
ARG FETCH_WEIGHTS=

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

# Dependencies first (this layer survives code changes): the dependencies of pyproject.toml and its redis extra
# (SESSION_STORE and the RQ job queue of docker-compose.scale.yml).
COPY pyproject.toml /tmp/src/
RUN python -c "import tomllib; p = tomllib.load(open('/tmp/src/pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['redis']))" > /tmp/requirements.txt \
 && python -m pip install -r /tmp/requirements.txt \
 && python -c "import sys, torch; v, c = torch.__version__.split('+')[0], torch.version.cuda or 'none'; print('torch', v, 'CUDA', c); ok = v == '${TORCH_VERSION}' and c.startswith('${TORCH_CUDA}'); sys.exit(0 if ok else f'torch {v} (CUDA {c}) is not torch ${TORCH_VERSION} for CUDA ${TORCH_CUDA}: update the Dockerfile ARGs and base image with pyproject.toml')"

# The package itself (not editable; the source is removed afterwards).
COPY README.md /tmp/src/
COPY model/ /tmp/src/model/
COPY ml_backend/ /tmp/src/ml_backend/
COPY cli/ /tmp/src/cli/
RUN python -m pip install --no-deps /tmp/src && rm -rf /tmp/src /tmp/requirements.txt

RUN useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin adaptiveclick \
 && mkdir -p /app/weights /data/models \
 && chown -R adaptiveclick:adaptiveclick /app /data/models

WORKDIR /app
ENV HOST=0.0.0.0 \
    PORT=9090 \
    WORKERS=1 \
    THREADS=8 \
    DEVICE=auto \
    LOG_LEVEL=INFO \
    MODEL_DIR=/data/models \
    ADAPTIVECLICK_WEIGHTS_DIR=/app/weights

# The starter model (weights/starter.safetensors) and anything else in weights/ (see .dockerignore).
COPY --chown=adaptiveclick:adaptiveclick weights/ /app/weights/
USER 10001:10001
RUN if [ -n "${FETCH_WEIGHTS}" ]; then \
      for name in $(echo "${FETCH_WEIGHTS}" | tr ',' ' '); do \
        adaptiveclick weights fetch "$name" --dest /app/weights --no-progress || exit 1; \
      done; \
    fi

# weights/: the shipped (and build-fetched) checkpoints; /data/models: MODEL_DIR, checkpoints you add at run time.
VOLUME ["/app/weights", "/data/models"]
EXPOSE 9090
# Healthy = the server answers /health and the model did not fail to load (a model still loading is healthy).
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import json, os, sys, urllib.request as r; h = json.load(r.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '9090'), timeout=8)); sys.exit(1 if h.get('model_error') else 0)"]
# gunicorn with uvicorn workers; WORKERS / THREADS / PORT come from the environment.
CMD ["adaptiveclick", "serve"]
