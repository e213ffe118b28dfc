"""`edge.json`: what the edge runtime needs of an exported model that it cannot read from `audio.onnx` or `llm.gguf`.

Written by `funasr_swap.export.export_edge`, read by `funasr_swap.edge.EdgeModel`; plain JSON so that any runtime
(C++, mobile) can read it too. Prompts are token ids as the model's processor renders them, split at the audio:
the runtime puts `before`, one adaptor row per LFR frame, then `after` into the LLM.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from funasr_swap.edge.features import FeatureSettings

__all__ = [
    "EDGE_CONFIG",
    "EDGE_FORMAT",
    "CtcSettings",
    "EdgeConfig",
    "HotwordPrompt",
    "TaskPrompt",
    "read_edge_config",
]

EDGE_CONFIG = "edge.json"
EDGE_FORMAT = 1  # raised when a field's meaning changes; the runtime refuses other versions


@dataclass(frozen=True)
class HotwordPrompt:
    """The text before the audio of a prompt with hotwords, around the hotwords: the runtime tokenizes
    `prefix + separator.join(hotwords) + suffix` with the GGUF's tokenizer (special tokens parsed)."""

    prefix: str
    separator: str
    suffix: str


@dataclass(frozen=True)
class TaskPrompt:
    """The prompt of one task: token ids before and after the audio rows."""

    language: str | None  # the checkpoint's name of the language (中文, 英文, 日文); None: the model's choice
    itn: bool
    before: list[int]
    after: list[int]
    hotwords: HotwordPrompt


@dataclass(frozen=True)
class CtcSettings:
    """The original's CTC branch, exported for token timestamps (`funasr_swap.timestamps`)."""

    model: str  # file name of the ONNX branch: audio model's encoder_outputs + mask -> log-posteriors
    tokenizer: str  # the branch's tokenizer.json (a `tokenizers` file), relative to the folder
    blank_id: int  # the blank's column of the log-posteriors


@dataclass(frozen=True)
class EdgeConfig:
    """The contents of `edge.json` (module docstring)."""

    audio_model: str  # file name of the ONNX audio tower + adaptor
    llm: str  # file name of the GGUF LLM
    outtype: str  # the GGUF's weight type: f32, f16, q8_0, q4_k_m or q5_k_m (the card says which tensors fell back)
    hidden_size: int  # the LLM's width: the adaptor's output rows
    # llama.cpp multiplies every input row by the LLM's embedding scale (Gemma-2: sqrt(hidden_size)), injected rows
    # too; transformers scales token embeddings only: the runtime divides the audio rows by it first
    audio_embedding_scale: float
    stop_ids: list[int]  # the first of these ends an answer
    max_audio_seconds: float  # the encoder's positions cover this much
    languages: dict[str, str]  # codes and English names -> the checkpoint's name (`tokenmap.prompt.LANGUAGE_NAMES`)
    control_tokens: list[str]  # hotwords and languages that spell one of these are refused, as `transcribe` does
    features: FeatureSettings
    prompts: list[TaskPrompt]
    model_card: dict[str, Any] = field(default_factory=dict)  # where the model came from; not read by the runtime
    ctc: CtcSettings | None = None  # None: exported without the CTC branch, no timestamps
    format: int = EDGE_FORMAT

    def __post_init__(self) -> None:
        for name in ("hidden_size", "audio_embedding_scale", "max_audio_seconds"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not self.stop_ids:
            raise ValueError("stop_ids must name at least one token id, got []")
        # every language prompt() can resolve, with and without ITN: a missing one would fail mid-transcription
        have = {(p.language, p.itn) for p in self.prompts}
        for language in (None, *self.languages.values()):
            for itn in (True, False):
                if (language, itn) not in have:
                    raise ValueError(f"prompts have none for language {language!r} with itn {itn}")

    def prompt(self, language: str | None, itn: bool) -> TaskPrompt:
        """The prompt for a language (a code, an English name or the checkpoint's name; None: the model's choice)."""
        name = None
        if language is not None:
            key = language.strip().lower()
            name = self.languages.get(key, key if key in self.languages.values() else None)
            if name is None:
                known = [*self.languages, *dict.fromkeys(self.languages.values())]
                raise ValueError(f"unknown language {language!r}; known: {', '.join(known)}")
        return next(p for p in self.prompts if p.language == name and p.itn == itn)

    def write(self, folder: Path) -> Path:
        path = folder / EDGE_CONFIG
        path.write_text(json.dumps(asdict(self), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        return path


def _typed(value: Any, hint: Any, name: str) -> Any:
    """`value` as JSON gives it, checked against the type `hint` (the dataclasses' annotations are the schema):
    dataclasses are built from their objects, numbers where a float goes become floats. ValueError naming the field,
    the type it takes and the value it has: the runtime hands these values to llama.cpp and onnxruntime, which do
    not check them."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ValueError(f"{name or 'the file'} must be an object, got {value!r}")
        hints, fields = typing.get_type_hints(hint), {f.name: f for f in dataclasses.fields(hint)}
        missing = [f for f in fields if f not in value and fields[f].default is dataclasses.MISSING
                   and fields[f].default_factory is dataclasses.MISSING]  # fmt: skip
        unknown = [key for key in value if key not in fields]
        if missing or unknown:
            where = f"{name}: " if name else ""
            raise ValueError(f"{where}fields missing: {missing or 'none'}, unknown: {unknown or 'none'}")
        return hint(**{key: _typed(item, hints[key], f"{name}.{key}".lstrip(".")) for key, item in value.items()})
    if origin is list and isinstance(value, list):
        return [_typed(item, args[0], f"{name}[{i}]") for i, item in enumerate(value)]
    if origin is dict and isinstance(value, dict):
        return {_typed(key, args[0], f"{name} key"): _typed(item, args[1], f"{name}[{key!r}]")
                for key, item in value.items()}  # fmt: skip
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [arg for arg in args if arg is not type(None)]  # the schema's unions are `X | None`
        return _typed(value, hint, name)
    if hint is Any:
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:  # bool is an int to isinstance; not to this schema
        return value
    raise ValueError(f"{name} must be {_type_name(hint)}, got {value!r}")


def _type_name(hint: Any) -> str:
    """`hint` as JSON spells it: `a list of integers`, `an object`, `a number`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        return f"a list of {_type_name(args[0]).split(' ', 1)[1]}s"
    if origin is dict or dataclasses.is_dataclass(hint):
        return "an object"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(hint, str(hint))


def read_edge_config(folder: str | Path) -> EdgeConfig:
    """The `edge.json` of an exported folder; FileNotFoundError / ValueError naming the file for a folder that is not
    an export, a file of another format version, or a field of the wrong type or value (naming the field)."""
    path = Path(folder) / EDGE_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not an edge export: no {EDGE_CONFIG} (write one with funasr-swap export)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict) or raw.get("format") != EDGE_FORMAT:
            found = raw.get("format") if isinstance(raw, dict) else None
            raise ValueError(f"format {found!r}, this runtime reads format {EDGE_FORMAT}: export it again")
        return _typed(raw, EdgeConfig, "")
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"{path}: not a valid {EDGE_CONFIG} ({error})") from None
