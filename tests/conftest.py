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


@functools.cache
def shared_tiny_base():
    """`funasr_swap.base.tiny_base(seed=0)`, made once per process for the modules that read it (`tiny_swap`'s
    base); tests never change it."""
    from funasr_swap.base import tiny_base

    return tiny_base(seed=0)


@functools.cache
def tiny_swap(target: str, strategy: str = "fresh"):
    """`swap_llm` of `shared_tiny_base()` into registry `target` with tiny random weights (seed 0, the family's default
    markers), made once per process and read by several modules (a Gemma-2 swap takes ~15 s, mostly loading its
    256k-token tokenizer). Tests never change it: one that trains or rewrites the model deep-copies it first."""
    from funasr_swap.swap import swap_llm

    model, processor = shared_tiny_base()
    return swap_llm(model, processor, target, strategy=strategy, random_weights="tiny")


@pytest.fixture(scope="session")
def qwen3_tokenizer():
    return real_tokenizer("qwen3")


@pytest.fixture
def transformers_log():
    """The messages transformers logs during a test (its loggers do not propagate to pytest's capture), with its
    once-per-process warnings re-armed so that an earlier test cannot hide one."""
    import logging

    import transformers  # noqa: F401  (installs Logger.warning_once, an lru_cache)

    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("transformers")
    logging.Logger.warning_once.cache_clear()
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)


@pytest.fixture(scope="session")
def tiny_base_folder(tmp_path_factory):
    """A tiny Fun-ASR-Nano (`funasr_swap.base.tiny_base`, the real Qwen3 tokenizer) saved as a Hugging Face folder;
    shared by the session: tests read it, never write into it."""
    from funasr_swap.base import tiny_base

    model, processor = tiny_base()
    folder = tmp_path_factory.mktemp("base") / "tiny"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama_folder(tmp_path_factory):
    """A random tiny LlamaForCausalLM with the real Llama-3 tokenizer, saved as a Hugging Face folder (a user's
    local LLM); shared by the session: tests read it, never write into it."""
    import torch
    from transformers import AutoModelForCausalLM

    from funasr_swap.llms import tiny_text_config

    folder = tmp_path_factory.mktemp("tiny-llama")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(tiny_text_config("Llama-3.2-1B")).save_pretrained(folder)
    real_tokenizer("llama3").save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def quick_world():
    """The quick world (`funasr-swap quickstart --quick`) with a swap into every family's target (Qwen3 too; about
    a minute on 2 cores), built once per pytest run in $FUNASR_SWAP_RUNS (the root conftest.py makes that folder),
    where the notebooks open it too; its folder. Tests read it, never write into it."""
    import os
    import shutil

    from funasr_swap.miniature import FAMILY_LLMS, open_world

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    return open_world("quick", list(FAMILY_LLMS), runs=os.environ["FUNASR_SWAP_RUNS"], log=lambda line: None).output


@pytest.fixture(scope="session")
def tiny_export(tiny_base_folder, tmp_path_factory):
    """`funasr-swap export` of the tiny base (f32; 64 wide, its encoder covers 122.9 s), made through the CLI once per
    session; tests read it, never write into it (copy it to change a part)."""
    from typer.testing import CliRunner

    from funasr_swap.cli import app

    folder = tmp_path_factory.mktemp("export") / "edge"
    result = CliRunner().invoke(app, ["export", str(tiny_base_folder), "-o", str(folder), "--outtype", "f32"])
    assert result.exit_code == 0, result.output
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith(f"wrote {folder}: ") and "(qwen3, f32), audio tower + adaptor max error" in last
    return folder


def onnx_stand_in(model, processor, path, ctc_branch=None, ctc_path=None) -> float:
    """`funasr_swap.export.export_onnx`'s stand-in (monkeypatched) for the tests whose claim is not the audio tower's
    ONNX export (the export and edge tests run it, ~15 s each): writes a placeholder file where the export writes
    each of its files, and reports no error."""
    for file in (path, ctc_path if ctc_branch is not None else None):
        if file is not None:
            file.write_bytes(b"onnx stand-in")
    return 0.0


def write_tone(path, seconds: float, freq: float = 220.0, rate: int = 16000):
    """A sine tone of `seconds` written to `path` as 16-bit wav; the path."""
    import numpy as np
    import soundfile

    t = np.arange(int(rate * seconds)) / rate
    soundfile.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, subtype="PCM_16")
    return path


def voice(seconds: float, seed: int, rate: int = 16000):
    """Noise under a tone whose pitch depends on the seed: distinct audio, distinct encoder outputs."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * np.sin(2 * np.pi * (150 + 200 * seed) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def audio_dependent_tiny_base(seed: int = 0):
    """The tiny base (`funasr_swap.base.tiny_base`) with its matrices redrawn at std 1/sqrt(fan_in); (model, processor).

    At the stock init (std 0.02) the tied embeddings dominate the last position, and every audio yields the same
    tokens (a newline, repeated): batched-equals-single would hold trivially. Redrawn, the answer depends on the audio.
    """
    import torch

    from funasr_swap.base import tiny_base

    model, processor = tiny_base(seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 2 and "embed_tokens" not in name:
                parameter.normal_(0.0, parameter.shape[1] ** -0.5, generator=generator)
    return model, processor
