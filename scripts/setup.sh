#!/usr/bin/env bash
# Creates .venv with the pinned dependencies, after checking the system libraries headless OpenGL needs.
# Installs those with apt when run as root; otherwise prints the one command to run and stops.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES="libegl1 libgl1-mesa-dri libegl-mesa0"
missing=$(for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "installing system packages for headless OpenGL: $missing"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
    else
        echo "handlib needs these system packages for headless OpenGL rendering: $missing" >&2
        echo "install them, then run make again:  sudo apt-get install -y $missing" >&2
        exit 1
    fi
fi

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "handlib needs Python >= 3.10; $PYTHON is $("$PYTHON" --version 2>&1). Set PYTHON=python3.11 and retry." >&2
    exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -r requirements.txt
.venv/bin/pip install -q --no-deps -e .
if [ -f requirements-mediapipe.txt ]; then
    # mediapipe 0.10.14 declares deps that conflict with tensorboard (reference.md): install it without them.
    .venv/bin/pip install -q --no-deps -r requirements-mediapipe.txt
fi
echo "environment ready: .venv"
