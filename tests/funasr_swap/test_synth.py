"""The synthetic corpus: a deterministic sentence generator, disjoint splits, 16 kHz mono wav spoken by espeak-ng,
manifests that load_manifest accepts, reuse of finished clips, and the `synth` command."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import soundfile
from typer.testing import CliRunner

from funasr_swap.cli import app
from funasr_swap.data import load_manifest
from funasr_swap.synth import LANGUAGES, SPLITS, plan_corpus, sentences, speak, synthesize

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


@pytest.mark.parametrize("language", LANGUAGES)
def test_sentences_are_deterministic_distinct_and_seeded(language):
    first = sentences(language, 500, seed=0)
    assert first == sentences(language, 500, seed=0)
    assert len(set(first)) == 500
    assert sentences(language, 100, seed=0) == first[:100]  # a smaller request is a prefix
    assert len(set(first) & set(sentences(language, 500, seed=1))) < 25  # another seed: (nearly) other sentences
    assert sentences(language, 0) == []


def test_english_is_lowercase_words_and_mandarin_a_modest_character_set():
    english = sentences("en", 3000)
    assert all(re.fullmatch(r"[a-z]+( [a-z]+)+", s) for s in english)
    mandarin = sentences("zh", 3000)
    characters = set("".join(mandarin))
    assert all("\u4e00" <= c <= "\u9fff" for c in characters)  # CJK only: no digits, spaces or punctuation
    assert 100 < len(characters) < 250
    with pytest.raises(ValueError, match="language must be one of en, zh; got 'fr'"):
        sentences("fr", 3)


def test_espeak_reads_every_mandarin_character_as_mandarin():
    characters = "".join(sorted(set("".join(sentences("zh", 3000)))))
    phonemes = subprocess.run(
        ["espeak-ng", "-v", "cmn-latn-pinyin", "-q", "-x", " ".join(characters)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "(en)" not in phonemes  # the plain `cmn` voice of espeak-ng 1.51 fails exactly this
    assert len(phonemes.split("_|")) > len(characters)  # one syllable per character, at least


def test_plan_splits_each_language_into_disjoint_sets_of_sentences():
    clips = plan_corpus(101, seed=3, valid_fraction=0.1, test_fraction=0.2)
    assert clips == plan_corpus(101, seed=3, valid_fraction=0.1, test_fraction=0.2)
    counts = {(split, lang): sum(c.split == split and c.language == lang for c in clips) for split in SPLITS
              for lang in LANGUAGES}  # fmt: skip
    assert counts == {
        ("train", "en"): 36, ("valid", "en"): 5, ("test", "en"): 10,
        ("train", "zh"): 35, ("valid", "zh"): 5, ("test", "zh"): 10,
    }  # fmt: skip
    texts = {split: {c.text for c in clips if c.split == split} for split in SPLITS}
    assert sum(map(len, texts.values())) == 101  # every sentence once: no valid/test sentence in train
    assert len({c.voice for c in clips}) > 20 and len({c.speed for c in clips}) > 20
    assert {c.voice.split("+")[0] for c in clips if c.language == "zh"} == {"cmn-latn-pinyin"}


def test_plan_refuses_a_corpus_without_train():
    with pytest.raises(ValueError, match="2 en utterance\\(s\\) leave none for train after 1 valid and 1 test"):
        plan_corpus(4)
    assert {c.split for c in plan_corpus(2, ["en"], valid_fraction=0, test_fraction=0.3)} == {"train", "test"}
    with pytest.raises(ValueError, match="test_fraction must be in \\[0, 1\\), got 1.5"):
        plan_corpus(10, test_fraction=1.5)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth")
    report = synthesize(folder, 6, seed=0, valid_fraction=0.2, test_fraction=0.2, workers=2, progress=False)
    return folder, report


def test_synthesize_writes_16k_mono_wav_and_manifests_load_manifest_accepts(corpus):
    folder, report = corpus
    assert report.synthesized == 6 and report.reused == 0
    assert set(report.manifests) == set(SPLITS)
    texts = {}
    for split in SPLITS:
        manifest = load_manifest(folder / f"{split}.jsonl")
        assert [u.language for u in manifest.utterances] == ["en", "zh"]
        for line, utterance in zip((folder / f"{split}.jsonl").read_text().splitlines(), manifest.utterances):
            record = json.loads(line)
            assert set(record) == {"audio", "text", "language", "duration"}
            assert re.fullmatch(r"clips/[0-9a-f]{16}\.wav", record["audio"])  # relative to the manifest's folder
            info = soundfile.info(utterance.audio)
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            assert 0.5 < info.duration < 10 and record["duration"] == round(info.duration, 3)
            waveform, _ = soundfile.read(utterance.audio)
            assert abs(waveform).max() > 0.05  # speech, not silence
        texts[split] = {u.text for u in manifest.utterances}
    assert not (texts["train"] & texts["valid"] or texts["train"] & texts["test"] or texts["valid"] & texts["test"])
    assert report.counts == {(split, lang): 1 for split in SPLITS for lang in LANGUAGES}


def test_rerun_reuses_finished_clips_and_speaks_only_missing_ones(corpus):
    folder, _ = corpus
    manifests = {split: (folder / f"{split}.jsonl").read_text() for split in SPLITS}
    clip_times = {p: p.stat().st_mtime_ns for p in (folder / "clips").glob("*.wav")}
    again = synthesize(folder, 6, seed=0, valid_fraction=0.2, test_fraction=0.2, progress=False)
    assert (again.synthesized, again.reused) == (0, 6)
    assert {p: p.stat().st_mtime_ns for p in (folder / "clips").glob("*.wav")} == clip_times
    assert {split: (folder / f"{split}.jsonl").read_text() for split in SPLITS} == manifests

    lost = sorted(clip_times)[0]
    lost.unlink()  # as after a kill: the clip that was being written never appeared (writes are atomic)
    resumed = synthesize(folder, 6, seed=0, valid_fraction=0.2, test_fraction=0.2, progress=False)
    assert (resumed.synthesized, resumed.reused) == (1, 5) and lost.exists()
    assert {split: (folder / f"{split}.jsonl").read_text() for split in SPLITS} == manifests
    assert not list(folder.glob("clips/.*"))  # no temporary files left


def test_speak_varies_with_voice_speed_and_pitch_and_reports_espeak_errors():
    slow = speak("the red cat", "en-us", speed=120)
    fast = speak("the red cat", "en-us", speed=240)
    assert len(fast) < 0.7 * len(slow)
    assert speak("the red cat", "en-gb+f3").shape != speak("the red cat", "en-us+m3").shape
    with pytest.raises(RuntimeError, match="espeak-ng -v nonexistent .* failed"):
        speak("hello", "nonexistent")


def test_synth_command(tmp_path):
    result = CliRunner().invoke(app, ["synth", "-o", str(tmp_path), "--utterances", "4", "--languages", "en",
                                      "--valid-fraction", "0", "--test-fraction", "0.25"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "4 clip(s) spoken, 0 reused" in result.output
    assert len((tmp_path / "train.jsonl").read_text().splitlines()) == 3
    assert (tmp_path / "valid.jsonl").read_text() == ""  # an empty split still gets its (empty) manifest
    failed = CliRunner().invoke(app, ["synth", "-o", str(tmp_path), "--utterances", "4", "--languages", "en,fr"])
    assert failed.exit_code == 1 and "language must be one of en, zh; got 'fr'" in failed.output
