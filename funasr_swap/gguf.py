"""A swapped model's LLM as one GGUF file, written by llama.cpp's own converter.

llama.cpp's `convert_hf_to_gguf.py`, its `conversion/` package and its `gguf-py` ship in the source distribution of
`llama-cpp-python` (the installed wheel carries none of them, and PyPI's `gguf` package does not run this
converter). `fetch_converter` takes them from the sdist of the pinned version (`LLAMA_CPP_PYTHON_VERSION`, the one
set-up builds the runtime from) into a cache folder once, as `tokenmap fetch` does for the tokenizers; nothing here is
re-implemented. `write_gguf` writes the LLM of a Fun-ASR-Nano model (its `language_model` and `lm_head`, LoRA
already merged by the trainer) as a Hugging Face causal-LM folder and runs the converter on it in a subprocess.

What a family needs beyond the converter's defaults lives in `GGUF_FAMILIES`, one entry per chat family, each fix
measured on this project's models:
- Gemma-2: the converter reads the SentencePiece `tokenizer.model`, which a folder saved by transformers lacks (it
  writes `tokenizer.json`): the real one comes from tokenmap's cache, checked piece by piece against the model's;
  and which tokens are control tokens from `tokenizer_config.json`'s `added_tokens_decoder`, which transformers 5
  no longer writes: it is written from the tokenizer's added tokens.
- DeepSeek (llm, coder, V2, V3): under transformers 5 their tokenizers add no BOS when encoding, so the converter's
  hash of a test string matches none of its known pre-tokenizers: the name is given (the BPE rules are the same).
- DeepSeek-V2: llama.cpp reads `deepseek2.attention.q_lora_rank` even where the query is uncompressed (V2-Lite's
  null), except for the layer counts it recognises: 0 is written for null.
- DeepSeek-V3: transformers' config has no `scoring_func` (its code always routes with sigmoid scores); without it
  the converter writes no gating function and llama.cpp routes with softmax, V2's: "sigmoid" is written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tokenmap.io import atomic_folder

if TYPE_CHECKING:
    from transformers import FunAsrNanoForConditionalGeneration, PreTrainedTokenizerBase

__all__ = [
    "GGUF_FAMILIES",
    "LLAMA_CPP_PYTHON_VERSION",
    "GgufFamily",
    "OutType",
    "converter",
    "converter_dir",
    "fetch_converter",
    "gguf_family",
    "stage_llm",
    "write_gguf",
]

# The llama-cpp-python release whose sdist carries the converter; set-up builds the runtime from the same sdist.
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
CACHE_ENV = "FUNASR_SWAP_CACHE"
OutType = Literal["f32", "f16", "q8_0"]
_SDIST_ROOT = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/"
_CONVERTER_MEMBERS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


@dataclass(frozen=True)
class GgufFamily:
    """What llama.cpp's converter needs for one chat family beyond a transformers-saved causal-LM folder."""

    pre_tokenizer: str | None = None  # tokenizer.ggml.pre, where the converter's hash check cannot tell it
    sentencepiece: str | None = None  # tokenmap source of the tokenizer.model the converter reads
    # config.json values llama.cpp needs where transformers leaves them null or out (its code implies them), written
    # into a config of the family's own architecture (model_type) only
    architecture: str | None = None
    config_defaults: dict[str, Any] = field(default_factory=dict)
    refused: str | None = None  # why this family cannot be converted, if it cannot


GGUF_FAMILIES: dict[str, GgufFamily] = {
    "qwen3": GgufFamily(),
    "llama3": GgufFamily(),
    "gemma2": GgufFamily(sentencepiece="gemma2"),
    "deepseek-llm": GgufFamily(pre_tokenizer="deepseek-llm"),
    "deepseek-coder": GgufFamily(pre_tokenizer="deepseek-coder"),
    "deepseek-v2": GgufFamily(
        pre_tokenizer="deepseek-llm", architecture="deepseek_v2", config_defaults={"q_lora_rank": 0}
    ),
    "deepseek-v3": GgufFamily(
        pre_tokenizer="deepseek-v3", architecture="deepseek_v3", config_defaults={"scoring_func": "sigmoid"}
    ),
}


def gguf_family(family: str) -> GgufFamily:
    """The converter's needs for `family`; ValueError naming the families it takes or why it refuses this one."""
    if family not in GGUF_FAMILIES:
        raise ValueError(
            f"llama.cpp's converter is not set up for the {family!r} family here; supported: {sorted(GGUF_FAMILIES)}"
        )
    spec = GGUF_FAMILIES[family]
    if spec.refused:
        raise ValueError(f"the {family} family cannot be exported to GGUF: {spec.refused}")
    return spec


def _cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "funasr-swap")


def converter_dir() -> Path:
    """Where `fetch_converter` puts the converter of the pinned llama-cpp-python ($FUNASR_SWAP_CACHE, else
    ~/.cache/funasr-swap)."""
    return _cache_root() / f"llama.cpp-converter-{LLAMA_CPP_PYTHON_VERSION}"


def fetch_converter(*, quiet: bool = True) -> Path:
    """Extract llama.cpp's converter (`convert_hf_to_gguf.py`, `conversion/`, `gguf-py/`) from the pinned
    llama-cpp-python sdist into `converter_dir()`, which `pip download` fetches (or finds in pip's cache) first; the
    set-up step (`funasr-swap fetch-converter`), the only one here that downloads. Returns the folder."""
    folder = converter_dir()
    if (folder / "convert_hf_to_gguf.py").is_file():
        return folder
    downloads = _cache_root() / "downloads"
    sdist = downloads / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
    if not sdist.is_file():
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--dest", str(downloads),
            f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=quiet, text=True)
        if result.returncode != 0 or not sdist.is_file():
            last = (result.stderr or "").strip().splitlines()[-1:] or ["no file written"]
            raise OSError(f"could not download the llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist: {last[0]}")
    with tarfile.open(sdist) as archive, atomic_folder(folder) as tmp:
        members = [
            m for m in archive.getmembers()
            if m.name.startswith(_SDIST_ROOT) and m.name[len(_SDIST_ROOT):].startswith(_CONVERTER_MEMBERS)
        ]  # fmt: skip
        for member in members:
            member.name = member.name[len(_SDIST_ROOT) :]
        archive.extractall(tmp, members=members, filter="data")
    return folder


def converter() -> Path:
    """The folder `fetch_converter` extracted; FileNotFoundError saying how to fetch it (never downloads)."""
    folder = converter_dir()
    if not (folder / "convert_hf_to_gguf.py").is_file():
        raise FileNotFoundError(
            f"llama.cpp's GGUF converter is not in {folder}: run `funasr-swap fetch-converter` once (scripts/setup.sh "
            "does)"
        )
    return folder


def _check_sentencepiece(model_file: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    """The SentencePiece model must give every one of its ids the token the model's tokenizer gives it."""
    from sentencepiece import SentencePieceProcessor

    pieces = SentencePieceProcessor(model_file=str(model_file))
    vocab = {token_id: token for token, token_id in tokenizer.get_vocab().items()}
    wrong = [i for i in range(pieces.vocab_size()) if vocab.get(i) != pieces.IdToPiece(i)]
    if wrong:
        raise ValueError(
            f"{model_file} does not match the model's tokenizer: {len(wrong)} id(s) differ, the first {wrong[0]} "
            f"({pieces.IdToPiece(wrong[0])!r} vs {vocab.get(wrong[0])!r})"
        )


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def stage_llm(
    model: FunAsrNanoForConditionalGeneration, tokenizer: PreTrainedTokenizerBase, family: str, folder: Path
) -> None:
    """Write the model's LLM into `folder` as the Hugging Face causal-LM folder the converter reads: config (with the
    family's fixes), weights in float32, tokenizer (and the family's SentencePiece model)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tokenmap.assets import ensure_extracted

    spec = gguf_family(family)
    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(model.config.text_config)
    state = {f"model.{k}": v for k, v in model.model.language_model.state_dict().items()}
    state.update({f"lm_head.{k}": v for k, v in model.lm_head.state_dict().items()})
    llm.load_state_dict({k: v.float() for k, v in state.items()}, strict=False, assign=True)
    llm.tie_weights()
    with _no_progress_bars():  # an intermediate folder: its shards' progress bar says nothing to the user
        llm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    if config.get("model_type") == spec.architecture:
        config.update({key: value for key, value in spec.config_defaults.items() if config.get(key) is None})
    config_file.write_text(json.dumps(config, indent=2))
    if spec.sentencepiece:
        model_file = ensure_extracted(spec.sentencepiece) / "tokenizer.model"
        _check_sentencepiece(model_file, tokenizer)
        shutil.copyfile(model_file, folder / "tokenizer.model")
        # The converter types a SentencePiece vocabulary's control tokens from tokenizer_config.json's
        # added_tokens_decoder, which transformers 5 no longer writes: without it <start_of_turn> would be plain text.
        tokenizer_config = folder / "tokenizer_config.json"
        saved = json.loads(tokenizer_config.read_text())
        saved["added_tokens_decoder"] = {
            str(i): {"content": str(t.content), "special": bool(t.special)}
            for i, t in tokenizer.added_tokens_decoder.items()
        }
        tokenizer_config.write_text(json.dumps(saved, ensure_ascii=False, indent=2))


def write_gguf(
    model: FunAsrNanoForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    family: str,
    output: Path,
    outtype: OutType = "f16",
    work_dir: Path | None = None,
) -> Path:
    """Write the model's LLM as GGUF file `output` through llama.cpp's converter (`fetch_converter`), in `outtype`
    (f32, f16 or q8_0). The causal-LM folder it converts is staged in `work_dir` (default: beside `output`) and
    removed. Raises ValueError for a family the converter cannot take, or with the converter's last line when it
    fails."""
    import tempfile

    spec = gguf_family(family)
    folder = converter()
    with tempfile.TemporaryDirectory(dir=work_dir or output.parent, prefix=".llm-") as staged:
        stage_llm(model, tokenizer, family, Path(staged))
        command = [sys.executable, "-m", "funasr_swap.gguf", str(folder), spec.pre_tokenizer or "", staged,
                   "--outfile", str(output), "--outtype", outtype]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no message"]
        raise ValueError(f"llama.cpp's converter failed on the {family} LLM: {last[0]}")
    return output


def _run_converter(argv: list[str]) -> None:
    """`python -m funasr_swap.gguf CONVERTER_DIR PRE_TOKENIZER MODEL_DIR ARGS...`: run the converter's main() on
    MODEL_DIR with its own gguf-py, the pre-tokenizer name given (if not empty) instead of its hash check's."""
    converter, pre_tokenizer, *args = argv
    sys.path[:0] = [converter, str(Path(converter) / "gguf-py")]
    import convert_hf_to_gguf  # noqa: PLC0415 - only importable once its folder is on the path
    from conversion.base import TextModel  # noqa: PLC0415

    if pre_tokenizer:
        TextModel.get_vocab_base_pre = lambda self, tokenizer: pre_tokenizer
    sys.argv = ["convert_hf_to_gguf.py", *args]
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    _run_converter(sys.argv[1:])
