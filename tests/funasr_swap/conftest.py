"""Fixtures of tests/funasr_swap: a tiny original-format checkpoint with a CTC branch of the real structure over the
miniature's vocabulary (Qwen3's, the blank last; no PyPI package ships the real branch's `multilingual.tiktoken`),
with that tokenizer as its `ctc_tokenizer/`, and its conversion. Shared by the session: tests read them only."""

from __future__ import annotations

import pytest
import torch

from funasr_swap.base import tiny_base
from funasr_swap.convert import convert_checkpoint
from funasr_swap.ctc_branch import CTC_TOKENIZER_DIR
from tests.conftest import real_tokenizer
from tests.funasr_swap.test_convert import original_yaml, to_original, variant, write_original


@pytest.fixture(scope="session")
def branch_source():
    """A CTC branch of the real structure, as modules: the decoder (a tiny adaptor) and its output layer."""
    decoder = tiny_base(seed=5)[0].model.multi_modal_projector.eval()
    torch.manual_seed(5)
    output = torch.nn.Linear(decoder.config.hidden_size, len(real_tokenizer("qwen3")) + 1)  # the blank last
    return decoder, output


@pytest.fixture(scope="session")
def original_with_ctc(branch_source, tmp_path_factory):
    base, _ = tiny_base(seed=0)
    plain = write_original(base, tmp_path_factory.mktemp("orig") / "plain")
    decoder, output = branch_source
    renamed = to_original({f"model.multi_modal_projector.{k}": v for k, v in decoder.state_dict().items()}, base.config)
    state = to_original(base.state_dict(), base.config)
    state |= {k.replace("audio_adaptor.", "ctc_decoder."): v for k, v in renamed.items()}
    state |= {"ctc.ctc_lo.weight": output.weight.detach(), "ctc.ctc_lo.bias": output.bias.detach()}
    conf = original_yaml(base.config)
    adaptor = decoder.config
    conf["ctc_decoder_conf"] = {
        "downsample_rate": 1, "ffn_dim": adaptor.projector_hidden_size, "llm_dim": adaptor.hidden_size,
        "encoder_dim": decoder.linear_1.in_features, "n_layer": adaptor.num_hidden_layers,
        "attention_heads": adaptor.num_attention_heads,
    }  # fmt: skip
    folder = tmp_path_factory.mktemp("orig") / "with-ctc"
    variant(plain, folder, **{"model.pt": {"state_dict": state}, "config.yaml": conf})
    real_tokenizer("qwen3").save_pretrained(folder / CTC_TOKENIZER_DIR)
    return folder


@pytest.fixture(scope="session")
def converted(original_with_ctc, tmp_path_factory):
    return convert_checkpoint(original_with_ctc, tmp_path_factory.mktemp("hf") / "hf", dtype=torch.float32)


@pytest.fixture(scope="session")
def timestamped_folder(converted, tmp_path_factory):
    """A tiny model whose answer depends on the audio (`audio_dependent_tiny_base`), with the CTC branch and its
    tokenizer of `converted` beside it, as a swap of that folder carries them (same encoder shape)."""
    from funasr_swap.ctc_branch import copy_ctc_branch
    from tests.conftest import audio_dependent_tiny_base

    model, processor = audio_dependent_tiny_base(0)
    folder = tmp_path_factory.mktemp("timestamped") / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    copy_ctc_branch(converted, folder)
    return folder


@pytest.fixture(scope="session")
def timestamped_export(timestamped_folder, tmp_path_factory):
    """`export_edge` (f32) of `timestamped_folder`: the export carries the CTC branch (about 30 s on 2 cores)."""
    from funasr_swap.export import export_edge

    folder = tmp_path_factory.mktemp("edge") / "timestamped"
    export_edge(timestamped_folder, folder, "f32")
    return folder
