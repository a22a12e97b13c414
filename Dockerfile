# syntax=docker/dockerfile:1
#
# bonexr inference image. Two build arguments:
#
#   DEVICE=gpu (default) | cpu
#       gpu: NVIDIA CUDA 13 + cuDNN 9 runtime base with onnxruntime-gpu (the `gpu` extra).
#            onnxruntime-gpu 1.27 and later (the pyproject range resolves to 1.31) are built
#            against CUDA 13 (libcudart.so.13, libcublas.so.13) and cuDNN 9; the host needs an
#            NVIDIA driver >= 580 and nvidia-container-toolkit.
#       cpu: plain Ubuntu 24.04 with onnxruntime (the `cpu` extra); used by
#            docker-compose.cpu.yml.
#   CPU_BASE unset (default: ubuntu:noble-20251001) | another image
#       the CPU stage's base image. Any Debian or Ubuntu image with apt works: Python 3 and
#       its venv module come from the base's own archive when the base lacks them (Ubuntu
#       24.04: 3.12; Debian 12 bookworm: 3.11). `make image-test` builds with
#       CPU_BASE=localhost/debian-base:bookworm, a debootstrapped Debian made without any
#       registry (scripts/image-test, docs/deploy.md).
#   DEMO_BUNDLE=1 (default) | 0
#       1: a builder stage with the `train` + `cpu` extras runs `bonexr demo`; only the
#          resulting synthetic demo bundle is copied into the image, at /opt/bonexr/demo, and
#          linked as /app/models/demo, so the container answers predictions out of the box.
#          Mounting real bundles over /app/models hides the link (see docs/deploy.md).
#       0: skip it (no TensorFlow download, fast rebuilds); mount a real bundle instead.
#
# Build hosts behind a TLS-intercepting proxy pass its CA bundle as a build secret, used by
# pip only and never stored in a layer:  --secret id=build-ca,src=/path/to/ca-bundle.crt
#
# The serving image has no TensorFlow: the service runs the bundle's ONNX models in ONNX
# Runtime. Configuration is BONEXR_* environment variables (service/settings.py).
# Needs BuildKit (the default builder since Docker 23, and always used by `docker compose`),
# or podman/buildah with --format docker (keeps the HEALTHCHECK): `make image-test`.

ARG DEVICE=gpu
ARG DEMO_BUNDLE=1
ARG CPU_BASE=""

# ---- base images (pinned tags; see docs/deploy.md to pin digests too) ----------------------
# The GPU stage stays on NVIDIA's CUDA image. It has never been built on the development
# machines (no registry access, no GPU): the first build on a GPU host is its test.
FROM nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04 AS base-gpu
# CPU_BASE unset (the default): the pinned Ubuntu tag on this line. Set, it names another
# Debian/Ubuntu image (make image-test: localhost/debian-base:bookworm, never pulled).
FROM ${CPU_BASE:-ubuntu:noble-20251001} AS base-cpu

# ---- the chosen base plus Python (Ubuntu 24.04: 3.12, Debian 12: 3.11) --------------------
# base-${DEVICE} names one of the two pinned stages above, not a registry image.
# hadolint ignore=DL3006
FROM base-${DEVICE} AS pybase
ARG DEBIAN_FRONTEND=noninteractive
# The distribution's own python3 package tracks security updates within its release;
# pinning its exact version would break the build as soon as the archive moves on. Bases
# without a python3 of 3.11 or 3.12 (Ubuntu, CUDA, debootstrapped Debian) get the archive's.
# hadolint ignore=DL3008
RUN if ! python3 -c 'import sys; assert (3, 11) <= sys.version_info[:2] < (3, 13)' 2>/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 \
        && rm -rf /var/lib/apt/lists/* \
        && python3 -c 'import sys; assert (3, 11) <= sys.version_info[:2] < (3, 13), sys.version'; \
    fi
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# ---- build the service virtualenv: bonexr[service,<device>] into /opt/venv ----------------
FROM pybase AS venv
ARG DEVICE
ARG DEBIAN_FRONTEND=noninteractive
# Same reason as above: python3-venv must match the python3 package of this release. Only
# when the base's Python lacks ensurepip (Debian and Ubuntu split it out).
# hadolint ignore=DL3008
RUN if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bonexr ./bonexr
COPY service ./service
COPY training ./training
# Versions are bounded by pyproject.toml's ranges (the project's single source of truth).
# hadolint ignore=DL3013
RUN --mount=type=secret,id=build-ca \
    if [ -s /run/secrets/build-ca ]; then export PIP_CERT=/run/secrets/build-ca; fi \
    && /opt/venv/bin/pip install "/src[service,s3,${DEVICE}]" \
    && /opt/venv/bin/python -c "import onnxruntime, boto3, service.doors.http.app" \
    && /opt/venv/bin/bonexr serve --help > /dev/null

# ---- demo bundle: DEMO_BUNDLE=0 copies only a README, DEMO_BUNDLE=1 trains the demo --------
FROM scratch AS demo-0
COPY docker/models-README.md /models/README.md

FROM python:3.11.13-slim-bookworm AS demo-1
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bonexr ./bonexr
COPY service ./service
COPY training ./training
# Versions are bounded by pyproject.toml's ranges (the project's single source of truth).
# hadolint ignore=DL3013
RUN --mount=type=secret,id=build-ca \
    if [ -s /run/secrets/build-ca ]; then export PIP_CERT=/run/secrets/build-ca; fi \
    && pip install "/src[train,cpu]"
# Synthetic data and training runs stay in /tmp of this throw-away stage; only the verified
# bundle folder is copied into the serving image, readable by the non-root service user.
RUN bonexr demo --out /models/demo --data /tmp/synthetic/MURA-v1.1 --run-dir /tmp/runs/demo \
    && bonexr verify /models/demo \
    && chmod -R a+rX /models \
    && rm -rf /tmp/synthetic /tmp/runs
COPY docker/models-README.md /models/README.md

# demo-${DEMO_BUNDLE} names one of the two stages above, not a registry image.
# hadolint ignore=DL3006
FROM demo-${DEMO_BUNDLE} AS demo

# ---- the serving image -------------------------------------------------------------------
FROM pybase AS runtime
ARG DEVICE
LABEL org.opencontainers.image.title="bonexr" \
      org.opencontainers.image.description="Bone X-ray triage service (ONNX Runtime). Not a medical device." \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=venv /opt/venv /opt/venv
# Bundles are read-only for the service user (owned by root, world-readable). The demo lives
# outside /app/models so it stays reachable (BONEXR_BUNDLE=/opt/bonexr/demo) when real
# bundles are mounted over /app/models, as docker-compose.yml does.
COPY --from=demo --chown=root:root /models/ /opt/bonexr/
RUN groupadd --system --gid 10001 bonexr \
    && useradd --system --uid 10001 --gid bonexr --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin bonexr \
    && install -d -o root -g root -m 0755 /app /app/models \
    && install -d -o bonexr -g bonexr -m 0700 /app/uploads \
    && cp /opt/bonexr/README.md /app/models/README.md \
    && if [ -f /opt/bonexr/demo/manifest.json ]; then ln -s /opt/bonexr/demo /app/models/demo; fi
ENV PATH=/opt/venv/bin:$PATH \
    BONEXR_HOST=0.0.0.0 \
    BONEXR_PORT=8000 \
    BONEXR_MODELS_DIR=/app/models \
    BONEXR_UPLOAD_DIR=/app/uploads \
    BONEXR_DEVICE=${DEVICE}
WORKDIR /app
USER 10001:10001
EXPOSE 8000
# Uploads are state: a volume. /app/models is deliberately not a VOLUME: an anonymous volume
# would snapshot the baked demo, and compose re-attaches anonymous volumes when it recreates
# a container, so a rebuilt image would keep serving the old bundle. Bind-mount it instead.
VOLUME ["/app/uploads"]
# Readiness probe with the image's own Python (no curl in the image): healthy = the bundle
# is loaded and verified and the upload store is writable (/ready), so `docker ps`, compose's
# depends_on and the proxy see the same thing. It reads BONEXR_PORT so it follows a changed
# port; urlopen raises (exit 1) on refusal, timeout or any HTTP error (503 while loading).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/ready' % os.environ.get('BONEXR_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["bonexr"]
CMD ["serve"]
