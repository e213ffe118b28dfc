"""evaluate: scores, the loss and its alternatives, clips up to what the encoder covers."""

from __future__ import annotations

import pytest
import soundfile as sf

from funasr_swap.base import tiny_base
from funasr_swap.data import Utterance
from funasr_swap.training import evaluate, supervised_loss
from tests.funasr_swap.training.conftest import RATE, _log, _tones


def test_evaluate_scores_audio_up_to_what_the_encoder_covers(tmp_path):
    # 62 s: past transcribe's default maximum (60 s, for audio a user hands it), within the encoder's 122.9 s
    path = tmp_path / "long.wav"
    sf.write(path, _tones(["one", "two"] * 103), RATE)
    model, processor = tiny_base()
    evaluation = evaluate(model, processor, [Utterance(path, "one two", "en", 61.8)], loss_fn=None)
    assert len(evaluation.hypotheses) == 1 and "cer" in evaluation.metrics


def test_evaluate_scores_transcripts(short_run, utterances):
    model, processor = short_run["model"], short_run["processor"]
    evaluation = evaluate(model, processor, utterances["valid"], batch_size=2)
    last = [r for r in _log(short_run["out"]) if "valid/cer" in r][-1]
    assert evaluation.metrics["cer"] == pytest.approx(last["valid/cer"])
    assert evaluation.metrics["loss"] == pytest.approx(last["valid/loss"], rel=1e-5)
    assert len(evaluation.hypotheses) == len(utterances["valid"])
    # another loss function, or none: the transcripts and scores stay
    doubled = evaluate(
        model, processor, utterances["valid"], batch_size=2, loss_fn=lambda m, b: 2 * supervised_loss(m, b)
    )
    assert doubled.metrics["loss"] == pytest.approx(2 * evaluation.metrics["loss"], rel=1e-5)
    unscored = evaluate(model, processor, utterances["valid"], batch_size=2, loss_fn=None)
    assert "loss" not in unscored.metrics and unscored.hypotheses == evaluation.hypotheses
