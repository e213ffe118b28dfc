"""The gaps of transformers' FunAsrNano that funasr_swap fills."""

from __future__ import annotations

import numpy as np
import torch
from transformers import FunAsrNanoForConditionalGeneration, PreTrainedModel

from funasr_swap.base import tiny_base
from funasr_swap.compat import mask_adaptor_padding
from funasr_swap.convert import load_base
from funasr_swap.llms import load_llm


def adaptor_rows(model, processor, clips: list[np.ndarray]) -> list[torch.Tensor]:
    """Each clip's adaptor outputs (valid frames only), computed in one padded batch."""
    features = processor.feature_extractor(clips, sampling_rate=16000, return_attention_mask=True, return_tensors="pt")
    mask = features["input_features_mask"]
    with torch.no_grad():
        out = model.get_audio_features(features["input_features"], mask).pooler_output
    return list(out.split(mask.sum(-1).tolist()))


def test_padding_in_a_batch_does_not_change_the_adaptor_output():
    model, processor = tiny_base()
    rng = np.random.default_rng(0)
    short, long = rng.standard_normal(4000).astype(np.float32), rng.standard_normal(24000).astype(np.float32)
    alone = adaptor_rows(model, processor, [short])[0]
    batched = adaptor_rows(model, processor, [short, long])[0]
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)

    # the gap itself: a model built by transformers alone lets the short clip attend to the padding
    unpatched = FunAsrNanoForConditionalGeneration(model.config.__class__.from_dict(model.config.to_dict())).eval()
    unpatched.load_state_dict(model.state_dict())
    assert unpatched.config.adaptor_config._attn_implementation is None
    drift = adaptor_rows(unpatched, processor, [short, long])[0] - adaptor_rows(unpatched, processor, [short])[0]
    assert drift.abs().max() > 1e-3
    mask_adaptor_padding(unpatched)
    mask_adaptor_padding(unpatched)  # idempotent
    torch.testing.assert_close(adaptor_rows(unpatched, processor, [short, long])[0], alone, rtol=1e-5, atol=1e-5)


def test_loading_never_asks_for_hub_kernels(tiny_base_folder, tiny_llama_folder, monkeypatch):
    """transformers 5.25 kernelizes every `from_pretrained` by default, with kernels fetched from the Hub at load
    time on a GPU (offline, loading onto CUDA fails); the project's loaders keep the layers the model defines."""
    asked = []
    set_use_kernels = PreTrainedModel.set_use_kernels

    def recording(self, use_kernels, *args, **kwargs):
        asked.append(use_kernels)
        return set_use_kernels(self, use_kernels, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "set_use_kernels", recording)
    load_base(tiny_base_folder)
    load_llm(tiny_llama_folder)
    assert asked == [False, False]
    FunAsrNanoForConditionalGeneration.from_pretrained(tiny_base_folder)  # the gap itself: stock loading asks
    assert asked[-1] is True
