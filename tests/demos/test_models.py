"""The demo's models: loaded once with their cards and edge exports; a folder or an export that does not load is
kept with its error."""

from __future__ import annotations

import json

import pytest

from demos.models import load_models
from funasr_swap.llms import count_parameters
from funasr_swap.miniature import read_index

pytestmark = pytest.mark.slow  # the quick world: about a minute, once per session


def test_cards_of_the_quickstart_models_come_from_their_runs(quick_world, world_models):
    index = read_index(quick_world)
    assert [m.name for m in world_models] == [entry.name for entry in index]
    for model, entry in zip(world_models, index):
        assert model.loaded and model.folder == quick_world / entry.folder
        card = model.card
        assert (card.llm, card.family, card.adaptor_init, card.test_cer) == (
            entry.llm, entry.family, entry.init, entry.test_cer
        )  # fmt: skip
        assert card.hidden_size == model.model.config.text_config.hidden_size
        assert card.adaptor_params == count_parameters(model.model.model.multi_modal_projector)
        assert (card.placeholder, card.placeholder_id) == (model.processor.audio_token, model.processor.audio_token_id)
        assert f"`{card.placeholder}` ({card.placeholder_id})" in card.to_markdown()
        assert f"{entry.test_cer:.1%}" in card.to_markdown()
    for model in world_models[1:]:  # each swap's own report agrees
        report = json.loads((model.folder.parent / "swap_report.json").read_text())
        assert model.card.adaptor_params == report["adaptor_params_after"]
        assert model.card.marker_strategy == ("add" if report["added_token_ids"] else "reuse")
        assert report["markers"]["placeholder"] == [model.card.placeholder, model.card.placeholder_id]
    markers = {m.card.family: m.card.marker_strategy for m in world_models}
    # DeepSeek-V2's tokenizer has no unused special token: its swap adds one (tokenmap.markers.default_strategy)
    assert markers == {"qwen3": "reuse", "llama3": "reuse", "gemma2": "reuse", "deepseek-v2": "add"}


def test_a_folder_outside_a_quickstart_run_gets_a_card_from_its_config(tiny_base_folder):
    [model] = load_models([tiny_base_folder])
    assert model.name == tiny_base_folder.name
    assert (model.card.llm, model.card.family, model.card.adaptor_init, model.card.test_cer) == (
        "qwen3", "qwen3", "unknown", None
    )  # fmt: skip
    assert (model.card.marker_strategy, model.card.placeholder_id) == ("reuse", 151646)
    assert "not measured" in model.card.to_markdown()


def test_an_unreadable_folder_is_kept_with_its_error_and_names_stay_unique(tmp_path, tiny_base_folder):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    models = load_models([tmp_path / "missing", tiny_base_folder, tmp_path / "broken", tiny_base_folder])
    assert [m.loaded for m in models] == [False, True, False, True]
    assert models[0].error and "missing" in models[0].error and models[0].model is None
    assert models[2].error
    assert [m.name for m in models] == ["missing", "tiny", "broken", "tiny (2)"]


def test_an_export_is_given_or_found_beside_a_runs_final_and_a_broken_one_keeps_its_error(
    tiny_base_folder, tiny_export, tmp_path
):
    import shutil

    from demos.models import export_folder

    run = tmp_path / "run"
    shutil.copytree(tiny_base_folder, run / "final")
    assert export_folder(run / "final") is None  # no RUN/edge yet
    shutil.copytree(tiny_export, run / "edge")
    assert export_folder(run / "final") == run / "edge"
    assert export_folder(tiny_base_folder) is None  # not a run's final: its parent's edge/ is not guessed at
    shutil.copytree(tiny_base_folder, tmp_path / "plain")
    broken = tmp_path / "broken-edge"
    broken.mkdir()
    found, given, none, bad = load_models(
        [run / "final", tiny_base_folder, tmp_path / "plain", tmp_path / "missing"],
        {tiny_base_folder: tiny_export, tmp_path / "missing": tiny_export},
    )
    assert found.edge is not None and found.edge_folder == run / "edge" and found.has_edge
    assert given.edge is not None and given.edge_folder == tiny_export
    assert none.edge is None and not none.has_edge
    assert not bad.loaded and not bad.has_edge  # no model: no edge column either
    [broken_one] = load_models([tiny_base_folder], {tiny_base_folder: broken})
    assert broken_one.edge is None and broken_one.has_edge and "no edge.json" in broken_one.edge_error
