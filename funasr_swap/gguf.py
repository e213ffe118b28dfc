"""A swapped model's LLM as one GGUF file, written by llama.cpp's own converter.

llama.cpp's `convert_hf_to_gguf.py`, its `conversion/` package and its `gguf-py` ship in the source distribution of
`llama-cpp-python` (the installed wheel carries none of them, and PyPI's `gguf` package does not run this
converter). `fetch_converter` takes them from the sdist of the pinned version (`LLAMA_CPP_PYTHON_VERSION`, the one
set-up builds the runtime from) into a cache folder once, as `tokenmap fetch` does for the tokenizers; nothing here is
re-implemented. `write_gguf` writes the LLM of a Fun-ASR-Nano model (its `language_model` and `lm_head`, LoRA
already merged by the trainer) as a Hugging Face causal-LM folder and runs the converter on it in a subprocess. The
4-bit and 5-bit k-quants (q4_k_m, q5_k_m) the converter does not write: an f16 GGUF is written first, then quantized
by llama.cpp's own quantizer (llama-cpp-python's `llama_model_quantize`) and removed.

A k-quant packs a row in blocks of 256 (QK_K): a tensor whose rows are not a multiple of 256 wide, as every weight of
the miniature's 64-wide LLMs, gets llama.cpp's fallback type instead (q4_K -> q5_0, q6_K -> q8_0; f16 where even a
block of 32 does not fit). `GgufWeights` says which tensors fell back; a model none of whose weights could be
quantized is an error.

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
import re
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
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
    "GgufWeights",
    "OutType",
    "QUANTIZED_TYPES",
    "converter",
    "converter_dir",
    "fetch_converter",
    "gguf_family",
    "quantize_gguf",
    "stage_llm",
    "write_gguf",
]

# The llama-cpp-python release whose sdist carries the converter; set-up builds the runtime from the same sdist.
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
CACHE_ENV = "FUNASR_SWAP_CACHE"
ConverterType = Literal["f32", "f16", "q8_0"]  # what llama.cpp's converter writes itself
OutType = Literal[ConverterType, "q4_k_m", "q5_k_m"]
# the types llama.cpp's quantizer makes from the converter's f16: the llama_ftype each is
QUANTIZED_TYPES = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M"}
_FLOAT_TYPES = ("f32", "f16", "bf16")
# llama.cpp's quantizer (0.3.36, src/llama-quant.cpp) logs each tensor it writes, with its type and the one it
# converts it to (`[  2/ 24] token_embd.weight - [64, 151936, 1, 1], type = f16, converting to q8_0 .. size = ...`),
# and each tensor whose rows its type's blocks cannot tile
_TENSOR = re.compile(r"^\[\s*\d+/\s*\d+\]\s+\S+\s+- \[[^]]*\], type =\s+(\S+?),\s+(?:converting to (\S+) )?", re.M)
_FALLBACK = re.compile(
    r"warning: (?P<tensor>\S+)\s+- ncols\s+(?P<columns>\d+) not divisible by\s+(?P<block>\d+) "
    r"\(required for type\s+(?P<wanted>\S+)\).*?-> falling back to\s+(?P<used>\S+)"
)
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


@dataclass(frozen=True)
class GgufWeights:
    """What a written GGUF file holds: its `outtype` and, for a quantized one, what llama.cpp's quantizer logged:
    how many tensors of each ggml type it wrote (q4_K, q6_K, f32...), and the tensors it gave a fallback type (name,
    row width, the block it needed, the type it wanted and the one it used)."""

    outtype: str
    tensor_types: dict[str, int] = field(default_factory=dict)
    fallbacks: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        """One line: the type, the tensors' types and, if any, the fallbacks and why (`'q4_k_m: q4_K 112, ...'`)."""
        types = ", ".join(f"{name} {count}" for name, count in self.tensor_types.items())
        line = f"{self.outtype}: {types}" if types else self.outtype
        if not self.fallbacks:
            return line
        widths = sorted({f["columns"] for f in self.fallbacks})
        blocks = sorted({f["block"] for f in self.fallbacks})
        return (
            f"{line}; {len(self.fallbacks)} tensor(s) fell back (rows {', '.join(map(str, widths))} wide, not a "
            f"multiple of {', '.join(map(str, blocks))})"
        )


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


def _last_line(result: subprocess.CompletedProcess) -> str:
    return ((result.stderr or result.stdout).strip().splitlines()[-1:] or ["no message"])[0]


def write_gguf(
    model: FunAsrNanoForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    family: str,
    output: Path,
    outtype: OutType = "f16",
    work_dir: Path | None = None,
) -> GgufWeights:
    """Write the model's LLM as GGUF file `output` in `outtype`: f32, f16 or q8_0 through llama.cpp's converter
    (`fetch_converter`); q4_k_m or q5_k_m through the converter's f16, then llama.cpp's quantizer (`quantize_gguf`).
    What it stages (the causal-LM folder, the f16 file) goes in `work_dir` (default: beside `output`) and is removed.
    Returns what the file holds. Raises ValueError for a family the converter cannot take, with the converter's or
    quantizer's last line when it fails, or naming the widths when no weight could be quantized."""
    import tempfile

    spec = gguf_family(family)
    folder = converter()
    with tempfile.TemporaryDirectory(dir=work_dir or output.parent, prefix=".llm-") as staged:
        stage_llm(model, tokenizer, family, Path(staged))
        quantized = outtype in QUANTIZED_TYPES
        converted = Path(staged) / "llm-f16.gguf" if quantized else output
        command = [sys.executable, "-m", "funasr_swap.gguf", "convert", str(folder), spec.pre_tokenizer or "", staged,
                   "--outfile", str(converted), "--outtype", "f16" if quantized else outtype]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise ValueError(f"llama.cpp's converter failed on the {family} LLM: {_last_line(result)}")
        if quantized:
            return quantize_gguf(converted, output, outtype)
    return GgufWeights(outtype)


def quantize_gguf(source: Path, output: Path, outtype: str, threads: int | None = None) -> GgufWeights:
    """Quantize the f16/f32 GGUF `source` into `output` as `outtype` (`QUANTIZED_TYPES`) with llama.cpp's own
    quantizer, `llama_model_quantize` (in a subprocess, whose stderr carries llama.cpp's per-tensor log: the
    tensors' types and the fallbacks are read from it). ValueError with llama.cpp's last line when it fails, or
    naming the row widths when no tensor could be quantized at all (every weight left f16 / f32: a file that would
    only claim `outtype`)."""
    if outtype not in QUANTIZED_TYPES:
        raise ValueError(f"llama.cpp's quantizer makes {', '.join(QUANTIZED_TYPES)} here, not {outtype!r}")
    command = [sys.executable, "-m", "funasr_swap.gguf", "quantize", str(source), str(output),
               QUANTIZED_TYPES[outtype], str(threads or os.cpu_count() or 1)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not output.is_file():
        raise ValueError(f"llama.cpp's quantizer failed on {source} ({outtype}): {_last_line(result)}")
    fallbacks = [
        {**match.groupdict(), "columns": int(match["columns"]), "block": int(match["block"])}
        for match in _FALLBACK.finditer(result.stderr)
    ]
    written = Counter(converted or kept for kept, converted in _TENSOR.findall(result.stderr))
    weights = GgufWeights(outtype, dict(written.most_common()), fallbacks)
    if not written or all(name in _FLOAT_TYPES for name in written):
        widths = sorted({f["columns"] for f in fallbacks})
        output.unlink()
        raise ValueError(
            f"no tensor of the LLM could be quantized to {outtype}: its rows are {', '.join(map(str, widths))} wide, "
            "not a multiple of llama.cpp's blocks (256; 32 for the fallback types); export f16 or q8_0 instead"
        )
    return weights


def _run_converter(argv: list[str]) -> None:
    """`python -m funasr_swap.gguf convert CONVERTER_DIR PRE_TOKENIZER MODEL_DIR ARGS...`: run the converter's main()
    on MODEL_DIR with its own gguf-py, the pre-tokenizer name given (if not empty) instead of its hash check's."""
    converter, pre_tokenizer, *args = argv
    sys.path[:0] = [converter, str(Path(converter) / "gguf-py")]
    import convert_hf_to_gguf  # noqa: PLC0415 - only importable once its folder is on the path
    from conversion.base import TextModel  # noqa: PLC0415

    if pre_tokenizer:
        TextModel.get_vocab_base_pre = lambda self, tokenizer: pre_tokenizer
    sys.argv = ["convert_hf_to_gguf.py", *args]
    convert_hf_to_gguf.main()


def _run_quantizer(argv: list[str]) -> None:
    """`python -m funasr_swap.gguf quantize SOURCE OUTPUT LLAMA_FTYPE THREADS`: llama-cpp-python's
    `llama_model_quantize`, llama.cpp's log on stderr; exits 1 when it fails."""
    import ctypes

    import llama_cpp

    source, output, ftype, threads = argv
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype)
    params.nthread = int(threads)
    sys.exit(1 if llama_cpp.llama_model_quantize(source.encode(), output.encode(), ctypes.byref(params)) else 0)


if __name__ == "__main__":
    {"convert": _run_converter, "quantize": _run_quantizer}[sys.argv[1]](sys.argv[2:])
