"""Manifests (validation with line numbers, skip_bad, path resolution, control tokens of the model's tokenizer, the
longest clip), length bucketing, and the collator's batches against the processor's own transcription prompt and the
model's loss."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import funasr_swap.data
from funasr_swap.base import tiny_base
from funasr_swap.data import AsrCollator, Utterance, bucket_batches, load_manifest, precomputed_audio
from tests.conftest import real_tokenizer, tiny_swap
from tests.tolerances import assert_log_mels_close
from tokenmap.families import detect_family
from tokenmap.prompt import IGNORE_INDEX


def write_wav(path: Path, seconds: float, freq: float = 220.0, rate: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(rate * seconds)) / rate
    soundfile.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, subtype="PCM_16")
    return path


def write_manifest(path: Path, lines: list) -> Path:
    """`lines`: dicts (written as JSON) or raw strings (written as they are)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(line if isinstance(line, str) else json.dumps(line, ensure_ascii=False) for line in lines)
    path.write_text(text + "\n", encoding="utf-8")
    return path


@pytest.fixture
def corpus(tmp_path):
    """A corpus folder with two clips (1.0 s and 0.5 s) under clips/."""
    write_wav(tmp_path / "clips" / "a.wav", 1.0)
    write_wav(tmp_path / "clips" / "b.wav", 0.5, freq=440.0)
    return tmp_path


GOOD = [
    {"audio": "clips/a.wav", "text": "the red cat", "language": "en"},
    {"audio": "clips/b.wav", "text": "小明有两本书", "language": "zh", "duration": 0.75, "task": "language"},
]


# --- load_manifest -----------------------------------------------------------------------------------------------


def test_loads_a_manifest_resolving_audio_against_its_folder(corpus, tmp_path, monkeypatch):
    manifest_path = write_manifest(corpus / "train.jsonl", GOOD + ["", {**GOOD[0], "speaker": "ignored"}])
    monkeypatch.chdir(tmp_path.parent)  # relative paths follow the manifest, not the working directory
    manifest = load_manifest(manifest_path)
    a, b, a_again = manifest.utterances
    assert manifest.skipped == [] and manifest.path == manifest_path
    assert a == Utterance(corpus / "clips" / "a.wav", "the red cat", "en", 1.0, None)
    assert a_again == a  # unknown keys are ignored; the blank line is skipped
    assert b.duration == 0.5  # the file's length, whatever the line's duration (0.75) says
    assert b.task == "language" and b.asr_task.language == "zh" and a.asr_task.language is None
    assert manifest.durations == [1.0, 0.5, 1.0]


def test_absolute_and_parent_relative_audio_paths(corpus):
    lines = [
        {"audio": str(corpus / "clips" / "a.wav"), "text": "absolute"},
        {"audio": "../clips/b.wav", "text": "parent"},
    ]
    manifest = load_manifest(write_manifest(corpus / "lists" / "dev.jsonl", lines))
    assert [u.audio.resolve() for u in manifest.utterances] == [
        (corpus / "clips" / "a.wav").resolve(),
        (corpus / "clips" / "b.wav").resolve(),
    ]
    assert manifest.durations == [1.0, 0.5]


BAD_LINES = [
    ('{"audio": "clips/a.wav", "text": "unclosed"', "malformed JSON"),
    ('["clips/a.wav", "a list"]', "expected a JSON object, got list"),
    ({"text": "no audio"}, "missing field 'audio'"),
    ({"audio": "clips/a.wav"}, "missing field 'text'"),
    ({"audio": "clips/a.wav", "text": "   "}, "empty text"),
    ({"audio": "clips/a.wav", "text": 3}, "'text' must be a string, got 3"),
    ({"audio": "", "text": "x"}, "'audio' must be a non-empty string"),
    ({"audio": "clips/missing.wav", "text": "x"}, "audio file clips/missing.wav not found"),
    ({"audio": "clips/notes.wav", "text": "x"}, "cannot read audio file clips/notes.wav"),
    ({"audio": "clips/empty.wav", "text": "x"}, "audio file clips/empty.wav has no samples"),
    ({"audio": "clips/a.wav", "text": "x", "duration": -1}, "'duration' must be a positive number"),
    ({"audio": "clips/a.wav", "text": "x", "duration": "2s"}, "'duration' must be a positive number"),
    ({"audio": "clips/a.wav", "text": "x", "language": 7}, "'language' must be a non-empty string"),
    ({"audio": "clips/a.wav", "text": "x", "task": "translate"}, "'task' must be one of transcribe, language"),
    ({"audio": "clips/a.wav", "text": "x", "task": "language"}, "task 'language' needs a 'language'"),
    ({"audio": "clips/a.wav", "text": "x", "task": "language", "language": "klingon"}, "unknown language 'klingon'"),
]


@pytest.fixture
def bad_files(corpus):
    (corpus / "clips" / "notes.wav").write_text("not audio")
    soundfile.write(corpus / "clips" / "empty.wav", np.zeros(0, np.float32), 16000)
    return corpus


@pytest.mark.parametrize(("line", "reason"), BAD_LINES, ids=[reason for _, reason in BAD_LINES])
def test_a_bad_line_is_reported_with_its_line_number(bad_files, line, reason):
    path = write_manifest(bad_files / "train.jsonl", GOOD + [line])
    with pytest.raises(ValueError, match=re.escape(f"{path}:3: {reason}")):
        load_manifest(path)


def test_missing_file_names_where_it_looked(corpus):
    path = write_manifest(corpus / "train.jsonl", [{"audio": "clips/gone.wav", "text": "x"}])
    with pytest.raises(ValueError, match=re.escape(f"(looked for {corpus / 'clips' / 'gone.wav'})")):
        load_manifest(path)


def test_a_line_that_is_not_utf8_is_reported(corpus):
    path = corpus / "train.jsonl"
    path.write_bytes(json.dumps(GOOD[0]).encode() + b'\n{"audio": "clips/a.wav", "text": "\xff"}\n')
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: ") + ".*utf-8"):
        load_manifest(path)


def test_skip_bad_skips_and_counts_every_bad_line(bad_files):
    lines = [GOOD[0]] + [line for line, _ in BAD_LINES] + [GOOD[1]]
    manifest = load_manifest(write_manifest(bad_files / "train.jsonl", lines), skip_bad=True)
    assert [u.text for u in manifest.utterances] == ["the red cat", "小明有两本书"]
    assert [number for number, _ in manifest.skipped] == list(range(2, 2 + len(BAD_LINES)))
    for (_, reason), (_, expected) in zip(manifest.skipped, BAD_LINES):
        assert reason.startswith(expected)


def test_manifest_without_valid_lines_or_file_raises(bad_files):
    path = write_manifest(bad_files / "bad.jsonl", [{"text": "no audio"}, {"audio": "clips/notes.wav", "text": "x"}])
    with pytest.raises(ValueError, match=r"bad\.jsonl: no valid utterances \(2 bad line\(s\) skipped\)"):
        load_manifest(path, skip_bad=True)
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        load_manifest(bad_files / "nowhere.jsonl")


# --- load_manifest with the model's tokenizer and the longest clip ------------------------------------------------

# control tokens of each family's real tokenizer: role markers, end of turn, BOS/EOS
CONTROL_TOKENS = {
    "qwen3": ["<|im_end|>", "<|im_start|>", "<|endoftext|>"],
    "llama3": ["<|eot_id|>", "<|start_header_id|>", "<|begin_of_text|>"],
    "gemma2": ["<end_of_turn>", "<start_of_turn>", "<bos>", "<eos>"],
    "deepseek-v2": ["<｜end▁of▁sentence｜>", "<｜begin▁of▁sentence｜>"],
}


@pytest.mark.parametrize("family", CONTROL_TOKENS)
def test_a_transcript_that_spells_a_control_token_is_a_bad_line(corpus, family):
    tokenizer, tokens = real_tokenizer(family), CONTROL_TOKENS[family]
    lines = [GOOD[0]] + [{"audio": "clips/a.wav", "text": f"say {token} now"} for token in tokens] + [GOOD[1]]
    path = write_manifest(corpus / "train.jsonl", lines)
    expected = f"{path}:2: 'text' 'say {tokens[0]} now' spells the control token {tokens[0]!r} of the model's tokenizer"
    with pytest.raises(ValueError, match=re.escape(expected)):
        load_manifest(path, tokenizer=tokenizer)
    manifest = load_manifest(path, tokenizer=tokenizer, skip_bad=True)
    assert [u.text for u in manifest.utterances] == ["the red cat", "小明有两本书"]
    assert [number for number, _ in manifest.skipped] == list(range(2, 2 + len(tokens)))
    assert [reason.split("spells the control token ")[1].split(" of ")[0] for _, reason in manifest.skipped] == [
        repr(token) for token in tokens
    ]
    assert len(load_manifest(path).utterances) == len(lines)  # without a tokenizer, nothing is checked


def test_the_speech_marker_is_refused_at_load_not_by_the_collator_mid_run(model_and_processor, corpus):
    _, processor = model_and_processor
    marker = processor.audio_token  # the swap's placeholder: <|object_ref_start|>, a Llama-3 reserved token, ...
    path = write_manifest(corpus / "train.jsonl", [GOOD[0], {"audio": "clips/a.wav", "text": f"a {marker} b"}])
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: 'text' 'a {marker} b' spells the control token")):
        load_manifest(path, tokenizer=processor.tokenizer)
    unchecked = load_manifest(path).utterances
    AsrCollator(processor)(unchecked[:1])
    with pytest.raises(ValueError, match=re.escape(f"contains the special token {marker!r}")):
        AsrCollator(processor)(unchecked)  # what a training run met at this line's batch


def test_a_clip_longer_than_max_seconds_is_a_bad_line(corpus):
    path = write_manifest(corpus / "train.jsonl", [GOOD[1], GOOD[0]])  # 0.5 s (labelled 0.75 s), 1.0 s
    clip = corpus / "clips" / "a.wav"
    expected = f"{path}:2: audio {clip} is 1.0 s long, longer than max_seconds=0.75; split it"
    with pytest.raises(ValueError, match=re.escape(expected)):
        load_manifest(path, max_seconds=0.75)
    manifest = load_manifest(path, max_seconds=0.75, skip_bad=True)
    assert [u.duration for u in manifest.utterances] == [0.5] and [n for n, _ in manifest.skipped] == [2]
    assert load_manifest(path, max_seconds=1.0).durations == [0.5, 1.0]  # at the maximum: kept
    with pytest.raises(ValueError, match="max_seconds=0 must be a positive number of seconds or None"):
        load_manifest(path, max_seconds=0)



@pytest.mark.parametrize("seconds", [40.0, 180.0])
def test_a_mislabelled_duration_never_carries_a_long_clip_past_max_seconds(tmp_path, seconds):
    """A 40 s clip labelled 2.0 s was scored; a 3-minute one crashed the model mid-run: the file's length counts."""
    clip = write_wav(tmp_path / "clips" / "long.wav", seconds)
    path = write_manifest(tmp_path / "m.jsonl", [{"audio": "clips/long.wav", "text": "x", "duration": 2.0}])
    expected = f"{path}:1: audio {clip} is {seconds:.1f} s long, longer than max_seconds=30; split it"
    with pytest.raises(ValueError, match=re.escape(expected)):
        load_manifest(path, max_seconds=30)
    assert load_manifest(path).durations == [seconds]


def test_a_folder_given_as_audio_is_named_as_one(corpus):
    path = write_manifest(corpus / "m.jsonl", [{"audio": "clips", "text": "x"}])
    with pytest.raises(ValueError, match=re.escape(f"{path}:1: audio clips is a folder, not an audio file")):
        load_manifest(path)


# --- bucket_batches ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def durations():
    return np.random.default_rng(0).uniform(0.5, 15.0, size=1003).tolist()


def spread(durations, batches) -> float:
    """Mean (max - min) duration within a batch."""
    return float(np.mean([np.ptp([durations[i] for i in batch]) for batch in batches]))


def test_bucket_batches_cover_every_index_once_in_full_batches(durations):
    batches = bucket_batches(durations, 8, seed=0)
    assert sorted(i for batch in batches for i in batch) == list(range(len(durations)))
    assert sorted(len(b) for b in batches) == [len(durations) % 8] + [8] * (len(durations) // 8)


def test_bucket_batches_are_deterministic_and_change_with_the_seed(durations):
    assert bucket_batches(durations, 8, seed=3) == bucket_batches(durations, 8, seed=3)
    first, second = bucket_batches(durations, 8, seed=3), bucket_batches(durations, 8, seed=4)
    assert first != second
    assert {tuple(b) for b in first} != {tuple(b) for b in second}  # new compositions, not only a new order


def test_bucket_batches_hold_similar_lengths(durations):
    order = np.random.default_rng(1).permutation(len(durations)).tolist()
    random_batches = [order[i : i + 8] for i in range(0, len(order), 8)]
    bucketed = bucket_batches(durations, 8, seed=0)
    assert spread(durations, bucketed) < 0.1 * spread(durations, random_batches)


def test_unshuffled_batches_are_sorted_by_duration(durations):
    batches = bucket_batches(durations, 8, seed=0, shuffle=False)
    flat = [i for batch in batches for i in batch]
    assert flat == sorted(range(len(durations)), key=lambda i: durations[i])
    assert bucket_batches(durations, 8, seed=5, shuffle=False) == batches
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        bucket_batches(durations, 0, seed=0)


# --- AsrCollator -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base():
    return tiny_base(seed=0)


@pytest.fixture(scope="module", params=["Qwen3-0.6B", "Llama-3.2-1B", "Gemma-2-2B"])
def model_and_processor(request, base):
    """The tiny base, and tiny swaps into two other chat families (Gemma-2 has no system role; the swaps are the
    ones other modules read: the tests leave them as they found them)."""
    if request.param == "Qwen3-0.6B":
        return base
    swapped = tiny_swap(request.param)
    return swapped.model, swapped.processor


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    return [write_wav(folder / "long.wav", 1.3, 200.0), write_wav(folder / "short.wav", 0.6, 500.0)]


def test_collated_example_is_the_transcription_prompt_plus_the_target(model_and_processor, clips):
    model, processor = model_and_processor
    tokenizer = processor.tokenizer
    utterances = [Utterance(clips[0], "the red cat", "en"), Utterance(clips[1], "小明有两本书", "zh", task="language")]
    threads = torch.get_num_threads()
    batch = AsrCollator(processor)(utterances)
    assert torch.get_num_threads() == threads  # features run single-threaded, and the setting is restored
    end_of_turn = tokenizer.convert_tokens_to_ids(detect_family(tokenizer).end_of_turn)
    for row, (utterance, language) in enumerate(zip(utterances, [None, "zh"])):
        waveform = soundfile.read(utterance.audio, dtype="float32")[0]
        reference = processor.apply_transcription_request(waveform, language=language)
        prompt = reference["input_ids"][0].tolist()
        target = tokenizer(utterance.text, add_special_tokens=False)["input_ids"] + [end_of_turn]
        length = len(prompt) + len(target)
        assert batch["input_ids"][row, :length].tolist() == prompt + target
        assert batch["labels"][row, :length].tolist() == [IGNORE_INDEX] * len(prompt) + target
        assert batch["attention_mask"][row].tolist() == [1] * length + [0] * (batch["input_ids"].shape[1] - length)
        # the padding after it: pad id, ignored by the loss
        assert set(batch["input_ids"][row, length:].tolist()) <= {tokenizer.pad_token_id}
        assert set(batch["labels"][row, length:].tolist()) <= {IGNORE_INDEX}
        frames = int(reference["input_features_mask"].sum())
        assert int(batch["input_features_mask"][row].sum()) == frames
        # the collator computes the batch at once: the same log-mels up to float32 rounding (tests/tolerances.py)
        ours, expected = batch["input_features"][row, :frames], reference["input_features"][0, :frames]
        assert_log_mels_close(ours.numpy(), expected.numpy())
    assert batch["input_ids"].shape[1] > len(prompt) + len(target)  # the Mandarin row is the padded one here


def test_collated_batch_gives_a_finite_loss_that_trains(model_and_processor, clips):
    model, processor = model_and_processor
    batch = AsrCollator(processor)([Utterance(clips[0], "the red cat"), Utterance(clips[1], "two books")])
    loss = model(**batch).loss
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    adaptor_grads = [p.grad for p in model.model.multi_modal_projector.parameters() if p.grad is not None]
    assert adaptor_grads and all(torch.isfinite(g).all() for g in adaptor_grads)
    model.zero_grad(set_to_none=True)


def test_collator_errors_name_the_problem(base, clips):
    _, processor = base
    collator = AsrCollator(processor)
    with pytest.raises(ValueError, match="empty batch"):
        collator([])
    with pytest.raises(ValueError, match=re.escape(str(clips[0])) + ".*<\\|im_end\\|>"):
        collator([Utterance(clips[0], "done <|im_end|>")])
    with pytest.raises(ValueError, match="sampling_rate 8000 != the feature extractor's 16000"):
        AsrCollator(processor, sampling_rate=8000)


def _counting_reads(monkeypatch) -> list[Path]:
    """Record every audio file the collator reads."""
    reads, load = [], funasr_swap.data.load_audio

    def counted(path, rate):
        reads.append(Path(path))
        return load(path, rate)

    monkeypatch.setattr(funasr_swap.data, "load_audio", counted)
    return reads


def test_cached_features_are_read_once_and_equal_the_uncached(base, clips, monkeypatch):
    _, processor = base
    reads = _counting_reads(monkeypatch)
    utterances = [Utterance(clips[0], "the red cat"), Utterance(clips[1], "two books")]
    expected = AsrCollator(processor)(utterances)
    cached = AsrCollator(processor, cache=True)
    first = cached(utterances[:1])
    second = cached(utterances[::-1] + utterances[:1])  # one new clip, one cached, one repeated in the batch
    assert reads == [clips[0], clips[1], clips[0], clips[1]]  # the uncached collator's two, then each clip once
    assert torch.equal(first["input_features"][0], expected["input_features"][0])
    for key, value in expected.items():  # batch rows in another order: the same rows
        assert torch.equal(second[key][[1, 0]], value), key
    assert torch.equal(second["input_features"][2], expected["input_features"][0])


def test_dither_draws_new_noise_each_batch_from_the_seeded_generator(base, clips):
    _, processor = base
    utterances = [Utterance(clips[0], "the red cat"), Utterance(clips[1], "two books")]
    clean = AsrCollator(processor)(utterances)["input_features"]
    dithered = AsrCollator(processor, dither=1.0)
    torch.manual_seed(0)
    first, second = dithered(utterances)["input_features"], dithered(utterances)["input_features"]
    torch.manual_seed(0)
    assert torch.equal(dithered(utterances)["input_features"], first)  # the trainer's seed makes it reproducible
    assert not torch.equal(first, second) and not torch.equal(first, clean)
    # noise of one int16 step on speech: small beside the signal
    assert (first - clean).abs().mean() < 0.1 * (clean - clean.mean()).abs().mean()
    with pytest.raises(ValueError, match="a cache would keep the first"):
        AsrCollator(processor, dither=1.0, cache=True)


def test_encoder_outputs_stand_in_for_the_encoder(base, clips):
    model, processor = base
    utterances = [Utterance(clips[0], "the red cat"), Utterance(clips[1], "two books")]
    batch = AsrCollator(processor)(utterances)
    training = model.training
    model.requires_grad_(False)
    model.eval()
    try:
        collator = AsrCollator(processor, cache=True, encoder=model.model.audio_tower)
        precomputed = collator(utterances)
        assert precomputed["input_features"].shape[-1] == model.config.audio_config.hidden_size
        assert torch.equal(precomputed["input_features_mask"], batch["input_features_mask"])
        with torch.no_grad():
            expected = model(**batch).loss
            with precomputed_audio(model):
                loss = model(**precomputed).loss
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
        assert model.model.audio_tower is collator.encoder  # the tower is back after the block
    finally:
        model.requires_grad_(True)
        model.train(training)
    with pytest.raises(ValueError, match="must be frozen"):
        AsrCollator(processor, encoder=model.model.audio_tower)
