"""`edge.json`: what the edge runtime needs of an exported model that it cannot read from `audio.onnx` or `llm.gguf`.

Written by `funasr_swap.export.export_edge`, read by `funasr_swap.edge.EdgeModel`; plain JSON so that any runtime
(C++, mobile) can read it too. Prompts are token ids as the model's processor renders them, split at the audio:
the runtime puts `before`, one adaptor row per LFR frame, then `after` into the LLM.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from funasr_swap.edge.features import FeatureSettings

__all__ = ["EDGE_CONFIG", "EDGE_FORMAT", "EdgeConfig", "HotwordPrompt", "TaskPrompt", "read_edge_config"]

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
class EdgeConfig:
    """The contents of `edge.json` (module docstring)."""

    audio_model: str  # file name of the ONNX audio tower + adaptor
    llm: str  # file name of the GGUF LLM
    outtype: str  # the GGUF's weight type: f32, f16 or q8_0
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
    format: int = EDGE_FORMAT

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


def read_edge_config(folder: str | Path) -> EdgeConfig:
    """The `edge.json` of an exported folder; FileNotFoundError / ValueError naming the file for a folder that is not
    an export or a file of another format version."""
    path = Path(folder) / EDGE_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not an edge export: no {EDGE_CONFIG} (write one with funasr-swap export)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("format") != EDGE_FORMAT:
            raise ValueError(f"format {raw.get('format')!r}, this runtime reads format {EDGE_FORMAT}: export it again")
        prompts = [TaskPrompt(**{**p, "hotwords": HotwordPrompt(**p["hotwords"])}) for p in raw.pop("prompts")]
        return EdgeConfig(**{**raw, "features": FeatureSettings(**raw["features"]), "prompts": prompts})
    except (json.JSONDecodeError, TypeError, KeyError, AttributeError, ValueError) as error:
        raise ValueError(f"{path}: not a valid {EDGE_CONFIG} ({error})") from None
