"""KaldiFbankFeatureExtractor against features real torchaudio computed (tests/fixtures/fbank, made on the GPU
machine with torch 2.11 + torchaudio 2.11 by benchmarks/gpu/make_fbank_fixture.py): the original's int16 scale
(funasr's WavFrontend) and the stock unit scale, dither as Kaldi's, the batched path against the per-utterance one,
what the scale does after the encoder's first LayerNorm, and save/load behaviour."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from transformers import FunAsrNanoProcessor
from transformers.models.fun_asr_nano.feature_extraction_fun_asr_nano import FunAsrNanoFeatureExtractor

from funasr_swap.base import tiny_base
from funasr_swap.features import (
    KALDI_WINDOWS,
    WAVEFORM_SCALE,
    KaldiFbankFeatureExtractor,
    batch_features,
    frame_samples,
    kaldi_fbank,
    lfr_stack,
    load_feature_extractor,
    load_processor,
    num_lfr_frames,
)
from tests.conftest import real_tokenizer
from tests.tolerances import assert_log_mels_close, log_mels_within_rounding

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fbank"
REFERENCE = np.load(FIXTURES / "reference.npz")
META = json.loads(str(REFERENCE["meta"]))
CLIP_ORDER = META["clip_order"]
# The fixtures are torchaudio's own values: on the torch that made them, or one whose FFT, matmul and log kernels
# round alike (this project's CPU machine, torch 2.13, AVX-512 MKL), ours equal them bit for bit. Elsewhere (another
# torch build, MKL's AVX2 or SSE4.2 kernels on another processor) they agree to float32 rounding, which is bounded
# relative to each frame's total energy, not per log-mel value: tests/tolerances.py says why and by how much.
LOG_FLOOR = float(np.log(np.float32(np.finfo(np.float32).eps)))  # log(float32 eps) = -15.94: Kaldi's floor
LOG_OFFSET = 2 * math.log(WAVEFORM_SCALE)  # 20.79: what the int16 scale adds to every log-mel value above the floor
REPO_ROOT = Path(__file__).resolve().parents[2]


def clip(name: str) -> np.ndarray:
    """A fixture clip: a wav file, or a float32 product of one (`META["derived"]`, as the fixture script makes it)."""
    if name in META["derived"]:
        source, gain = META["derived"][name]
        return clip(source) * np.float32(gain)
    waveform, rate = soundfile.read(FIXTURES / f"{name}.wav", dtype="float32")
    assert rate == 16000
    return waveform


def test_fixture_scale_is_ours():
    assert META["waveform_scale"] == WAVEFORM_SCALE == 32768.0
    assert KaldiFbankFeatureExtractor().waveform_scale == WAVEFORM_SCALE and KaldiFbankFeatureExtractor().dither == 0.0


@pytest.mark.parametrize(
    ("key", "settings"), [("lfr", {}), ("lfr_unscaled", {"waveform_scale": 1.0})], ids=["int16-scale", "unit-scale"]
)
def test_batch_equals_stock_extractor_on_torchaudio(key, settings):
    # lfr/: the stock extractor on waveform * 32768 (funasr's WavFrontend, dither 0, no CMVN); lfr_unscaled/: as is.
    out = KaldiFbankFeatureExtractor(**settings)([clip(name) for name in CLIP_ORDER], sampling_rate=16000)
    feats, mask = out["input_features"], out["input_features_mask"]
    assert feats.dtype == torch.float32 and mask.dtype == torch.from_numpy(REFERENCE["mask"]).dtype
    assert feats.shape == (len(CLIP_ORDER), REFERENCE["mask"].shape[1], 80 * 7)
    np.testing.assert_array_equal(mask.numpy(), REFERENCE["mask"])
    for i, name in enumerate(CLIP_ORDER):
        expected = REFERENCE[f"{key}/{name}"]
        valid = int(mask[i].sum())
        assert valid == len(expected), name
        assert_log_mels_close(feats[i, :valid].numpy(), expected, err_msg=name)
        assert torch.all(feats[i, valid:] == 0.0), f"{name}: padding rows must hold padding_value"


@pytest.mark.parametrize("name", ["quiet", "faint"])
def test_quiet_audio_equals_kaldi_on_the_int16_scale(name):
    # quiet: int16 speech at RMS 1.4e-4 between digital silence; faint: float speech peaking at 1e-4.
    scaled, unscaled = REFERENCE[f"lfr/{name}"], REFERENCE[f"lfr_unscaled/{name}"]
    ours = batch_features(KaldiFbankFeatureExtractor(), [clip(name)])["input_features"][0].numpy()
    assert_log_mels_close(ours, scaled, err_msg=name)
    # Here the scale is no constant offset: the unit scale floors values that the int16 scale resolves.
    floored_unit, floored_int16 = (unscaled == LOG_FLOOR).mean(), (scaled == LOG_FLOOR).mean()
    assert floored_unit > floored_int16 + 0.1, (floored_unit, floored_int16)
    assert np.abs(scaled - unscaled - LOG_OFFSET).max() > 10.0


def test_faint_audio_is_nearly_all_floor_at_unit_scale():
    # At peak 1e-4, torchaudio on the unit scale floors over 90% of the values: the stock extractor hears silence.
    # On the int16 scale only the frames of digital silence in the clip floor, as in the loud clip itself.
    assert (REFERENCE["lfr_unscaled/faint"] == LOG_FLOOR).mean() > 0.9
    assert (REFERENCE["lfr/faint"] == LOG_FLOOR).mean() < 0.2
    loud = (REFERENCE["lfr/en"] == LOG_FLOOR).mean()
    assert (REFERENCE["lfr/faint"] == LOG_FLOOR).mean() == pytest.approx(loud, abs=0.05)


def first_layer_norm(model, features) -> tuple[torch.Tensor, torch.Tensor]:
    """The input and output of the audio encoder's first LayerNorm, each `(batch, frames, 560)`: the first place where
    the features' scale can cancel (the layer sees `features * sqrt(hidden) + positions`)."""
    captured = []
    layer_norm = model.model.audio_tower.layers[0].input_layernorm
    hook = layer_norm.register_forward_hook(lambda module, args, output: captured.append((args[0], output)))
    try:
        with torch.no_grad():
            model.model.audio_tower(
                input_features=features["input_features"], input_features_mask=features["input_features_mask"]
            )
    finally:
        hook.remove()
    return captured[0]


def layer_norm_rounding(inputs: torch.Tensor, outputs: torch.Tensor) -> float:
    """What float32 rounding can move the outputs `y` of a LayerNorm (unit gain) whose inputs `x` `(frames, width)`
    were computed another way: the inputs differ by up to 4 ulp of their largest magnitude (the log-mel, the scaling
    by sqrt(hidden) and the added positions round once each, the subtraction of two such values once more), which
    the centring turns into at most twice that and the division by the row's standard deviation sigma scales by
    1/sigma; sigma itself moves by at most the same over sigma, times |y|. Hence (2 + max|y|) * 4 ulp(max|x|) / min
    sigma."""
    ulp = float(np.spacing(np.float32(inputs.abs().max())))
    sigma = float(inputs.std(-1, unbiased=False).min())
    return (2.0 + float(outputs.abs().max())) * 4 * ulp / sigma


@pytest.mark.parametrize("name", ["en", "zh"])
def test_first_layer_norm_cancels_the_scale_on_speech_level_frames(name):
    """Speech-level frames (no value at the floor on the unit scale) give the same first-LayerNorm output on both
    scales; frames where the unit scale floors do not (espeak-ng speech has digital silence and empty low bands)."""
    model, _ = tiny_base(seed=0)
    speech = [clip(name)]  # espeak-ng, peak 0.8
    scaled = batch_features(KaldiFbankFeatureExtractor(), speech)
    unscaled = batch_features(KaldiFbankFeatureExtractor(waveform_scale=1.0), speech)
    speech_level = ~(unscaled["input_features"][0] == LOG_FLOOR).any(-1)  # (frames,)
    assert 0 < int(speech_level.sum()) < len(speech_level), "the clip must hold frames of both kinds"
    ours_mels, stock_mels = scaled["input_features"][0, speech_level], unscaled["input_features"][0, speech_level]
    # Scaling by a power of two is exact in float arithmetic, so the mel energies are exactly 2^30 apart; what is
    # left is each side's float32 log (<= 1 ulp of its value) and the subtraction (half an ulp of the offset).
    rounding = torch.from_numpy(np.spacing(ours_mels.abs().numpy()) + np.spacing(stock_mels.abs().numpy()))
    rounding += float(np.spacing(np.float32(LOG_OFFSET)))
    assert torch.all((ours_mels - stock_mels - LOG_OFFSET).abs() <= rounding)  # 1.3 ulp measured

    (ours_in, ours), (_, stock) = first_layer_norm(model, scaled), first_layer_norm(model, unscaled)
    assert model.model.audio_tower.layers[0].input_layernorm.weight.abs().max() <= 1.0  # unit gain: the bound holds
    bound = layer_norm_rounding(ours_in[0, speech_level], ours[0, speech_level])  # 2.4e-5; 1.5e-6 measured
    torch.testing.assert_close(ours[0, speech_level], stock[0, speech_level], rtol=0, atol=bound)
    assert (ours[0, ~speech_level] - stock[0, ~speech_level]).abs().max() > 0.5  # the scale matters elsewhere


def test_dither_zero_is_deterministic():
    extractor, clips = KaldiFbankFeatureExtractor(), [clip("en"), clip("short")]
    first, second = batch_features(extractor, clips), batch_features(extractor, clips)
    assert torch.equal(first["input_features"], second["input_features"])
    assert torch.equal(extractor(clips)["input_features"], extractor(clips)["input_features"])


def test_dither_is_reproducible_per_seed_and_changes_the_features():
    extractor, clips = KaldiFbankFeatureExtractor(), [clip("en"), clip("quiet")]
    plain = batch_features(extractor, clips)["input_features"]

    def dithered(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return batch_features(extractor, clips, dither=1.0, generator=generator)["input_features"]

    assert torch.equal(dithered(0), dithered(0))
    assert not torch.equal(dithered(0), dithered(1))
    assert (dithered(0) - plain).abs().max() > 1.0  # 1 LSB of noise lifts the silent frames off the floor
    # The extractor's own dither (saved with it) draws from torch's default generator, as torchaudio does.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        first = KaldiFbankFeatureExtractor(dither=1.0)(clips)["input_features"]
        torch.manual_seed(3)
        second = KaldiFbankFeatureExtractor(dither=1.0)(clips)["input_features"]
    assert torch.equal(first, second) and not torch.equal(first, plain)
    # The call's dither overrides the extractor's: dither=0 gives the plain features.
    overridden = batch_features(KaldiFbankFeatureExtractor(dither=1.0), clips, dither=0.0)
    assert torch.equal(overridden["input_features"], plain)


def test_dither_is_kaldis():
    # torchaudio after torch.manual_seed(seed) and ours with a generator of that seed draw the same noise on the CPU.
    head = torch.from_numpy(clip("en")[:8000]) * WAVEFORM_SCALE
    ours = kaldi_fbank(head, dither=1.0, generator=torch.Generator().manual_seed(META["dither_seed"]))
    assert_log_mels_close(ours.numpy(), REFERENCE["dither/en"])
    assert not log_mels_within_rounding(kaldi_fbank(head).numpy(), REFERENCE["dither/en"])


@pytest.mark.parametrize("key", [k for k in REFERENCE.files if k.startswith("fbank/")])
def test_fbank_equals_torchaudio(key):
    window, rate, bins, length, shift = key.removeprefix("fbank/").split("_")
    head = torch.from_numpy(clip("en")[:8000])  # the fixture's input: the first 0.5 s of en
    ours = kaldi_fbank(head, int(bins), float(length), float(shift), float(rate), window)
    expected = REFERENCE[key]
    fft_size = 1 << (int(float(rate) * float(length) * 0.001) - 1).bit_length()  # frame samples, rounded up to 2^k
    assert_log_mels_close(ours.numpy(), expected, num_mel_bins=int(bins), fft_size=fft_size, err_msg=key)


def test_fixture_settings_cover_every_window():
    assert {k.removeprefix("fbank/").split("_")[0] for k in REFERENCE.files if k.startswith("fbank/")} == set(
        KALDI_WINDOWS
    )


@pytest.mark.parametrize("num_samples", [400, 559, 560, 16000])
def test_frame_count_is_kaldi_snip_edges(num_samples):
    frames = 1 + (num_samples - 400) // 160
    assert kaldi_fbank(torch.randn(num_samples)).shape == (frames, 80)
    extractor = KaldiFbankFeatureExtractor()
    assert frame_samples(extractor) == (400, 160)
    lfr_frames = extractor(np.zeros(num_samples, np.float32))["input_features"].shape[1]
    assert num_lfr_frames(extractor, num_samples) == -(-frames // 6) == lfr_frames


def test_digital_silence_is_the_epsilon_floor_on_both_scales():
    assert torch.all(kaldi_fbank(torch.zeros(1600)) == LOG_FLOOR)
    for scale in (1.0, WAVEFORM_SCALE):  # zero times 32768 is zero: silence looks the same to both extractors
        silence = KaldiFbankFeatureExtractor(waveform_scale=scale)(np.zeros(1600, np.float32))["input_features"]
        assert torch.all(silence == LOG_FLOOR)


@pytest.mark.parametrize(
    ("waveform", "kwargs", "message"),
    [
        (torch.zeros(399), {}, "399 samples"),
        (torch.zeros(2, 2, 1600), {}, "1-D .* or 2-D"),
        (torch.zeros(3, 399), {}, "399 samples"),
        (torch.zeros(1600), {"window": "kaiser"}, "'kaiser'"),
        (torch.zeros(1600), {"frame_shift_ms": 0.01}, "shift 0"),
        (torch.zeros(1600), {"dither": -1.0}, "dither must be >= 0 .*got -1.0"),
        (torch.zeros(1600), {"dither": float("nan")}, "dither must be >= 0 .*got nan"),
    ],
)
def test_kaldi_fbank_errors_name_the_problem(waveform, kwargs, message):
    with pytest.raises(ValueError, match=message):
        kaldi_fbank(waveform, **kwargs)


def mixed_clips() -> list[np.ndarray]:
    """The fixture clips and noise of awkward lengths: one frame exactly, frame counts either side of LFR strides."""
    rng = np.random.default_rng(0)
    noise = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (400, 559, 560, 1360, 1361, 16000 * 3 + 37)]
    return [clip(name) for name in CLIP_ORDER] + noise


@pytest.mark.parametrize(
    "settings",
    [{}, {"num_frames_lfr": 5, "stride_lfr": 4, "window": "povey", "padding_value": -1.0}, {"feature_size": 40},
     {"waveform_scale": 1.0}],
    ids=["defaults", "lfr5-4-povey-pad-1", "40-mel", "unit-scale"],
)
def test_batch_features_equal_the_extractor_per_utterance(settings):
    extractor = KaldiFbankFeatureExtractor(**settings)
    clips = mixed_clips()
    expected = extractor(clips, sampling_rate=16000)  # fbank and LFR one utterance at a time, then padded
    batched = batch_features(extractor, clips)
    assert batched.keys() == expected.keys()
    assert batched["input_features"].dtype == expected["input_features"].dtype == torch.float32
    assert batched["input_features_mask"].dtype == expected["input_features_mask"].dtype
    assert torch.equal(batched["input_features_mask"], expected["input_features_mask"])
    assert batched["input_features_mask"].sum(1).tolist() == [num_lfr_frames(extractor, len(c)) for c in clips]
    # Batch and single runs may round the FFT and mel sums otherwise (other shapes; 1 ulp of a log-mel measured):
    # the same computation up to float32 rounding. Padding rows hold padding_value in both, exactly.
    mask = batched["input_features_mask"].bool()
    assert torch.equal(batched["input_features"][~mask], expected["input_features"][~mask])
    bins = extractor.feature_size
    assert_log_mels_close(batched["input_features"][mask].numpy(), expected["input_features"][mask].numpy(), bins)
    # The rows come from one padded batch: a row alone gives the same values.
    alone = batch_features(extractor, clips[-1:])["input_features"][0]
    assert_log_mels_close(batched["input_features"][-1, : len(alone)].numpy(), alone.numpy(), bins)


@pytest.mark.parametrize(("num_stacked", "stride"), [(7, 6), (5, 4), (1, 1), (3, 5)])
def test_lfr_stack_is_the_stock_apply_lfr(num_stacked, stride):
    extractor = KaldiFbankFeatureExtractor(num_frames_lfr=num_stacked, stride_lfr=stride)
    generator = torch.Generator().manual_seed(0)
    counts = [1, 2, 3, 5, 6, 7, 12, 13, 40]
    frames = [torch.randn(n, 8, generator=generator) for n in counts]
    padded = torch.nn.utils.rnn.pad_sequence(frames, batch_first=True, padding_value=float("nan"))
    stacked = lfr_stack(padded, counts, num_stacked, stride)
    for row, (n, fbank) in enumerate(zip(counts, frames)):
        stock = FunAsrNanoFeatureExtractor._apply_lfr(extractor, fbank)
        assert torch.equal(extractor._apply_lfr(fbank), stock), n  # per utterance: a batch of one
        assert torch.equal(stacked[row, : len(stock)], stock), n  # never reads the padding (NaN) frames
        assert not stacked[row].isnan().any(), n


def test_batch_features_errors_name_the_waveform():
    extractor = KaldiFbankFeatureExtractor()
    with pytest.raises(ValueError, match="waveforms is empty"):
        batch_features(extractor, [])
    with pytest.raises(ValueError, match=r"waveforms\[1\]: 399 samples is shorter than one 25 ms fbank frame"):
        batch_features(extractor, [np.zeros(1600, np.float32), np.zeros(399, np.float32)])
    with pytest.raises(ValueError, match=r"waveforms\[0\] must be 1-D \(num_samples,\), got shape \(2, 1600\)"):
        batch_features(extractor, [np.zeros((2, 1600), np.float32)])
    with pytest.raises(ValueError, match=r"num_frames must hold one count >= 1 per row of features \(2\)"):
        lfr_stack(torch.zeros(2, 5, 8), [5])
    # The stock class has no waveform_scale: its features would be another model input than ours.
    with pytest.raises(TypeError, match="KaldiFbankFeatureExtractor .*got FunAsrNanoFeatureExtractor.*load_processor"):
        batch_features(FunAsrNanoFeatureExtractor(), [np.zeros(1600, np.float32)])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"waveform_scale": 0.0}, "waveform_scale must be a finite number > 0 .*got 0.0"),
        ({"waveform_scale": float("inf")}, "waveform_scale must be a finite number > 0 .*got inf"),
        ({"dither": -0.5}, "dither must be >= 0 .*got -0.5"),
    ],
)
def test_extractor_settings_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        KaldiFbankFeatureExtractor(**kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batch_features_on_cuda_equal_torchaudio():
    # cuFFT and cuBLAS round otherwise than the CPU (1.1e-3 in log-mel measured on an H200, torch 2.11, in the faintest
    # bins): float32 rounding all the same, bounded as on the CPU relative to each frame's total energy.
    extractor = KaldiFbankFeatureExtractor()
    out = batch_features(extractor, [clip(name) for name in CLIP_ORDER], device="cuda")
    assert out["input_features"].device.type == "cuda"
    np.testing.assert_array_equal(out["input_features_mask"].cpu().numpy(), REFERENCE["mask"])
    for i, name in enumerate(CLIP_ORDER):
        expected = REFERENCE[f"lfr/{name}"]
        ours = out["input_features"][i, : len(expected)].cpu().numpy()
        assert_log_mels_close(ours, expected, err_msg=name)


def test_call_interface_matches_stock():
    extractor = KaldiFbankFeatureExtractor()
    single = extractor(clip("short"), sampling_rate=16000, return_tensors="np")
    assert isinstance(single["input_features"], np.ndarray) and single["input_features"].shape == (1, 5, 560)
    assert_log_mels_close(single["input_features"][0], REFERENCE["lfr/short"])
    padded = extractor([clip("short")], padding="max_length", max_length=12)
    assert padded["input_features"].shape == (1, 12, 560) and padded["input_features_mask"].sum() == 5
    assert extractor([clip("short")], pad_to_multiple_of=4)["input_features"].shape == (1, 8, 560)
    with pytest.raises(ValueError, match="8000"):
        extractor(clip("short"), sampling_rate=8000)


def test_saved_config_is_the_stock_extractors_plus_scale_and_dither(tmp_path):
    # Stock transformers (with torchaudio) loads the folder as its own class: the same keys plus our two settings,
    # which it keeps as attributes and does not apply (make_fbank_fixture.py measured its features: unit scale).
    KaldiFbankFeatureExtractor(stride_lfr=5, dither=1.0).save_pretrained(tmp_path / "ours")
    FunAsrNanoFeatureExtractor(stride_lfr=5).save_pretrained(tmp_path / "stock")
    ours = json.loads((tmp_path / "ours" / "preprocessor_config.json").read_text())
    stock = json.loads((tmp_path / "stock" / "preprocessor_config.json").read_text())
    assert ours == stock | {"waveform_scale": 32768.0, "dither": 1.0}
    assert ours["feature_extractor_type"] == "FunAsrNanoFeatureExtractor"
    loaded_by_stock = FunAsrNanoFeatureExtractor.from_pretrained(tmp_path / "ours")
    assert type(loaded_by_stock) is FunAsrNanoFeatureExtractor and loaded_by_stock.waveform_scale == 32768.0


def test_processor_loads_without_deprecation_noise(tmp_path, transformers_log):
    """transformers 5.25 deprecates `from_args_and_dict` with a warning at every load."""
    tiny_base()[1].save_pretrained(tmp_path)
    load_processor(tmp_path)
    assert transformers_log == []


def test_processor_round_trip(tmp_path):
    template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    processor = FunAsrNanoProcessor(
        KaldiFbankFeatureExtractor(stride_lfr=5, waveform_scale=1.0), real_tokenizer("qwen3"), chat_template=template,
        audio_token="<|box_start|>",
    )
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["feature_extractor"]["feature_extractor_type"] == "FunAsrNanoFeatureExtractor"
    assert saved["feature_extractor"]["waveform_scale"] == 1.0

    loaded = load_processor(tmp_path)
    assert type(loaded.feature_extractor) is KaldiFbankFeatureExtractor
    assert loaded.feature_extractor.to_dict() == processor.feature_extractor.to_dict()
    assert (loaded.chat_template, loaded.audio_token, loaded.audio_token_id) == (
        template, "<|box_start|>", processor.audio_token_id)
    inputs = loaded(text="<|box_start|>", audio=clip("en"))
    # One placeholder per LFR frame: 289 fbank frames, ceil(289 / 5) = 58 with the saved stride 5 (49 with 6).
    assert (inputs["input_ids"] == loaded.audio_token_id).sum() == inputs["input_features_mask"].sum() == 58
    reference = processor.feature_extractor(clip("en"))["input_features"]
    assert torch.equal(inputs["input_features"], reference)


def test_load_feature_extractor_from_folder_and_defaults(tmp_path):
    assert load_feature_extractor().to_dict() == KaldiFbankFeatureExtractor().to_dict()
    KaldiFbankFeatureExtractor(num_frames_lfr=5, waveform_scale=2.0, dither=0.5).save_pretrained(tmp_path / "ours")
    loaded = load_feature_extractor(tmp_path / "ours", stride_lfr=4)
    assert (loaded.num_frames_lfr, loaded.stride_lfr, loaded.waveform_scale, loaded.dither) == (5, 4, 2.0, 0.5)
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        load_feature_extractor(tmp_path / "no_such_folder")
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        load_processor(tmp_path / "no_such_folder")


def test_folder_saved_by_stock_transformers_gets_the_int16_scale(tmp_path):
    FunAsrNanoFeatureExtractor(stride_lfr=5).save_pretrained(tmp_path)
    loaded = load_feature_extractor(tmp_path)
    assert type(loaded) is KaldiFbankFeatureExtractor
    assert (loaded.stride_lfr, loaded.waveform_scale, loaded.dither) == (5, WAVEFORM_SCALE, 0.0)
    # An override of a setting the folder does not hold still applies.
    assert load_feature_extractor(tmp_path, waveform_scale=1.0).waveform_scale == 1.0


def run_python(code: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    paths = [str(p) for p in (pythonpath, REPO_ROOT) if p is not None]
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)}, timeout=120)


def test_works_where_torchaudio_is_absent():
    # None in sys.modules: find_spec says "not installed" and `import torchaudio` fails, whatever this env has.
    result = run_python("""
        import sys
        sys.modules["torchaudio"] = None
        import numpy as np
        from funasr_swap.features import KaldiFbankFeatureExtractor, load_feature_extractor
        extractor = load_feature_extractor()
        assert type(extractor) is KaldiFbankFeatureExtractor, type(extractor)
        print(tuple(extractor(np.zeros(16000, np.float32))["input_features"].shape))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1, 17, 560)"


def test_broken_torchaudio_install_gets_an_actionable_error(tmp_path):
    # torchaudio 2.11 beside torch 2.13 fails in its __init__ with OSError from torch.ops.load_library.
    (tmp_path / "torchaudio").mkdir()
    (tmp_path / "torchaudio" / "__init__.py").write_text(
        "raise OSError('Could not load this library: _torchaudio.abi3.so')\n")
    result = run_python("import funasr_swap.features", pythonpath=tmp_path)
    assert result.returncode != 0
    assert "ImportError: torchaudio is installed but does not load" in result.stderr
    assert "pip uninstall torchaudio" in result.stderr
