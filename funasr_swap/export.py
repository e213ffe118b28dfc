"""Export a Fun-ASR-Nano model (base or swapped) for the edge runtime: a folder that transcribes without torch.

    audio.onnx  audio tower + adaptor, (batch, frames, 560) LFR features + mask -> (batch, frames, hidden) rows
                (and, with the CTC branch, the tower's outputs (batch, frames, encoder hidden) too)
    ctc.onnx    only when the model folder carries the original's CTC branch and its tokenizer
                (`funasr_swap.ctc_branch`): the tower's outputs + mask -> (batch, frames, vocabulary) log-posteriors,
                for token timestamps; the tokenizer goes along as ctc_tokenizer/tokenizer.json
    llm.gguf    the LLM (LoRA already merged by the trainer), through llama.cpp's own converter (`funasr_swap.gguf`);
                the k-quants (q4_k_m, q5_k_m) through its quantizer after
    edge.json   prompts as token ids per task, stop ids, feature settings, the embedding scale to undo, model card:
                the GGUF's tensor types and fallbacks, and (given a manifest) the export's agreement with PyTorch

This is the layout of FunASR's own llama.cpp runtime for Nano (a stock GGUF LLM, the encoder + adaptor apart, the
adaptor's rows injected as embeddings), without its two Qwen3-0.6B assumptions (width 1024, Qwen's prompt): the
width and the prompt come from the model. `funasr_swap.edge` runs the folder.
"""

from __future__ import annotations

import importlib.metadata
import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, get_args

import numpy as np
import torch
from torch import nn

from funasr_swap.ctc_branch import CTC_TOKENIZER_DIR, CtcBranch, require_ctc_branch
from funasr_swap.edge.config import CtcSettings, EdgeConfig, HotwordPrompt, TaskPrompt
from funasr_swap.edge.features import FeatureSettings
from funasr_swap.gguf import LLAMA_CPP_PYTHON_VERSION, OutType, gguf_family, write_gguf
from tokenmap.io import atomic_folder, check_writable
from tokenmap.prompt import LANGUAGE_NAMES, control_tokens

if TYPE_CHECKING:
    from transformers import FunAsrNanoForConditionalGeneration, FunAsrNanoProcessor

__all__ = [
    "AGREEMENT_CLIPS",
    "AUDIO_ONNX",
    "CTC_ONNX",
    "LLM_GGUF",
    "AudioEmbedder",
    "CtcLogPosteriors",
    "agreement",
    "edge_config",
    "export_edge",
    "export_onnx",
]

AUDIO_ONNX = "audio.onnx"
CTC_ONNX = "ctc.onnx"
LLM_GGUF = "llm.gguf"
AGREEMENT_CLIPS = 50  # the manifest's first clips that `agreement` transcribes both ways
_HOTWORD_SLOTS = ("\u2983A\u2984", "\u2983B\u2984")  # two stand-in hotwords no template writes: ⦃A⦄, ⦃B⦄


class AudioEmbedder(nn.Module):
    """The model's audio tower and adaptor as one module: LFR features `(batch, frames, 560)` and their mask
    `(batch, frames)` -> one LLM input row per frame `(batch, frames, hidden_size)` (padded frames' rows are junk);
    `encoder_outputs`: the tower's outputs `(batch, frames, encoder hidden)` as a second output (the CTC branch's
    input)."""

    def __init__(self, model: FunAsrNanoForConditionalGeneration, encoder_outputs: bool = False):
        super().__init__()
        self.audio_tower = model.model.audio_tower
        self.projector = model.model.multi_modal_projector
        self.encoder_outputs = encoder_outputs

    def forward(
        self, input_features: torch.Tensor, input_features_mask: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        encoded = self.audio_tower(input_features=input_features, input_features_mask=input_features_mask)
        rows = self.projector(encoded.last_hidden_state, input_features_mask)
        return (rows, encoded.last_hidden_state) if self.encoder_outputs else rows


class CtcLogPosteriors(nn.Module):
    """The CTC branch as the edge runs it: the tower's outputs `(batch, frames, encoder hidden)` and their mask ->
    log-posteriors `(batch, frames, vocabulary)` (padded frames' rows are junk), `CtcBranch.log_posteriors` unsplit."""

    def __init__(self, branch: CtcBranch):
        super().__init__()
        self.decoder, self.output = branch.decoder, branch.output

    def forward(self, encoder_outputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.output(self.decoder(encoder_outputs, mask)).log_softmax(-1)


@contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _to_onnx(module: nn.Module, inputs: dict[str, torch.Tensor], output_names: list[str], path: Path) -> float:
    """Write `module` (eval mode; inputs `(batch, frames, ...)` by name, the last one the mask) to `path` with torch's
    dynamo exporter, dynamic batch and frame axes, and return the largest absolute difference between onnxruntime's
    and PyTorch's outputs at the mask's valid frames."""
    import onnxruntime

    batch, frames = torch.export.Dim("batch"), torch.export.Dim("frames")
    shapes = {name: {0: batch, 1: frames} for name in inputs}
    with torch.inference_mode():
        expected = module(*inputs.values())
    expected = expected if isinstance(expected, tuple) else (expected,)
    # the exporter's notes (torchvision absent, axis renames, deprecations) say nothing about this model
    with warnings.catch_warnings(), _quiet_logger("torch.onnx"):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, tuple(inputs.values()), dynamic_shapes=shapes, input_names=list(shapes), output_names=output_names,
            dynamo=True, verbose=False,
        )  # fmt: skip
    program.save(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {name: tensor.numpy() for name, tensor in inputs.items()})
    valid = list(inputs.values())[-1].bool().numpy()
    return max(float(np.abs(g[valid] - e.numpy()[valid]).max()) for g, e in zip(got, expected))


def export_onnx(
    model: FunAsrNanoForConditionalGeneration,
    processor: FunAsrNanoProcessor,
    path: Path,
    ctc_branch: CtcBranch | None = None,
    ctc_path: Path | None = None,
) -> float:
    """Write `AudioEmbedder(model)` to `path` (dynamic batch and frame axes) and return the largest absolute
    difference between onnxruntime's and PyTorch's outputs on two clips of different length; with `ctc_branch`, the
    audio model gives the tower's outputs too, and `CtcLogPosteriors(ctc_branch)` goes to `ctc_path` (its
    difference counts in the returned one)."""
    from funasr_swap.features import batch_features

    rng = np.random.default_rng(0)
    rate = processor.feature_extractor.sampling_rate
    clips = [rng.normal(0, 0.1, int(seconds * rate)).astype(np.float32) for seconds in (2.3, 1.1)]
    inputs = dict(batch_features(processor.feature_extractor, clips))
    module = AudioEmbedder(model, encoder_outputs=ctc_branch is not None).eval()
    names = ["audio_embeds", "encoder_outputs"] if ctc_branch is not None else ["audio_embeds"]
    error = _to_onnx(module, inputs, names, path)
    if ctc_branch is None or ctc_path is None:
        return error
    with torch.inference_mode():
        encoded = module(*inputs.values())[1]
    ctc_inputs = {"encoder_outputs": encoded, "mask": inputs["input_features_mask"]}
    return max(error, _to_onnx(CtcLogPosteriors(ctc_branch).eval(), ctc_inputs, ["log_posteriors"], ctc_path))


def _hotword_prompt(processor: FunAsrNanoProcessor, language: str | None, itn: bool) -> HotwordPrompt:
    """The prompt text before the audio around the hotwords, found by rendering two stand-in hotwords."""
    from tokenmap.prompt import AsrTask

    content = AsrTask(language=language, itn=itn, hotwords=_HOTWORD_SLOTS).user_content()
    text = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], chat_template=processor.chat_template, tokenize=False,
        add_generation_prompt=True,
    )  # fmt: skip
    first, second = _HOTWORD_SLOTS
    before_audio = text[: text.index(processor.audio_token)]
    prefix, rest = before_audio.split(first)
    separator, suffix = rest.split(second)
    return HotwordPrompt(prefix, separator, suffix)


def edge_config(
    model: FunAsrNanoForConditionalGeneration,
    processor: FunAsrNanoProcessor,
    outtype: OutType,
    model_card: dict,
    ctc: CtcSettings | None = None,
) -> EdgeConfig:
    """What `edge.json` holds for this model (`funasr_swap.edge.config`); `ctc`: the exported CTC branch."""
    from funasr_swap.transcribe import max_encoder_seconds, prompt_ids, stop_ids

    fe = processor.feature_extractor
    languages = [None, *dict.fromkeys(LANGUAGE_NAMES.values())]
    prompts = [
        TaskPrompt(language, itn, *prompt_ids(processor, language, (), itn), _hotword_prompt(processor, language, itn))
        for language in languages
        for itn in (True, False)
    ]
    embeddings = model.get_input_embeddings()
    return EdgeConfig(
        audio_model=AUDIO_ONNX,
        llm=LLM_GGUF,
        outtype=outtype,
        hidden_size=model.config.text_config.hidden_size,
        audio_embedding_scale=float(getattr(embeddings, "embed_scale", 1.0)),
        stop_ids=sorted(stop_ids(model, processor)),
        max_audio_seconds=max_encoder_seconds(model, processor),
        languages=dict(LANGUAGE_NAMES),
        control_tokens=control_tokens(processor.tokenizer, processor.chat_template),
        features=FeatureSettings(
            sampling_rate=fe.sampling_rate,
            num_mel_bins=fe.feature_size,
            frame_length_ms=fe.frame_length,
            frame_shift_ms=fe.frame_shift,
            window=fe.window,
            lfr_m=fe.num_frames_lfr,
            lfr_n=fe.stride_lfr,
            waveform_scale=fe.waveform_scale,
            padding_value=fe.padding_value,
        ),
        prompts=prompts,
        model_card=model_card,
        ctc=ctc,
    )


def agreement(
    model: FunAsrNanoForConditionalGeneration,
    processor: FunAsrNanoProcessor,
    folder: Path,
    manifest: str | Path,
    clips: int = AGREEMENT_CLIPS,
) -> dict:
    """How the export in `folder` agrees with PyTorch (`model`, greedy) on the first `clips` of `manifest` (JSONL:
    audio, text), the model's choice of language: transcripts equal, and each side's CER against the references
    with the edge's minus PyTorch's (`cer_delta`; 0 where every transcript is equal)."""
    from funasr_swap import edge
    from funasr_swap.data import load_manifest
    from funasr_swap.metrics import cer
    from funasr_swap.transcribe import transcribe

    utterances = load_manifest(manifest).utterances[:clips]
    audios, references = [u.audio for u in utterances], [u.text for u in utterances]
    expected = [t.text for t in transcribe(model, processor, audios, progress=False)]
    got = [t.text for t in edge.transcribe(folder, audios, progress=False)]
    on_torch, on_edge = cer(references, expected), cer(references, got)
    return {
        "manifest": str(Path(manifest).resolve()),
        "clips": len(utterances),
        "equal_transcripts": sum(a == b for a, b in zip(got, expected)),
        "cer": {"pytorch": round(on_torch, 4), "edge": round(on_edge, 4)},
        "cer_delta": round(on_edge - on_torch, 4),
    }


def export_edge(
    source: str | Path,
    output: str | Path,
    outtype: OutType = "f16",
    *,
    overwrite: bool = False,
    check: str | Path | None = None,
    check_clips: int = AGREEMENT_CLIPS,
) -> EdgeConfig:
    """Export the Fun-ASR-Nano model folder `source` (a swapped model, a trained one, the base; Hugging Face or
    original format) into folder `output`: `audio.onnx`, `llm.gguf` in `outtype` (f32, f16, q8_0, q4_k_m or q5_k_m:
    `funasr_swap.gguf.write_gguf`), with the CTC branch when `source` carries it and its tokenizer (`ctc.onnx` and
    `ctc_tokenizer/`: token timestamps) and `edge.json`, whose model card records the GGUF's tensor types, its fallbacks
    and, when `check` names a manifest, the export's `agreement` with PyTorch on its first `check_clips` clips.

    Everything is checked before the work (a model folder, a family the converter takes, a writable output that
    does not exist unless `overwrite`, the manifest) and written beside `output`, then renamed into place: a failure
    leaves nothing half-written. Raises FileNotFoundError / ValueError / FileExistsError naming what is wrong.
    """
    from funasr_swap.convert import checkpoint_format, load_base
    from funasr_swap.data import load_manifest
    from funasr_swap.llms import match_llm
    from funasr_swap.swap import read_swap_report
    from tokenmap.chat_setup import read_chat_setup

    source, output = Path(source), Path(output)
    if outtype not in get_args(OutType):
        raise ValueError(f"outtype must be one of {', '.join(get_args(OutType))}, got {outtype!r}")
    checkpoint_format(source)  # a folder that is no model fails here, naming it
    if check is not None:
        load_manifest(check)  # a bad manifest fails before the export, naming its line
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    check_writable(output, folder=True)
    model, processor = load_base(source, dtype=torch.float32)
    report = read_swap_report(source)
    # the family the swap recorded; for a folder without the record the tokenizer tells (deepseek-llm and -v2
    # share one: either converts alike)
    family = read_chat_setup(processor.tokenizer, processor.audio_token).family.name
    try:
        gguf_family(family)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
    try:
        branch = require_ctc_branch(source)
    except FileNotFoundError:
        branch = None  # no timestamps from this export
    began = time.perf_counter()
    spec = match_llm(model.config.text_config)
    with atomic_folder(output) as tmp:
        onnx_error = export_onnx(model, processor, tmp / AUDIO_ONNX, branch, tmp / CTC_ONNX)
        ctc = None
        if branch is not None:
            branch.tokenizer.save_pretrained(tmp / CTC_TOKENIZER_DIR)  # a fast tokenizer writes tokenizer.json
            ctc = CtcSettings(CTC_ONNX, f"{CTC_TOKENIZER_DIR}/tokenizer.json", branch.blank_id)
        weights = write_gguf(model, processor.tokenizer, family, tmp / LLM_GGUF, outtype, work_dir=tmp)
        card = {
            "source": str(source.resolve()),
            "family": family,
            "llm": report.target_llm if report else spec.name if spec else model.config.text_config.model_type,
            "swap": asdict(report) if report else None,
            "onnx_max_abs_error": onnx_error,
            "gguf": asdict(weights),
            "exported_with": {
                "funasr_swap": importlib.metadata.version("funasr-swap"),
                "torch": torch.__version__,
                "llama_cpp_python (converter, quantizer)": LLAMA_CPP_PYTHON_VERSION,
            },
            "export_seconds": round(time.perf_counter() - began, 1),
        }
        config = edge_config(model, processor, outtype, card, ctc)
        config.write(tmp)
        if check is not None:
            card["agreement"] = agreement(model, processor, tmp, check, check_clips)
            config = replace(config, model_card=card)
            config.write(tmp)
    return config
