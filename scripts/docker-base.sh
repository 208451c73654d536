#!/usr/bin/env bash
# Makes a local stand-in for the Dockerfile's default base image (python:3.11-slim-bookworm) on a
# Docker engine that cannot reach a container registry: a minimal Debian bookworm root file system
# (debootstrap, from Debian's package mirror) with Python 3.11 and a virtual environment on PATH
# (so `python` and `pip` behave as in the public image), imported with `docker import`.
#
#   scripts/docker-base.sh [TAG]        # default TAG: flbackdoor-base:bookworm
#   docker build --build-arg BASE_IMAGE=flbackdoor-base:bookworm -t flbackdoor:latest .
#
# Use it only where `docker pull python:3.11-slim-bookworm` fails (no registry reachable). Needs
# root and debootstrap (apt-get install debootstrap). Does nothing if TAG already exists, so the
# layers built on it stay cached between runs (FLBACKDOOR_BASE_REBUILD=1 makes it anew).
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), DEBOOTSTRAP_CACHE (the .deb
# cache kept between runs, default /var/cache/flbackdoor/debootstrap).
set -euo pipefail
TAG=${1:-flbackdoor-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${DEBOOTSTRAP_CACHE:-/var/cache/flbackdoor/debootstrap}

if [[ -z ${FLBACKDOOR_BASE_REBUILD:-} ]] && docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "docker-base: $TAG exists"
    exit 0
fi
command -v debootstrap >/dev/null || {
    echo "docker-base: debootstrap missing (apt-get install debootstrap)" >&2; exit 1; }

root=$(mktemp -d /tmp/flbackdoor-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
mkdir -p "$CACHE"
# minbase: essential + apt. python3-venv brings ensurepip (pip without Debian's PEP 668 lock);
# ca-certificates for HTTPS to the package index; passwd (useradd) is in minbase already.
debootstrap --variant=minbase --cache-dir="$CACHE" \
    --include=python3,python3-venv,ca-certificates,tzdata \
    bookworm "$root" "$MIRROR" >/dev/null
# The public image's interpreter is /usr/local/bin/python with its own pip; here a venv in
# /usr/local (bin/python, bin/pip) on the default PATH plays that part.
chroot "$root" python3 -m venv /usr/local/python
ln -sf /usr/local/python/bin/python "$root/usr/local/bin/python"
ln -sf /usr/local/python/bin/python3 "$root/usr/local/bin/python3"
ln -sf /usr/local/python/bin/pip "$root/usr/local/bin/pip"
ln -sf /usr/local/python/bin/pip3 "$root/usr/local/bin/pip3"
# The host's extra certificate authorities (a TLS-inspecting proxy between this machine and the
# package index, say) are trusted in the base as on the host, and pip reads the system store
# (its own bundle would not have them): `docker build` then reaches the index as the host does.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >/dev/null 2>&1
fi
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$root/etc/pip.conf"
# What a slim image drops: apt lists, caches, docs.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/locale/*
tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "flbackdoor local base: debootstrap bookworm minbase + python3.11 venv" \
    - "$TAG" >/dev/null
echo "docker-base: made $TAG ($(docker image inspect -f '{{.Size}}' "$TAG") bytes)"
