"""The exact world loss and the adaptor's CTC loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from funasr_swap.miniature.world_loss import adaptor_ctc_loss, world_cross_entropy


@pytest.mark.parametrize("softcap", [None, 30.0])
def test_world_cross_entropy_equals_the_full_vocabulary_loss(softcap):
    torch.manual_seed(0)
    vocabulary, width, world = 50, 8, [3, 7, 8, 20, 41]
    weight = torch.zeros(vocabulary, width)
    weight[world] = torch.randn(len(world), width)
    hidden = torch.randn(6, width) * 3
    targets = torch.tensor([3, 7, 41, 20, 8, 3])
    logits = hidden @ weight.T
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    full = F.cross_entropy(logits, targets)
    index = {token: row for row, token in enumerate(world)}
    compact = world_cross_entropy(
        hidden, weight[world], torch.tensor([index[t] for t in targets.tolist()]), vocabulary - len(world), softcap
    )
    torch.testing.assert_close(compact, full)


def test_adaptor_ctc_loss_is_low_for_token_embeddings_among_silence():
    torch.manual_seed(0)
    embeddings = torch.randn(20, 16)
    transcripts = [torch.tensor([3, 7, 7, 12]), torch.tensor([5, 1])]
    silence = torch.zeros(2, 16)  # between tokens (the repeated 7 needs it)
    spoken = [
        torch.cat([silence, *[torch.cat([embeddings[t : t + 1], silence]) for t in row.tolist()]])
        for row in transcripts
    ]
    lengths = torch.tensor([len(frames) for frames in spoken])
    aligned = adaptor_ctc_loss(torch.cat(spoken), lengths, embeddings, transcripts)
    assert aligned < 0.1
    wrong = [torch.tensor([4, 8, 8, 13]), torch.tensor([6, 2])]
    assert adaptor_ctc_loss(torch.cat(spoken), lengths, embeddings, wrong) > 10 * aligned
    silent = torch.zeros(int(lengths.sum()), 16)
    assert adaptor_ctc_loss(silent, lengths, embeddings, transcripts) > 10 * aligned
