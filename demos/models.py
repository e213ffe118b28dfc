"""The models a demo compares: each loaded once at start-up with its card, and its edge export (`funasr-swap export`)
when it has one; a folder that does not load becomes a card carrying the error, so that the page still serves the
others and says why one is missing.

A model's export is the one given for its folder (`load_models(exports=...)`), else the `edge` folder beside a
training run's `final` (`RUN/final` -> `RUN/edge`, as `funasr-swap export RUN/final -o RUN/edge` writes it: the
quickstart's runs and `funasr-swap train`'s share that layout)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import FunAsrNanoForConditionalGeneration, FunAsrNanoProcessor

    from funasr_swap.edge import EdgeModel

__all__ = ["EDGE_DIR", "DemoModel", "ModelCard", "export_folder", "load_models"]

EDGE_DIR = "edge"  # a training run's export, beside its model folder `final`

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelCard:
    """What the page says about one model."""

    llm: str  # registry name of its LLM, or the text model's type outside the registry
    family: str  # chat family (tokenmap.families), "unknown" when the tokenizer matches none
    hidden_size: int  # the LLM's width, which the adaptor's output must equal
    adaptor_params: int
    adaptor_init: str  # "joint" (the base), "bridge" or "fresh"; "unknown" outside a quickstart run
    marker_strategy: str  # how the audio placeholder was found: "reuse" or "add"; "unknown" with the family
    placeholder: str  # the audio placeholder token
    placeholder_id: int
    test_cer: float | None  # from the run's result.json; None when the folder has none

    def to_markdown(self) -> str:
        """The card as Markdown lines; tokens in code spans (`<unused0>` would otherwise read as an HTML tag)."""
        cer = "not measured" if self.test_cer is None else f"{self.test_cer:.1%}"
        return (
            f"LLM {self.llm} ({self.family}), hidden {self.hidden_size}  \n"
            f"adaptor {self.adaptor_params:,} params, init {self.adaptor_init}  \n"
            f"speech markers: {self.marker_strategy} `{self.placeholder}` ({self.placeholder_id})  \ntest CER: {cer}"
        )


@dataclass
class DemoModel:
    """One model folder: loaded with its card, or the error that kept it from loading."""

    name: str
    folder: Path
    model: FunAsrNanoForConditionalGeneration | None = None
    processor: FunAsrNanoProcessor | None = None
    card: ModelCard | None = None
    error: str | None = None
    edge: EdgeModel | None = None  # its export, loaded (`funasr_swap.edge`), when it has one
    edge_folder: Path | None = None
    edge_error: str | None = None  # why its export did not load

    @property
    def loaded(self) -> bool:
        return self.error is None

    @property
    def has_edge(self) -> bool:
        """Whether the page gives this model an edge column (its export, or the error that kept it from loading)."""
        return self.edge_folder is not None


def _folder_name(folder: Path) -> str:
    """A model's name when no run names it: the folder's, with its parent's for a training run's `final`."""
    from funasr_swap.miniature.quickstart import MODEL_DIR

    return f"{folder.parent.name}/{folder.name}" if folder.name == MODEL_DIR else folder.name


def _card(
    folder: Path, model: FunAsrNanoForConditionalGeneration, processor: FunAsrNanoProcessor
) -> tuple[str, ModelCard]:
    """The model's name and card. A quickstart run (`folder` is its `final`) names its LLM, family, adaptor init and
    test CER in the run's result.json; elsewhere they come from the config; the family and marker strategy from the
    chat setup the swap saved with the tokenizer (`tokenmap.chat_setup.read_chat_setup`)."""
    from funasr_swap.llms import count_parameters, match_llm
    from funasr_swap.miniature.runs import cached_run
    from tokenmap.chat_setup import read_chat_setup

    text_config = model.config.text_config
    try:
        chat = read_chat_setup(processor.tokenizer, processor.audio_token)
        family, strategy = chat.family.name, chat.markers.strategy
    except ValueError:  # a tokenizer of no known family still transcribes
        family, strategy = "unknown", "unknown"
    run = cached_run(folder.parent)
    if run is not None:
        name, llm, family, init, test_cer = run.name, run.llm, run.family, run.strategy, run.test_cer
    else:
        spec = match_llm(text_config)
        name, llm, init, test_cer = _folder_name(folder), spec.name if spec else text_config.model_type, "unknown", None
    card = ModelCard(
        llm=llm, family=family, hidden_size=text_config.hidden_size,
        adaptor_params=count_parameters(model.model.multi_modal_projector), adaptor_init=init,
        marker_strategy=strategy, placeholder=processor.audio_token,
        placeholder_id=processor.audio_token_id, test_cer=test_cer,
    )  # fmt: skip
    return name, card


def export_folder(folder: str | os.PathLike) -> Path | None:
    """The edge export found for model `folder` without being given: `RUN/edge` beside a run's `RUN/final`, when it
    holds an edge.json; None elsewhere (a folder's parent may hold several models: nothing is guessed there)."""
    from funasr_swap.edge.config import EDGE_CONFIG
    from funasr_swap.miniature.quickstart import MODEL_DIR

    folder = Path(folder)
    found = folder.parent / EDGE_DIR
    return found if folder.name == MODEL_DIR and (found / EDGE_CONFIG).is_file() else None


def _load_edge(entry: DemoModel, export: Path) -> None:
    from funasr_swap.edge import EdgeModel

    entry.edge_folder = export
    try:
        entry.edge = EdgeModel(export)
    except Exception as error:  # a broken export must not stop the demo: its column says why
        log.warning("could not load the export %s: %s", export, error)
        entry.edge_error = f"{type(error).__name__}: {error}"


def load_models(
    folders: Sequence[str | os.PathLike], exports: Mapping[str | os.PathLike, str | os.PathLike] | None = None
) -> list[DemoModel]:
    """Load every folder (`funasr_swap.convert.load_base`, on the CPU) once, in order, with its card and its edge
    export: `exports[folder]` when given, else `export_folder(folder)`'s; names are made unique by numbering
    repeats. A folder or an export that fails to load is kept with its error (and the error logged)."""
    from funasr_swap.convert import load_base

    given = {Path(folder).resolve(): Path(export) for folder, export in (exports or {}).items()}
    models: list[DemoModel] = []
    for folder in map(Path, folders):
        try:
            model, processor = load_base(folder)
            name, card = _card(folder, model, processor)
            entry = DemoModel(name, folder, model, processor, card)
        except Exception as error:  # any failure (missing, corrupt, unknown architecture) must not stop the demo
            log.warning("could not load %s: %s", folder, error)
            entry = DemoModel(_folder_name(folder), folder, error=f"{type(error).__name__}: {error}")
        export = given.get(folder.resolve()) or export_folder(folder)
        if entry.loaded and export is not None:
            _load_edge(entry, export)
        taken = {m.name for m in models}
        if entry.name in taken:
            entry.name = next(
                f"{entry.name} ({n})" for n in range(2, len(models) + 3) if f"{entry.name} ({n})" not in taken
            )
        models.append(entry)
    return models
