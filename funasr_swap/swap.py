"""Swap the LLM inside a Fun-ASR-Nano: config surgery, adaptor resizing, the target's weights and processor.

The result is a standard `FunAsrNanoForConditionalGeneration` + `FunAsrNanoProcessor` (stock
`AutoModelForSpeechSeq2Seq` / `AutoProcessor` load the saved folder): the audio tower carries over unchanged, the
adaptor is resized to the target's hidden size (`resize_adaptor`), the target's backbone and `lm_head` load into the
model, the processor carries the target tokenizer (with its speech markers) and the family's chat template, and only
the adaptor (plus any added marker rows) is left trainable. The swapped model shares no tensor with the model it
was made from: training one (its encoder too) never changes the other.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import get_args

import torch
from transformers import (
    AutoModelForCausalLM,
    FunAsrNanoConfig,
    FunAsrNanoForConditionalGeneration,
    FunAsrNanoProcessor,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from funasr_swap.adaptor import fit_embedding_bridge, resize_adaptor
from funasr_swap.adaptor_strategies import Strategy
from funasr_swap.compat import fill_gaps
from funasr_swap.convert import generation_config
from funasr_swap.ctc_branch import CtcBranch, copy_ctc_branch
from funasr_swap.data import Utterance
from funasr_swap.errors import NAMED, SettingError
from funasr_swap.llms import (
    LLMSpec,
    RandomWeights,
    count_parameters,
    get_llm,
    load_llm,
    match_llm,
    text_config,
    tiny_text_config,
)
from funasr_swap.plan import INFERENCE_BYTES, available_memory_gib, inference_gib
from funasr_swap.vocab_init import VocabInitSettings, carry_adaptor
from tokenmap.assets import load_tokenizer, tokenizer_fingerprint
from tokenmap.chat_setup import read_chat_setup, record_chat_setup
from tokenmap.families import ChatFamily, detect_family, get_family
from tokenmap.io import atomic_folder
from tokenmap.markers import SpeechMarkers, resolve_speech_markers
from tokenmap.markers import Strategy as MarkerStrategy  # named apart from the adaptor strategy
from tokenmap.prompt import build_chat_template
from tokenmap.vocab_map import VocabMap

SWAP_REPORT_MD = "SWAP_REPORT.md"
SWAP_REPORT_JSON = "swap_report.json"
RANDOM_WEIGHTS: tuple[str, ...] = get_args(RandomWeights)
RANDOM_WEIGHTS_BYTES = 4  # a random LLM is built in float32


@dataclass
class SwapReport:
    """What a swap changed, for people: printed by the CLI and kept beside the saved folder."""

    source_llm: str
    target_llm: str
    family: str
    source_hidden: int
    target_hidden: int
    adaptor_strategy: str
    adaptor_params_before: int
    adaptor_params_after: int
    markers: dict[str, tuple[str, int]]
    added_token_ids: list[int]
    tokenizer_work: str
    random_weights: str | None = None  # "tiny" or "real": the LLM was built from a registry shape, untrained
    bridge: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    vocab_init: dict[str, float] = field(default_factory=dict)  # strategy "vocab": the carry's and the fit's numbers

    @property
    def random_weights_warning(self) -> str | None:
        """The line that opens the report of a model with random weights; None for one with a trained LLM."""
        if self.random_weights is None:
            return None
        return (
            f"RANDOM WEIGHTS: the LLM {self.target_llm} was built from its registry shape ({self.random_weights}) "
            "with random weights: not a usable model (it transcribes nothing); swap a local LLM folder for a "
            "trained LLM"
        )

    def to_markdown(self) -> str:
        """The report as a Markdown table; a model with random weights says so first, in bold."""
        rows = [
            ("LLM", f"{self.source_llm} -> {self.target_llm} ({self.family})"),
            ("llm_dim", f"{self.source_hidden} -> {self.target_hidden}"),
            (
                "adaptor",
                f"{self.adaptor_strategy}: {self.adaptor_params_before:,} -> {self.adaptor_params_after:,} params",
            ),
            ("tokenizer work", self.tokenizer_work),
            ("speech markers", ", ".join(f"{role} {tok}={i}" for role, (tok, i) in self.markers.items())),
            ("added token rows", str(self.added_token_ids) if self.added_token_ids else "none"),
        ]
        rows += [(f"bridge {key}", f"{value:.4g}") for key, value in self.bridge.items()]
        rows += [(f"vocab {key}", f"{value:.4g}") for key, value in self.vocab_init.items()]
        rows += [("warning", w) for w in self.warnings]
        table = "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows) + "\n"
        return (f"**{self.random_weights_warning}**\n\n" if self.random_weights else "") + table


@dataclass
class SwappedModel:
    model: FunAsrNanoForConditionalGeneration
    processor: FunAsrNanoProcessor
    report: SwapReport

    def save(self, folder: str | os.PathLike, ctc_branch_from: str | os.PathLike | None = None) -> Path:
        """Write a standard Hugging Face folder (model, processor, the report as SWAP_REPORT.md for people and
        swap_report.json for programs) through a temporary sibling. `ctc_branch_from`: the base's folder, whose CTC
        branch (`funasr_swap.ctc_branch`, for timestamps) the swap keeps, since it keeps the encoder the branch
        reads."""
        with atomic_folder(folder) as tmp:
            if ctc_branch_from is not None:
                copy_ctc_branch(ctc_branch_from, tmp)
            self.model.save_pretrained(tmp)
            self.processor.save_pretrained(tmp)
            (tmp / SWAP_REPORT_MD).write_text(self.report.to_markdown())
            (tmp / SWAP_REPORT_JSON).write_text(json.dumps(asdict(self.report), ensure_ascii=False, indent=2))
        return Path(folder)


def read_swap_report(folder: str | os.PathLike) -> SwapReport | None:
    """The report `SwappedModel.save` wrote into `folder`; None for a folder that is no swap (e.g. the base)."""
    path = Path(folder) / SWAP_REPORT_JSON
    if not path.is_file():
        return None
    fields = json.loads(path.read_text())
    fields["markers"] = {role: tuple(pair) for role, pair in fields["markers"].items()}
    return SwapReport(**fields)


def _check_fits_in_memory(spec: LLMSpec) -> None:
    """Refuse a real-shape random build that this machine's free memory cannot hold, before allocating anything."""
    planned = inference_gib(spec.name)  # the swap plan's figure, for bf16 weights
    needed = planned * RANDOM_WEIGHTS_BYTES / INFERENCE_BYTES
    available = available_memory_gib()
    if needed > available:
        raise MemoryError(
            f"{spec.name} with random_weights='real' needs {needed:,.1f} GiB for its float32 weights (the swap "
            f"plan's {planned:,.1f} GiB in bf16), {available:,.1f} GiB available; use random_weights='tiny' "
            "(CLI: --random-weights tiny), or a machine with more memory"
        )


def check_target(target: str | os.PathLike, random_weights: RandomWeights | None) -> LLMSpec | None:
    """Check, before anything loads, that `swap_llm`'s `target` and `random_weights` go together: a local LLM folder
    (its weights are loaded) without random weights, or a registry name with them. Returns the registry entry of a
    name, None for a folder; KeyError listing the registry for an unknown name, `SettingError` for a mismatch."""
    if random_weights is not None and random_weights not in RANDOM_WEIGHTS:
        raise ValueError(f"random_weights must be one of {', '.join(RANDOM_WEIGHTS)} or None, got {random_weights!r}")
    if Path(target).expanduser().is_dir():
        if random_weights is not None:
            raise SettingError("{random_weights} is for registry names; {target} is a folder, whose weights are "
                               "loaded: leave the random weights out", random_weights=random_weights,
                               target=str(target))  # fmt: skip
        return None
    spec = get_llm(str(target))  # KeyError listing the registry for anything else
    if random_weights is None:
        raise SettingError(
            f"{{target}}: no such folder, and the registry's {spec.name} has no weights: pass the LLM's folder, or "
            f"{{random_weights}} ({' or '.join(RANDOM_WEIGHTS)}: a small model of its family or its real shape) to "
            "build it with random weights",
            target=str(target), random_weights=NAMED,
        )  # fmt: skip
    return spec


def _target_llm(
    target: str | os.PathLike, random_weights: RandomWeights | None, seed: int
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, LLMSpec | None, str]:
    """(causal LM, its tokenizer, registry entry, display name) for a local folder, or for a registry name with
    `random_weights` (`check_target`). Each call loads or builds a new model and loads a new tokenizer: the swap owns
    them (its `add` markers change the tokenizer; a copy of a 256k-token tokenizer costs as much as loading it)."""
    spec = check_target(target, random_weights)
    if spec is None:
        loaded = load_llm(target)
        return loaded.model, loaded.tokenizer, loaded.spec, str(target)
    if random_weights == "real":
        _check_fits_in_memory(spec)
    config = tiny_text_config(spec.name) if random_weights == "tiny" else text_config(spec.name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        llm = AutoModelForCausalLM.from_config(config)
    return llm.eval(), load_tokenizer(spec.tokenizer), spec, spec.name


def _add_embedding_rows(llm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, new_ids: list[int]) -> None:
    """Make rows for the added marker tokens, initialised from the mean embedding (docs/architecture.md, tokens)."""
    rows = llm.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        llm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        for matrix in {
            id(m): m for m in (llm.get_input_embeddings().weight, llm.get_output_embeddings().weight)
        }.values():
            mean = matrix[:rows].mean(0)
            matrix[new_ids] = mean


def _bridge_rows(vocab_map: VocabMap | None, vocabulary_size: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Token ids shared by the two vocabularies (same bytes, one token each side), and how they were found; no map:
    the same vocabulary (of `vocabulary_size` tokens) on both sides."""
    if vocab_map is None:
        ids = torch.arange(vocabulary_size)
        return ids, ids, "same vocabulary"
    src_ids, dst_ids = vocab_map.pairs()
    return torch.as_tensor(src_ids), torch.as_tensor(dst_ids), f"VocabMap exact/normalised matches: {len(src_ids):,}"


def swap_llm(
    model: FunAsrNanoForConditionalGeneration,
    processor: FunAsrNanoProcessor,
    target: str | os.PathLike,
    *,
    markers: MarkerStrategy | None = None,
    boundaries: bool = False,
    strategy: Strategy = "fresh",
    random_weights: RandomWeights | None = None,
    seed: int = 0,
    clips: Sequence[Utterance] = (),
    vocab: VocabInitSettings = VocabInitSettings(),
    ctc_branch: CtcBranch | None = None,
) -> SwappedModel:
    """Put the LLM `target` into a Fun-ASR-Nano `(model, processor)` (the base, or an earlier swap).

    `model` and `processor` are not modified, and the result shares no tensor with them.

    Args:
        target: a local LLM folder (its weights are loaded), or a registry name (`Llama-3.2-1B`, ...) together with
            `random_weights`.
        markers: how to find the audio placeholder (and `boundaries`) in the target tokenizer: `reuse` an unused
            special token, or `add` new ones (their embedding rows are created and stay trainable); None: the
            family's default (`tokenmap.markers.resolve_speech_markers`).
        strategy: `fresh` re-initialises the adaptor's output side; `bridge` widens the old adaptor through a map
            fitted between the two LLMs' input embeddings over their shared tokens; `vocab` starts from
            `vocab.start` and fits the adaptor so that its frames land where the base's frames, read as tokens and
            carried through the vocabulary map, land in the new LLM (`funasr_swap.vocab_init`); it needs `clips`.
        clips: training utterances the `vocab` initialisation reads frames from (the first `vocab.clips`).
        ctc_branch: the original's CTC branch with its tokenizer (`funasr_swap.ctc_branch.read_ctc_branch`): the
            `vocab` initialisation then reads the frames by its posteriors instead of the base adaptor's output.
        random_weights: for a registry name only, and required with one: build the LLM with random weights (seeded
            by `seed`), `tiny` (`llms.tiny_text_config`: tests, experiments) or of its `real` shape (benchmarks);
            not a usable model, the report says so. A real shape that this machine's free memory cannot hold
            raises MemoryError before anything is allocated.
    """
    llm, tokenizer, spec, target_name = _target_llm(target, random_weights, seed)  # `add` markers mutate the tokenizer
    family: ChatFamily = get_family(spec.family) if spec else detect_family(tokenizer)
    source_family = read_chat_setup(processor.tokenizer, processor.audio_token).family
    same_vocabulary = tokenizer_fingerprint(processor.tokenizer) == tokenizer_fingerprint(tokenizer)
    speech: SpeechMarkers = resolve_speech_markers(tokenizer, markers, boundaries=boundaries, family=family)
    warnings: list[str] = []
    if speech.added_ids:
        _add_embedding_rows(llm, tokenizer, list(speech.added_ids))
    text_cfg = llm.config
    old = model.config
    new_dim = text_cfg.hidden_size

    if strategy == "vocab" and not clips:
        raise ValueError("strategy='vocab' reads the base's frames of a few clips: pass clips (training utterances)")
    start = vocab.start if strategy == "vocab" else strategy
    if strategy == "vocab" and ctc_branch is not None and ctc_branch.tokenizer is None:
        raise ValueError("the CTC branch has no tokenizer: read_ctc_branch(folder, tokenizer=<its vocabulary's>)")
    mapped = strategy == "vocab" or (start == "bridge" and not same_vocabulary)
    vocab_map = VocabMap.build(processor.tokenizer, tokenizer) if mapped else None
    # what the vocab initialisation reads the frames in: the base LLM's vocabulary, or the CTC branch's
    reading_map = VocabMap.build(ctc_branch.tokenizer, tokenizer) if strategy == "vocab" and ctc_branch else vocab_map
    bridge = None
    bridge_report: dict[str, float] = {}
    source_spec = match_llm(old.text_config)
    if start == "bridge":
        src_ids, dst_ids, how = _bridge_rows(vocab_map, len(processor.tokenizer))
        bridge = fit_embedding_bridge(
            model.get_input_embeddings().weight.detach()[src_ids].float(),
            llm.get_input_embeddings().weight.detach()[dst_ids].float(),
        )
        bridge_report = bridge.metrics()
        warnings.append(f"bridge fitted on {how}")
    adaptor, adaptor_report = resize_adaptor(
        model.model.multi_modal_projector, new_dim, start, bridge=bridge, seed=seed
    )

    config = FunAsrNanoConfig(
        audio_config=copy.deepcopy(old.audio_config),  # a config object is shared, not copied, by the constructor
        adaptor_config=adaptor.config,
        text_config=text_cfg,
        audio_token_id=speech.placeholder_id,
        tie_word_embeddings=bool(getattr(text_cfg, "tie_word_embeddings", False)),
    )
    with torch.device("meta"):
        swapped = FunAsrNanoForConditionalGeneration(config)
    # the swap owns every tensor it holds (the adaptor is new, the LLM freshly loaded or built); the audio tower is
    # copied, since its tensors are assigned below: else training the swap's encoder would train the base's
    parts = {
        "model.audio_tower": copy.deepcopy(model.model.audio_tower),
        "model.multi_modal_projector": adaptor,
        "model.language_model": llm.base_model,
    }
    state = {f"{prefix}.{k}": v for prefix, part in parts.items() for k, v in part.state_dict().items()}
    state["lm_head.weight"] = llm.get_output_embeddings().weight
    swapped.load_state_dict(state, strict=True, assign=True)
    for prefix, part in parts.items():  # non-persistent buffers (rotary inv_freq, ...) are not in a state dict
        for name, buffer in part.named_buffers():
            module_name, _, leaf = f"{prefix}.{name}".rpartition(".")
            swapped.get_submodule(module_name)._buffers[leaf] = buffer
    if config.tie_word_embeddings:
        swapped.tie_weights()
    fill_gaps(swapped)
    vocab_report: dict[str, float] = {}
    if strategy == "vocab":
        markers_ids = [i for _, i in speech.tokens.values()] + list(speech.added_ids)
        vocab_report = carry_adaptor(
            model, processor, swapped, reading_map, clips, excluded=markers_ids, settings=vocab, seed=seed,
            ctc_branch=ctc_branch,
        )  # fmt: skip
    if getattr(text_cfg, "final_logit_softcapping", None):
        warnings.append(
            "final logit soft-capping restored with a hook on lm_head; after loading with stock transformers call "
            "funasr_swap.compat.fill_gaps(model)"
        )
    swapped.eval()

    # as the base's processor: batches pad on the left (generation), padding on by default (processor kwargs)
    tokenizer.padding_side = "left"
    tokenizer.init_kwargs.update(padding=True, padding_side="left")
    if tokenizer.pad_token is None:  # Llama-3 has none; batching needs one, and the attention mask hides it
        tokenizer.pad_token = tokenizer.eos_token
        warnings.append(f"the target tokenizer has no pad token; using its eos {tokenizer.eos_token!r}")
    template = build_chat_template(family, speech)
    tokenizer.chat_template = template
    record_chat_setup(tokenizer, family, speech)  # saved with the tokenizer: data, export and the demo read it
    new_processor = FunAsrNanoProcessor(
        feature_extractor=copy.deepcopy(processor.feature_extractor),
        tokenizer=tokenizer,
        chat_template=template,
        audio_token=speech.placeholder,
    )
    swapped.generation_config = generation_config(tokenizer, family)
    set_trainable(swapped)

    report = SwapReport(
        source_llm=source_spec.name if source_spec else f"{old.text_config.model_type} ({source_family.name})",
        target_llm=target_name,
        family=family.name,
        source_hidden=old.text_config.hidden_size,
        target_hidden=new_dim,
        adaptor_strategy=strategy,
        adaptor_params_before=count_parameters(model.model.multi_modal_projector),
        adaptor_params_after=count_parameters(adaptor),
        markers=speech.tokens,
        added_token_ids=list(speech.added_ids),
        tokenizer_work=(
            "same vocabulary and role markers"
            if same_vocabulary
            else f"{source_family.name} -> {family.name}: "
            + ("same role markers" if source_family == family else "new role markers")
            + ", vocabulary remap (VocabMap)"
        ),
        random_weights=random_weights,
        bridge=bridge_report | {k: v for k, v in adaptor_report.metrics().items() if k.startswith("widening")},
        warnings=warnings,
        vocab_init=vocab_report,
    )
    return SwappedModel(swapped, new_processor, report)


def set_trainable(model: FunAsrNanoForConditionalGeneration) -> None:
    """Freeze everything but the adaptor. Rows of added speech markers (`SwapReport.added_token_ids`) train through
    `funasr_swap.training.setup_trainable` (`TrainableTokenRows`): a few rows, not the whole embedding matrix."""
    model.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(True)
