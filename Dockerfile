# AdaptiveClick ML backend for Label Studio (and the base of the CVAT function). Two variants from this one file:
#
#   docker build -t adaptiveclick .                                  # CUDA: GPU hosts (and CPU hosts), ~6.8 GB
#   docker build --build-arg BASE_IMAGE=debian:sid-slim --build-arg TORCH_FROM=debian -t adaptiveclick:cpu .
#                                                                    # CPU only, no CUDA libraries: a fraction the size
#   docker build --build-arg FETCH_WEIGHTS=mae_vit_base -t adaptiveclick .    # also bake in registry weights
#   docker run --gpus all -p 127.0.0.1:9090:9090 -e LABEL_STUDIO_URL=http://<ls host>:8080 -e LABEL_STUDIO_API_KEY=<token> adaptiveclick
#
# No `# syntax=` line on purpose: it makes BuildKit fetch a frontend image from Docker Hub before every build, which
# fails wherever Docker Hub is out of reach; this file needs nothing beyond the builder's built-in syntax.
#
# BASE_IMAGE: any Debian/Ubuntu with python3 >= 3.11 in its apt sources. TORCH_FROM picks where torch comes from:
# - pypi (default): PyPI's torch==TORCH_VERSION, a CUDA TORCH_CUDA build that brings its own CUDA libraries (nvidia-*
#   wheels, ~6.4 GB); the default base is the matching CUDA runtime (host driver >= 580 for the GPU);
# - debian: Debian's python3-torch and python3-torchvision (CPU only, ~1/5 the size), for a base whose apt has
#   python3-torch at TORCH_VERSION (Debian sid since 2026-11: debian:sid-slim; pin a dated sid tag, e.g.
#   debian:sid-20261201-slim, for a reproducible build). torchvision is then Debian's, not pyproject's pin. OpenBLAS
#   (OpenMP, as torch) is installed with it: without it apt's choice is the reference BLAS, and a click took 3 s
#   instead of 0.1 s (measured by make test-docker).
# The build checks that the installed torch is TORCH_VERSION, built for CUDA TORCH_CUDA (pypi) or for the CPU (debian);
# keep both in step with pyproject.toml (tests/test_deploy.py checks that too).
ARG BASE_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04
FROM ${BASE_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ARG TORCH_FROM=pypi
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
RUN case "${TORCH_FROM}" in pypi) extra=(); venv=(); ;; \
      debian) extra=(python3-torch python3-torchvision libopenblas0-openmp); venv=(--system-site-packages); ;; \
      *) echo "TORCH_FROM=${TORCH_FROM}: use pypi or debian" >&2; exit 1 ;; esac \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates "${extra[@]}" \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv "${venv[@]}" /opt/venv

# Dependencies first (this layer survives code changes): the dependencies of pyproject.toml and its redis extra
# (SESSION_STORE and the RQ job queue of docker-compose.scale.yml); with TORCH_FROM=debian, torch and torchvision
# are Debian's (seen through the venv's system site-packages) and are left out of the list, and numpy stays Debian's
# (torch is built against it; without the constraint pip chose an older numpy with no wheel for sid's Python 3.14).
COPY pyproject.toml /tmp/src/
RUN python -c "import re, tomllib; p = tomllib.load(open('/tmp/src/pyproject.toml', 'rb'))['project']; skip = {'torch', 'torchvision'} if '${TORCH_FROM}' == 'debian' else set(); print('\n'.join(r for r in p['dependencies'] + p['optional-dependencies']['redis'] if re.split(r'[<>=!~ ;\[]', r)[0] not in skip))" > /tmp/requirements.txt \
 && if [ "${TORCH_FROM}" = debian ]; then python -c "import numpy; print('numpy==' + numpy.__version__)"; fi > /tmp/constraints.txt \
 && python -m pip install -r /tmp/requirements.txt -c /tmp/constraints.txt \
 && python -c "import sys, torch; v, c = torch.__version__.split('+')[0], torch.version.cuda or 'none'; want = '${TORCH_CUDA}' if '${TORCH_FROM}' == 'pypi' else 'none'; print('torch', v, 'CUDA', c); ok = v == '${TORCH_VERSION}' and c.startswith(want); sys.exit(0 if ok else f'torch {v} (CUDA {c}) is not torch ${TORCH_VERSION} for CUDA {want}: update the Dockerfile ARGs and base image with pyproject.toml')"

# The package itself (not editable; the source is removed afterwards).
COPY README.md /tmp/src/
COPY model/ /tmp/src/model/
COPY ml_backend/ /tmp/src/ml_backend/
COPY cli/ /tmp/src/cli/
RUN python -m pip install --no-deps /tmp/src && rm -rf /tmp/src /tmp/requirements.txt /tmp/constraints.txt

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

# /data/models: MODEL_DIR, checkpoints you add and fine-tuned versions (kept over a rebuild). /app/weights is NOT a
# volume: it is part of the image, and an anonymous volume there would keep serving the old weights after a rebuild
# (compose recreates a container with its old anonymous volumes).
VOLUME ["/data/models"]
EXPOSE 9090
# Healthy = /health answers 200: the model is loaded and ready for clicks. While it loads /health answers 503
# (unhealthy, which the start period covers); a model that failed to load stays unhealthy.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import json, os, sys, urllib.request as r; h = json.load(r.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '9090'), timeout=8)); sys.exit(1 if h.get('model_error') else 0)"]
# gunicorn with uvicorn workers; WORKERS / THREADS / PORT come from the environment.
CMD ["adaptiveclick", "serve"]
