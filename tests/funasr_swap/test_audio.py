"""load_audio: files, bytes and arrays to mono float32 at 16 kHz, with errors that name the source."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile

from funasr_swap.audio import load_audio

FIXTURE_WAV = Path(__file__).resolve().parents[1] / "fixtures" / "fbank" / "en.wav"


def tone(rate: int, seconds: float = 1.0, freq: float = 1000.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


def assert_is_tone_at_16k(waveform: np.ndarray, seconds: float = 1.0, freq: float = 1000.0) -> None:
    assert waveform.dtype == np.float32 and waveform.shape == (int(16000 * seconds),)
    middle = slice(1600, len(waveform) - 1600)  # away from the resampler's edge transients
    np.testing.assert_allclose(waveform[middle], tone(16000, seconds, freq)[middle], atol=5e-3)


def test_reads_a_16k_wav_exactly():
    pcm, rate = soundfile.read(FIXTURE_WAV, dtype="int16")
    assert rate == 16000
    waveform = load_audio(FIXTURE_WAV)
    assert waveform.dtype == np.float32
    np.testing.assert_array_equal(waveform, pcm / np.float32(32768))
    np.testing.assert_array_equal(load_audio(str(FIXTURE_WAV)), waveform)
    np.testing.assert_array_equal(load_audio(FIXTURE_WAV.read_bytes()), waveform)


@pytest.mark.parametrize(("fmt", "subtype", "atol"), [("FLAC", "PCM_16", 1e-4), ("OGG", "VORBIS", 0.05)])
def test_reads_flac_and_ogg(tmp_path, fmt, subtype, atol):
    path = tmp_path / f"tone.{fmt.lower()}"
    soundfile.write(path, tone(16000), 16000, format=fmt, subtype=subtype)
    waveform = load_audio(path)
    assert waveform.shape == (16000,)
    middle = slice(1600, 14400)
    np.testing.assert_allclose(waveform[middle], tone(16000)[middle], atol=atol)


def test_stereo_44k_file_is_averaged_and_resampled(tmp_path):
    # Left has the tone plus a click train, right the tone minus it: only their mean is a clean tone.
    clicks = np.zeros(44100, np.float32)
    clicks[::441] = 0.3
    stereo = np.stack([tone(44100) + clicks, tone(44100) - clicks], axis=1)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, stereo, 44100, subtype="FLOAT")
    assert_is_tone_at_16k(load_audio(path))


def test_array_needs_its_rate_and_is_resampled():
    assert_is_tone_at_16k(load_audio(tone(8000), source_rate=8000))
    np.testing.assert_array_equal(load_audio(tone(16000), source_rate=16000), tone(16000))
    with pytest.raises(ValueError, match="source_rate"):
        load_audio(tone(8000))


def test_other_target_rate():
    assert load_audio(tone(16000), sampling_rate=8000, source_rate=16000).shape == (8000,)


@pytest.mark.parametrize("dtype", [np.int16, np.int32])
def test_integer_pcm_arrays_are_scaled_like_soundfile(dtype):
    full_scale = -np.iinfo(dtype).min
    pcm = np.array([0, full_scale // 2, -full_scale], dtype=dtype)
    np.testing.assert_array_equal(load_audio(pcm, source_rate=16000), np.array([0.0, 0.5, -1.0], np.float32))


def test_source_rate_is_refused_for_files():
    with pytest.raises(ValueError, match="only for arrays"):
        load_audio(FIXTURE_WAV, source_rate=16000)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.wav"):
        load_audio(tmp_path / "nowhere.wav")


def test_unreadable_file_names_it(tmp_path):
    path = tmp_path / "broken.wav"
    path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEgarbage")
    with pytest.raises(ValueError, match=r"cannot read audio .*broken\.wav"):
        load_audio(path)
    with pytest.raises(ValueError, match=r"cannot read audio <19 bytes>"):
        load_audio(path.read_bytes())


def test_empty_audio_names_it(tmp_path):
    path = tmp_path / "empty.wav"
    soundfile.write(path, np.zeros(0, np.float32), 16000)
    with pytest.raises(ValueError, match=r"empty\.wav is empty"):
        load_audio(path)
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(0, np.float32), 16000, format="WAV")
    with pytest.raises(ValueError, match="is empty"):
        load_audio(buffer.getvalue())


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((2, 16000), np.float32), "channels-first"),
        (np.zeros((4, 4, 4), np.float32), "3-D"),
        (np.array([0.0, np.nan], np.float32), "NaN"),
        (np.zeros(10, np.uint8), "uint8"),
    ],
)
def test_bad_arrays_are_refused(array, message):
    with pytest.raises(ValueError, match=message):
        load_audio(array, source_rate=16000)
