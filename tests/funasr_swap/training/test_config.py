"""TrainConfig's checks of settings that exclude each other."""

from __future__ import annotations

import re

import pytest

from funasr_swap.training import LoraSettings, TrainConfig


def test_lora_and_train_llm_exclude_each_other(tmp_path):
    with pytest.raises(ValueError, match=r"TrainConfig.lora and TrainConfig.train_llm=True both train the LLM"):
        TrainConfig(output_dir=tmp_path, lora=LoraSettings(), train_llm=True)


def test_audio_cache_settings_are_checked(tmp_path):
    """Named as a Python caller spells them (the CLI names its flags: tests/funasr_swap/test_cli_bad_inputs.py)."""
    cases = [
        ({"audio_cache": "fbank"}, "TrainConfig.audio_cache='fbank': choose one of none, features, encoder"),
        ({"audio_cache": "encoder", "unfreeze_encoder": True}, "needs the encoder frozen, not TrainConfig.unfreeze_"),
        ({"audio_cache": "features", "num_workers": 2}, "needs 0 DataLoader workers (each would keep its own cache), "
         "not TrainConfig.num_workers=2"),
        ({"audio_cache": "encoder", "dither": 1.0}, "it needs no audio cache, not TrainConfig.audio_cache='encoder'"),
        ({"dither": -1.0}, "TrainConfig.dither=-1 must be >= 0"),
    ]  # fmt: skip
    for settings, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            TrainConfig(output_dir=tmp_path, **settings)
