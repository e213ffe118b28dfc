"""Shared fixtures: the real tokenizers, loaded once per test session."""

from __future__ import annotations

import functools
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing downloads in tests

from tokenmap.assets import load_tokenizer  # noqa: E402


@functools.cache
def real_tokenizer(name: str):
    """A real tokenizer by source name (`qwen3`, `llama3`, ...), loaded once per process."""
    return load_tokenizer(name)


@pytest.fixture(scope="session")
def qwen3_tokenizer():
    return real_tokenizer("qwen3")
