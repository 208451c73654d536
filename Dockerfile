# One image for every part of a federation: SuperLink, SuperNodes and the experiment runner
# (docker-compose.yml, federation=docker). Build: docker build -t flbackdoor:latest .
#
# The pinned torch wheels carry CUDA (their nvidia-* wheels): a container given a GPU by the
# NVIDIA Container Toolkit uses it, the same image runs on CPU everywhere else. No secrets are
# baked in: certificates and node keys are made at run time into a volume (/certs).
#
# BASE_IMAGE: the public Python image by default. On a Docker engine that reaches no registry,
# scripts/docker-base.sh makes a local stand-in (Debian bookworm + Python 3.11) first:
#   scripts/docker-base.sh && docker build --build-arg BASE_IMAGE=flbackdoor-base:bookworm -t flbackdoor:latest .
# (scripts/docker-build.sh does both.)
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_HOME=/tmp/flwr \
    MPLCONFIGDIR=/tmp/matplotlib

# The user, the folders and the image's settings come first: they depend on nothing, and on
# engines whose storage driver diffs each step by walking the image (fuse-overlayfs) every step
# after the 5.5 GB layer costs about 30 s. The default user is uid 1000; compose and
# federation=docker run the containers as the calling user (FLBACKDOOR_USER, --user) so that
# results are theirs: any uid can write these folders.
RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin flwr \
    && mkdir -p /app /data /results /cache /certs /state \
    && chown flwr:flwr /data /results /cache /certs /state \
    && chmod 1777 /results /cache /certs /state
# Data in, results out; /cache (partition caches), /certs and /state (the SuperLink's database)
# are volumes in docker-compose.yml.
VOLUME ["/data", "/results"]
# 9092: Fleet API (SuperNodes dial it), 9093: Control API (flwr run, node registration).
EXPOSE 9092 9093
CMD ["flbackdoor", "--help"]
WORKDIR /app

# Layer 1, the big one (~5.5 GB): torch and torchvision, pinned as a pair as in pyproject.toml.
RUN pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1

# Layer 2: the other dependencies, read from pyproject.toml alone, so editing the source
# rebuilds neither this layer nor the one above.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Layer 3, last: the source, installed editable (`flwr run` builds the Flower App from /app). A
# source change rebuilds only these three steps.
COPY . .
RUN pip install --no-cache-dir --no-deps -e .
USER 1000:1000
