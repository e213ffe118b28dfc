"""ASR data: JSONL manifests, length-bucketed batches, and the collator that turns utterances into model inputs.

A manifest has one JSON object per line:

    {"audio": "clips/a.wav", "text": "the red cat", "language": "en", "duration": 2.31, "task": "language"}

`audio` (required) is a path, relative to the manifest's folder or absolute; `text` (required) is the transcript;
`language` (optional) a code such as "en" or "zh"; `duration` (optional) seconds, checked as a number, but each
utterance's duration (for `max_seconds`, the encoder's limit and batching) is the file's, read from its header;
`task` (optional) "transcribe" (the default: the plain ASR prompt) or "language" (the prompt names the language,
"语音转写成英文：", and needs `language`). Other keys are ignored; blank lines are skipped.

Given the model's tokenizer, `load_manifest` also refuses text that spells one of its control tokens (`<|im_end|>`,
`<|eot_id|>`, a speech marker...): as a target it would read as a role or speech marker, and the collator refuses it
(`tokenmap.prompt.check_user_text`), which would otherwise stop a training run mid-way.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import soundfile
import torch
from transformers import FunAsrNanoForConditionalGeneration, FunAsrNanoProcessor, PreTrainedTokenizerBase
from transformers.modeling_outputs import BaseModelOutput

from funasr_swap.audio import load_audio
from funasr_swap.errors import SettingError
from funasr_swap.features import batch_features
from tokenmap.chat_setup import read_chat_setup
from tokenmap.io import parse_json_object
from tokenmap.prompt import (
    IGNORE_INDEX,
    AsrPrompt,
    AsrPromptBuilder,
    AsrTask,
    control_tokens,
    language_name,
    spelled_control_token,
)

__all__ = [
    "TASKS", "AsrCollator", "Manifest", "Utterance", "bucket_batches", "load_manifest", "precomputed_audio",
]  # fmt: skip

TASKS = ("transcribe", "language")
POOL_BATCHES = 32  # bucket_batches sorts by duration within random pools of this many batches


@dataclass(frozen=True)
class Utterance:
    """One manifest line, its audio path resolved."""

    audio: Path
    text: str
    language: str | None = None
    duration: float | None = None  # seconds
    task: str | None = None  # None or "transcribe": plain ASR prompt; "language": the prompt names `language`

    @property
    def asr_task(self) -> AsrTask:
        """The user turn this utterance trains: `AsrTask(language=...)` for task "language", else `AsrTask()`."""
        return AsrTask(language=self.language) if self.task == "language" else AsrTask()


@dataclass(frozen=True)
class Manifest:
    """The valid utterances of a manifest file and the lines skipped with `skip_bad=True`."""

    path: Path
    utterances: list[Utterance]
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (1-based line number, reason)

    @property
    def durations(self) -> list[float]:
        return [u.duration for u in self.utterances]  # type: ignore[misc]  # load_manifest fills every one


def _parse_line(line: str, folder: Path) -> Utterance:
    """The utterance of one manifest line; ValueError with the reason when the line or its audio is bad."""
    record = parse_json_object(line)
    for key in ("audio", "text"):
        if key not in record:
            raise ValueError(f"missing field {key!r}")
    audio, text = record["audio"], record["text"]
    if not isinstance(audio, str) or not audio:
        raise ValueError(f"'audio' must be a non-empty string, got {audio!r}")
    if not isinstance(text, str):
        raise ValueError(f"'text' must be a string, got {text!r}")
    if not text.strip():
        raise ValueError(f"empty text ({text!r})")
    language, duration, task = record.get("language"), record.get("duration"), record.get("task")
    if language is not None and (not isinstance(language, str) or not language):
        raise ValueError(f"'language' must be a non-empty string or null, got {language!r}")
    if task is not None and task not in TASKS:
        raise ValueError(f"'task' must be one of {', '.join(TASKS)} or null, got {task!r}")
    if task == "language":
        if language is None:
            raise ValueError("task 'language' needs a 'language'")
        language_name(language)  # the prompt names it: an unknown one is refused here, not by the collator mid-run
    if duration is not None and (
        isinstance(duration, bool) or not isinstance(duration, (int, float)) or not math.isfinite(duration)
        or duration <= 0
    ):  # fmt: skip
        raise ValueError(f"'duration' must be a positive number of seconds or null, got {duration!r}")

    path = Path(audio) if os.path.isabs(audio) else folder / audio
    if path.is_dir():
        raise ValueError(f"audio {audio} is a folder, not an audio file")
    if not path.is_file():
        resolved = "" if os.path.isabs(audio) else f" (looked for {path})"
        raise ValueError(f"audio file {audio} not found{resolved}")
    try:
        info = soundfile.info(path)  # reads the header only
    except (soundfile.SoundFileError, RuntimeError) as error:
        raise ValueError(f"cannot read audio file {audio}: {error}") from None
    if info.frames == 0:
        raise ValueError(f"audio file {audio} has no samples")
    # the file's length, not the line's `duration`: a wrong label must not carry a long clip past a limit
    return Utterance(path, text, language, info.frames / info.samplerate, task)


def _check_for_model(utterance: Utterance, controls: Sequence[str], max_seconds: float | None) -> None:
    """ValueError when the utterance's text spells one of the `controls` tokens, or its audio is longer than
    `max_seconds`."""
    if (token := spelled_control_token(utterance.text, controls)) is not None:
        raise ValueError(
            f"'text' {utterance.text!r} spells the control token {token!r} of the model's tokenizer (it would read "
            "as a role or speech marker); remove it from the line"
        )
    if max_seconds is not None and utterance.duration > max_seconds:
        raise SettingError(
            f"audio {utterance.audio} is {utterance.duration:.1f} s long, longer than {{max_seconds}}; split it, or "
            "raise the maximum",
            max_seconds=max_seconds,
        )


def load_manifest(
    path: str | os.PathLike,
    *,
    skip_bad: bool = False,
    tokenizer: PreTrainedTokenizerBase | None = None,
    max_seconds: float | None = None,
) -> Manifest:
    """Read and validate a JSONL manifest (format: the module docstring).

    Every line is checked: valid JSON object, `audio` and non-empty `text` present, optional fields well typed, and
    the audio file exists and soundfile can read its header (which gives `duration` when the line has none).
    With `tokenizer` (the model's, carrying its chat template: `processor.tokenizer`), a `text` that spells one of
    its control tokens (`tokenmap.prompt.control_tokens`: special tokens, and added tokens its template writes) is a
    bad line; with `max_seconds`, so is a clip longer than that (the file's length, whatever the line's `duration`
    says).
    A bad line raises ValueError naming it, `train.jsonl:17: audio file clips/a.wav not found`, unless `skip_bad`,
    which skips it and records `(line, reason)` in `Manifest.skipped`. A manifest without any valid line raises.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    if max_seconds is not None and not max_seconds > 0:
        raise SettingError("{max_seconds} must be a positive number of seconds or None", max_seconds=max_seconds)
    # what the collator's prompt refuses in a target: computed once, checked on every line
    controls = control_tokens(tokenizer, tokenizer.chat_template or "") if tokenizer is not None else []
    utterances, skipped = [], []
    with path.open("rb") as handle:  # bytes: a line that is not UTF-8 is reported with its number too
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                utterance = _parse_line(raw.decode("utf-8"), path.parent)
                _check_for_model(utterance, controls, max_seconds)
                utterances.append(utterance)
            except ValueError as error:  # UnicodeDecodeError is one too
                if not skip_bad:
                    if isinstance(error, SettingError):  # keeps its settings apart: the CLI names its flags
                        raise error.where(f"{path}:{number}") from None
                    raise ValueError(f"{path}:{number}: {error}") from None
                skipped.append((number, str(error)))
    if not utterances:
        raise ValueError(f"{path}: no valid utterances ({len(skipped)} bad line(s) skipped)")
    return Manifest(path, utterances, skipped)


def bucket_batches(durations: Sequence[float], batch_size: int, *, seed: int, shuffle: bool = True) -> list[list[int]]:
    """Batches of indices into `durations` whose members have similar lengths (little padding).

    With `shuffle`, the indices are shuffled, cut into pools of `POOL_BATCHES * batch_size`, sorted by duration
    within each pool and batched, and the batch order is shuffled: batch composition changes with `seed` (pass the
    epoch in it) while lengths within a batch stay close. Without, all indices are sorted by duration and batched
    in order (evaluation). Deterministic in its arguments; only the very last batch may be smaller.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = random.Random(seed)
    order = list(range(len(durations)))
    if shuffle:
        rng.shuffle(order)
    pool_size = POOL_BATCHES * batch_size if shuffle else max(len(order), 1)
    batches = []
    for start in range(0, len(order), pool_size):
        pool = sorted(order[start : start + pool_size], key=lambda i: durations[i])  # stable: ties keep pool order
        batches += [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]
    if shuffle:
        rng.shuffle(batches)
    return batches


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run torch single-threaded inside the block, then restore the thread count.

    fbank runs a few small ops per clip, where intra-op threads only add synchronisation: on a busy 2-core machine
    a batch of 16 clips took 650 ms with torch's 2 threads and 34 ms with one. (DataLoader workers run with one.)
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class AsrCollator:
    """Turns utterances into the inputs of a `FunAsrNanoForConditionalGeneration` (any chat family) for training.

    Each example is `build_asr_prompt` rendered with the processor's own chat template and speech placeholder (the
    prompt `transcribe` uses, token for token) for the utterance's `asr_task`, with the transcript and the
    end-of-turn token as target. Returns, right-padded with the tokenizer's pad id:
        input_ids, attention_mask (B, T); labels (B, T): IGNORE_INDEX (-100) except on target and end-of-turn;
        input_features (B, F, 560); input_features_mask (B, F), F the longest clip's LFR frames.
    The features of a batch are computed in one set of tensor ops (`funasr_swap.features.batch_features`).
    Apply `funasr_swap.compat.mask_adaptor_padding` to the model (load_base, tiny_base and swap_llm do).

    Two ways to do less work per epoch, for runs of many epochs over a corpus that fits in memory:
        cache    keep each utterance's audio inputs after its first batch, keyed by its audio path: later epochs
                 read no audio and compute no features. Memory: 2.2 KB per LFR frame (60 ms) as float32, about
                 37 KB per second of audio; with `encoder`, (its width x 4) bytes per frame.
        encoder  a frozen audio tower (`model.model.audio_tower`): `input_features` are then its outputs,
                 (B, F, hidden), computed without gradients; run the model's forward inside
                 `precomputed_audio(model)`, which stands in for the tower. The tower must stay frozen and in eval
                 mode (no dropout) for its outputs to be the ones it would compute in the step.

    `dither` > 0 adds Kaldi's dither to the (int16-scale) waveform of every batch, drawn from torch's default
    generator (the trainer seeds it; funasr trains with 1.0); it excludes both caches.
    """

    def __init__(
        self,
        processor: FunAsrNanoProcessor,
        *,
        sampling_rate: int = 16000,
        cache: bool = False,
        encoder: torch.nn.Module | None = None,
        dither: float = 0.0,
    ):
        feature_rate = processor.feature_extractor.sampling_rate
        if sampling_rate != feature_rate:
            raise ValueError(f"sampling_rate {sampling_rate} != the feature extractor's {feature_rate}")
        if processor.tokenizer.pad_token_id is None:
            raise ValueError("the processor's tokenizer has no pad token; set tokenizer.pad_token (swap_llm does)")
        if dither and (cache or encoder is not None):
            raise ValueError(f"AsrCollator: dither {dither} draws new noise every epoch; a cache would keep the first")
        if encoder is not None and any(p.requires_grad for p in encoder.parameters()):
            raise ValueError("AsrCollator: the encoder whose outputs it computes must be frozen (requires_grad off)")
        self.processor = processor
        self.sampling_rate = sampling_rate
        chat = read_chat_setup(processor.tokenizer, processor.audio_token)
        self.family, self.markers = chat.family, chat.markers
        self.encoder = encoder
        self.dither = dither
        # the chat template rendered once per task (AsrPromptBuilder), then one encoding per (task, transcript),
        # with one audio frame: an epoch after the first renders nothing
        self._builder = AsrPromptBuilder(
            processor.tokenizer, family=self.family, markers=self.markers, chat_template=processor.chat_template
        )
        self._prompts: dict[tuple[AsrTask, str], AsrPrompt] = {}
        self._audio: dict[Path, torch.Tensor] | None = {} if cache else None  # audio path -> (frames, dim)

    def _prompt(self, utterance: Utterance, n_frames: int) -> AsrPrompt:
        key = (utterance.asr_task, utterance.text)
        if key not in self._prompts:
            try:
                self._prompts[key] = self._builder(1, utterance.asr_task, utterance.text)
            except ValueError as error:  # e.g. a transcript that spells a control token
                raise ValueError(f"{utterance.audio}: {error}") from error
        return self._prompts[key].with_audio_length(n_frames)

    def _compute_audio(self, paths: list[Path]) -> list[torch.Tensor]:
        """Each clip's features (or encoder outputs) at its valid frames, (frames, dim), on the CPU."""
        waveforms = [load_audio(path, self.sampling_rate) for path in paths]
        with _one_torch_thread():
            features = batch_features(self.processor.feature_extractor, waveforms, dither=self.dither)
        inputs, mask = features["input_features"], features["input_features_mask"]
        if self.encoder is not None:
            weight = next(self.encoder.parameters())
            with torch.no_grad():
                inputs = self.encoder(
                    input_features=inputs.to(weight.device, weight.dtype), input_features_mask=mask.to(weight.device)
                ).last_hidden_state.cpu()
        return [row[:n] for row, n in zip(inputs, mask.sum(-1).tolist())]

    def _audio_inputs(self, utterances: Sequence[Utterance]) -> list[torch.Tensor]:
        if self._audio is None:
            return self._compute_audio([u.audio for u in utterances])
        missing = list(dict.fromkeys(u.audio for u in utterances if u.audio not in self._audio))
        if missing:
            self._audio.update(zip(missing, self._compute_audio(missing)))
        return [self._audio[u.audio] for u in utterances]

    def __call__(self, utterances: Sequence[Utterance]) -> dict[str, torch.Tensor]:
        if not utterances:
            raise ValueError("cannot collate an empty batch")
        audio = self._audio_inputs(utterances)
        frames = [len(rows) for rows in audio]  # one audio placeholder per LFR frame
        padding = 0.0 if self.encoder is not None else self.processor.feature_extractor.padding_value
        input_features = torch.nn.utils.rnn.pad_sequence(audio, batch_first=True, padding_value=padding)
        input_features_mask = (torch.arange(input_features.shape[1]) < torch.tensor(frames)[:, None]).to(torch.int32)
        examples = [self._prompt(utterance, n_frames) for utterance, n_frames in zip(utterances, frames)]
        length = max(len(e.input_ids) for e in examples)
        input_ids = torch.full((len(examples), length), self.processor.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
        labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
        for row, example in enumerate(examples):
            n = len(example.input_ids)
            input_ids[row, :n] = torch.tensor(example.input_ids)
            attention_mask[row, :n] = 1
            labels[row, :n] = torch.tensor(example.labels)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "input_features": input_features,
            "input_features_mask": input_features_mask,
        }


class _PrecomputedAudioTower(torch.nn.Module):
    """Stands in for the audio tower: its inputs are already its outputs (`AsrCollator(encoder=...)`)."""

    def forward(self, input_features: torch.Tensor, input_features_mask: torch.Tensor, **kwargs) -> BaseModelOutput:
        return BaseModelOutput(last_hidden_state=input_features)


@contextmanager
def precomputed_audio(model: FunAsrNanoForConditionalGeneration) -> Iterator[None]:
    """Inside the block, `model` takes its audio tower's outputs as `input_features` (`AsrCollator(encoder=...)`)
    instead of fbank features; the tower is back afterwards (transcription and saving need it)."""
    tower = model.model.audio_tower
    model.model.audio_tower = _PrecomputedAudioTower()
    try:
        yield
    finally:
        model.model.audio_tower = tower
