"""The original's CTC branch: kept by `convert` in a sidecar file that stock loading ignores, read back as a module
that computes what the original's branch computes, and read by the `vocab` initialisation. The tiny original
checkpoint's branch has the real structure (funasr's Transformer adaptor, then `ctc.ctc_lo`) over the miniature's
vocabulary (Qwen3's, the blank last): no PyPI package ships the real branch's `multilingual.tiktoken`."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSpeechSeq2Seq

from funasr_swap.convert import convert_checkpoint, load_base
from funasr_swap.ctc_branch import CTC_BRANCH_FILE, CTC_TOKENIZER_DIR, read_ctc_branch
from funasr_swap.data import Utterance
from funasr_swap.swap import swap_llm
from funasr_swap.vocab_init import VocabInitSettings
from tests.conftest import real_tokenizer, write_tone


def test_convert_keeps_the_ctc_branch_beside_a_folder_that_loads_as_before(converted):
    assert (converted / CTC_BRANCH_FILE).is_file() and (converted / CTC_TOKENIZER_DIR / "tokenizer.json").is_file()
    model = AutoModelForSpeechSeq2Seq.from_pretrained(converted)  # stock loading: the sidecar is not read
    assert not any("ctc" in key for key in model.state_dict())


def test_the_kept_branch_computes_the_originals_posteriors(converted, branch_source):
    decoder, output = branch_source
    branch = read_ctc_branch(converted, tokenizer=real_tokenizer("qwen3"))
    assert branch.blank_id == len(real_tokenizer("qwen3")) and branch.tokenizer is not None
    features = torch.randn(2, 7, decoder.linear_1.in_features)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    with torch.no_grad():
        expected = output(decoder(features, mask)[mask.bool()]).softmax(-1)
    torch.testing.assert_close(branch.posteriors(features, mask), expected)


def test_a_folder_without_a_branch_reads_none_and_a_conversion_passes_one_on(converted, tmp_path, tiny_base_folder):
    assert read_ctc_branch(tiny_base_folder) is None
    again = convert_checkpoint(converted, tmp_path / "again", dtype=torch.float32)
    assert (again / CTC_BRANCH_FILE).read_bytes() == (converted / CTC_BRANCH_FILE).read_bytes()


def test_the_vocab_initialisation_reads_frames_by_the_branch(converted, tmp_path):
    model, processor = load_base(converted)
    texts = ["hello world", "the cat sat", "seven green lamps"]
    clips = [Utterance(write_tone(tmp_path / f"{i}.wav", 0.7 + 0.3 * i), t, "en") for i, t in enumerate(texts)]
    branch = read_ctc_branch(converted, tokenizer=real_tokenizer("qwen3"))
    settings = VocabInitSettings(clips=3, steps=10, batch_size=2)
    result = swap_llm(model, processor, "Llama-3.2-1B", strategy="vocab", random_weights="tiny", seed=1,
                      clips=clips, vocab=settings, ctc_branch=branch)  # fmt: skip
    numbers = result.report.vocab_init
    assert numbers["read_by_ctc_branch"] == 1.0 and numbers["fit_error_after"] < numbers["fit_error_before"]
    assert numbers["carried_tokens"] > 100_000  # the branch's vocabulary (Qwen3's) carried into Llama-3's
    untokenized = read_ctc_branch(converted)
    assert untokenized.tokenizer is not None  # the folder's ctc_tokenizer/
    untokenized.tokenizer = None
    with pytest.raises(ValueError, match="no tokenizer"):
        swap_llm(model, processor, "Llama-3.2-1B", strategy="vocab", random_weights="tiny", clips=clips,
                 ctc_branch=untokenized)  # fmt: skip


@pytest.mark.slow  # a swap through the CLI, about 20 s on 2 cores
def test_a_swap_carries_the_branch_and_its_tokenizer(converted, tmp_path):
    from tests.funasr_swap.test_cli import invoke

    out = tmp_path / "swapped"
    result = invoke("swap", "--model", converted, "--llm", "Llama-3.2-1B", "--random-weights", "tiny", "-o", out)
    assert result.exit_code == 0, result.output
    assert (out / CTC_BRANCH_FILE).read_bytes() == (converted / CTC_BRANCH_FILE).read_bytes()
    assert read_ctc_branch(out).tokenizer.get_vocab() == real_tokenizer("qwen3").get_vocab()
