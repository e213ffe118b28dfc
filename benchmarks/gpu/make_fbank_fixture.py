"""Make tests/fixtures/fbank: espeak-ng speech clips and the features real torchaudio computes from them.

Two steps, on two machines (torchaudio does not load beside this project's torch 2.13; the GPU machine's image has
torch 2.11 + torchaudio 2.11):

    # here (needs espeak-ng and soxr): speak the clips, resample them with funasr_swap.audio.load_audio, and save
    # them as 16 kHz int16 wav files
    python benchmarks/gpu/make_fbank_fixture.py audio

    # where torchaudio and transformers' FunAsrNanoFeatureExtractor import (reads the wavs with the stdlib only)
    PYTHONPATH=. python benchmarks/gpu/make_fbank_fixture.py reference --out reference.npz

`reference` writes, for every clip, the stock extractor's `input_features` rows of one padded batch call on the
waveforms times 32768 (`lfr/<clip>`: torchaudio's Kaldi fbank on the int16 scale, as funasr's WavFrontend computes
it with dither 0 and no CMVN, the features this project computes) and on the waveforms as they are
(`lfr_unscaled/<clip>`: what stock transformers computes), and the batch's `input_features_mask` (`mask`, the same
for both); raw `torchaudio.compliance.kaldi.fbank` of the first 0.5 s of "en" over every window type and two
non-default frame/rate settings (`fbank/<setting>`), and of the same samples times 32768 with dither 1.0 after
`torch.manual_seed(DITHER_SEED)` (`dither/en`); and the versions and inputs (`meta`, JSON). Besides the wav clips,
"faint" is "en" times a float32 gain (peak 1e-4, unquantised): computed, not stored, identically on any machine.
Where funasr_swap imports it also prints the max |ours - torchaudio| on all of these, on random signals and with
dither, on CUDA, and what stock `AutoFeatureExtractor` makes of a folder saved by KaldiFbankFeatureExtractor.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np

FIXTURE_DIR = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "fbank"
SAMPLE_RATE = 16000

# name -> (espeak-ng voice, text, rate the speech passes through before 16 kHz, gain, seconds kept (None: all),
#          seconds of digital silence added on each side)
CLIPS: dict[str, tuple[str, str, int | None, float, float | None, float]] = {
    "en": ("en-us", "The quick brown fox jumps over the lazy dog.", None, 1.0, None, 0.0),
    "zh": ("cmn", "今天天气很好，我们一起去公园散步吧。", None, 1.0, None, 0.0),
    "short": ("en-us", "Yes.", None, 1.0, 0.3, 0.0),  # 28 fbank frames: LFR edge padding on both ends
    "quiet": ("en-us", "Seven.", None, 0.003, None, 0.4),  # energies near the epsilon floor, exact zeros around
    "band8k": ("en-us", "Call me at eight.", 8000, 1.0, None, 0.0),  # nothing above 4 kHz: floor in the top bins
}
# name -> (wav clip, float32 gain): quiet float audio that int16 cannot hold; en peaks at 0.781, so faint at 1.0e-4
DERIVED: dict[str, tuple[str, float]] = {"faint": ("en", 1.28e-4)}
WAVEFORM_SCALE = 32768.0  # funasr's WavFrontend `upsacle_samples`: waveform * (1 << 15) before the fbank
DITHER_SEED = 0
# (window, sample rate, mel bins, frame length ms, frame shift ms) for the raw-fbank check on the first 0.5 s of "en"
FBANK_SETTINGS = [(w, 16000, 80, 25, 10) for w in ("hamming", "hanning", "povey", "rectangular", "blackman")] + [
    ("hamming", 8000, 40, 32, 12.5),  # frame of 256 samples: no zero padding before the FFT
    ("povey", 44100, 64, 25, 10),
]


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_wav(path: Path) -> np.ndarray:
    """16 kHz mono int16 wav -> float32 in [-1, 1), int / 32768 exactly as soundfile reads it."""
    with wave.open(str(path), "rb") as f:
        if (f.getframerate(), f.getnchannels(), f.getsampwidth()) != (SAMPLE_RATE, 1, 2):
            raise ValueError(f"{path}: expected 16 kHz mono int16, got rate {f.getframerate()}, "
                             f"{f.getnchannels()} channels, {8 * f.getsampwidth()} bit")
        samples = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2")
    return (samples / 32768.0).astype(np.float32)


def load_clips(folder: Path = FIXTURE_DIR) -> dict[str, np.ndarray]:
    """The wav clips, then the derived ones (float32 products: the same bits on every machine)."""
    clips = {name: read_wav(folder / f"{name}.wav") for name in CLIPS}
    return clips | {name: clips[source] * np.float32(gain) for name, (source, gain) in DERIVED.items()}


def make_audio(folder: Path) -> None:
    import soundfile

    from funasr_swap.audio import load_audio

    for name, (voice, text, via_rate, gain, keep_s, pad_s) in CLIPS.items():
        spoken = subprocess.run(["espeak-ng", "-v", voice, "--stdout", text], capture_output=True, check=True).stdout
        if via_rate is None:
            waveform = load_audio(spoken, SAMPLE_RATE)
        else:
            waveform = load_audio(load_audio(spoken, via_rate), SAMPLE_RATE, source_rate=via_rate)
        if keep_s is not None:
            waveform = waveform[: int(keep_s * SAMPLE_RATE)]
        silence = np.zeros(int(pad_s * SAMPLE_RATE), np.float32)
        waveform = np.concatenate([silence, gain * waveform, silence])
        pcm = np.clip(np.round(waveform * 32767), -32768, 32767).astype(np.int16)
        _atomic_write(folder / f"{name}.wav",
                      lambda tmp, pcm=pcm: soundfile.write(tmp, pcm, SAMPLE_RATE, subtype="PCM_16", format="WAV"))
        print(f"{name}: {len(pcm) / SAMPLE_RATE:.2f} s")


def make_reference(out: Path) -> None:
    import torch
    import torchaudio
    import transformers
    from transformers.models.fun_asr_nano.feature_extraction_fun_asr_nano import FunAsrNanoFeatureExtractor

    clips = load_clips()
    stock = FunAsrNanoFeatureExtractor()
    scaled = stock([np.float32(WAVEFORM_SCALE) * c for c in clips.values()], sampling_rate=SAMPLE_RATE)
    unscaled = stock(list(clips.values()), sampling_rate=SAMPLE_RATE)
    mask = scaled["input_features_mask"]
    assert torch.equal(mask, unscaled["input_features_mask"])
    arrays = {"mask": mask.numpy()}
    for i, name in enumerate(clips):
        arrays[f"lfr/{name}"] = scaled["input_features"][i, : int(mask[i].sum())].numpy()
        arrays[f"lfr_unscaled/{name}"] = unscaled["input_features"][i, : int(mask[i].sum())].numpy()
    head = torch.from_numpy(clips["en"][: SAMPLE_RATE // 2])
    for window, rate, bins, length, shift in FBANK_SETTINGS:
        arrays[f"fbank/{window}_{rate}_{bins}_{length}_{shift}"] = torchaudio.compliance.kaldi.fbank(
            head[None], num_mel_bins=bins, frame_length=length, frame_shift=shift, sample_frequency=rate,
            window_type=window).numpy()
    torch.manual_seed(DITHER_SEED)
    arrays["dither/en"] = torchaudio.compliance.kaldi.fbank(
        head[None] * WAVEFORM_SCALE, num_mel_bins=80, window_type="hamming", dither=1.0).numpy()
    arrays["meta"] = np.array(json.dumps({
        "torch": torch.__version__, "torchaudio": torchaudio.__version__, "transformers": transformers.__version__,
        "clip_order": list(clips), "derived": DERIVED, "waveform_scale": WAVEFORM_SCALE,
        "fbank_input": "first 0.5 s of en", "dither_seed": DITHER_SEED,
        "dither_input": "first 0.5 s of en x waveform_scale; 80 mel, hamming, dither 1.0",
    }))
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a bare temp name
            np.savez_compressed(f, **arrays)

    _atomic_write(out, write)
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB); {json.loads(str(arrays['meta']))}")

    compare_live(clips, scaled, unscaled, arrays["dither/en"])


def compare_live(clips: dict[str, np.ndarray], scaled, unscaled, dithered: np.ndarray) -> None:
    """Our extractor against torchaudio on this machine: the clips at both scales, random signals, dither, CUDA,
    and a folder saved by ours loaded with stock `AutoFeatureExtractor`."""
    import torch
    import torchaudio
    from transformers import AutoFeatureExtractor
    from transformers.models.fun_asr_nano.feature_extraction_fun_asr_nano import FunAsrNanoFeatureExtractor

    from funasr_swap.features import WAVEFORM_SCALE as OURS_SCALE
    from funasr_swap.features import KaldiFbankFeatureExtractor, batch_features, kaldi_fbank

    waveforms = list(clips.values())
    assert OURS_SCALE == WAVEFORM_SCALE, (OURS_SCALE, WAVEFORM_SCALE)
    for label, extractor, reference in [("int16 scale", KaldiFbankFeatureExtractor(), scaled),
                                        ("unit scale", KaldiFbankFeatureExtractor(waveform_scale=1.0), unscaled)]:
        ours = extractor(waveforms, sampling_rate=SAMPLE_RATE)
        print(f"clips, LFR features at {label}: max |ours - stock| =",
              (ours["input_features"] - reference["input_features"]).abs().max().item(),
              "masks equal:", torch.equal(ours["input_features_mask"], reference["input_features_mask"]))
    g = torch.Generator().manual_seed(0)
    worst = worst_dither = 0.0
    for trial in range(40):
        n = int(torch.randint(400, 60000, (1,), generator=g))
        scale = [1e-4, 0.01, 0.3, 1.0, 32768.0][trial % 5]
        if trial % 2:
            x = torch.randn(n, generator=g) * scale
        else:  # chirp with a noise floor
            t = torch.arange(n) / SAMPLE_RATE
            x = scale * torch.sin(2 * torch.pi * (100 + 3000 * t) * t) + 1e-3 * scale * torch.randn(n, generator=g)
        window = ["hamming", "hanning", "povey", "rectangular", "blackman"][trial % 5]
        ref = torchaudio.compliance.kaldi.fbank(x[None], num_mel_bins=80, window_type=window)
        worst = max(worst, (kaldi_fbank(x, window=window) - ref).abs().max().item())
        torch.manual_seed(trial)
        ref = torchaudio.compliance.kaldi.fbank(x[None], num_mel_bins=80, window_type=window, dither=1.0)
        ours = kaldi_fbank(x, window=window, dither=1.0, generator=torch.Generator().manual_seed(trial))
        worst_dither = max(worst_dither, (ours - ref).abs().max().item())
    print("40 random signals, raw fbank: max |ours - torchaudio| =", worst, "; dither 1.0, same seed:", worst_dither)
    head = torch.from_numpy(clips["en"][: SAMPLE_RATE // 2]) * WAVEFORM_SCALE
    ours = kaldi_fbank(head, dither=1.0, generator=torch.Generator().manual_seed(DITHER_SEED))
    print("dither/en: max |ours - fixture| =", np.abs(ours.numpy() - dithered).max())

    if torch.cuda.is_available():
        on_gpu = batch_features(KaldiFbankFeatureExtractor(), waveforms, device="cuda")
        print("CUDA batch_features, int16 scale: max |ours - stock| =",
              (on_gpu["input_features"].cpu() - scaled["input_features"]).abs().max().item())

    with tempfile.TemporaryDirectory() as folder:
        KaldiFbankFeatureExtractor().save_pretrained(folder)
        loaded = AutoFeatureExtractor.from_pretrained(folder)
    features = loaded(waveforms, sampling_rate=SAMPLE_RATE)["input_features"]
    print("saved with ours, AutoFeatureExtractor loads:", type(loaded).__name__,
          "stock class:", type(loaded) is FunAsrNanoFeatureExtractor,
          "waveform_scale kept as an attribute:", getattr(loaded, "waveform_scale", None),
          "; max |loaded - stock unit scale| =", (features - unscaled["input_features"]).abs().max().item(),
          "; max |loaded - ours| =", (features - scaled["input_features"]).abs().max().item())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    sub.add_parser("audio", help="speak the clips into tests/fixtures/fbank/*.wav (espeak-ng, soxr)")
    ref = sub.add_parser("reference", help="torchaudio features of the clips into an .npz")
    ref.add_argument("--out", type=Path, default=FIXTURE_DIR / "reference.npz")
    args = parser.parse_args()
    if args.step == "audio":
        make_audio(FIXTURE_DIR)
    else:
        make_reference(args.out)


if __name__ == "__main__":
    main()
