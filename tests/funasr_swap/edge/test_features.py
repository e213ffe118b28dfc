"""The edge runtime's numpy features against the project's torch features (`funasr_swap.features`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from funasr_swap.edge.features import FeatureSettings, fbank, lfr_stack, num_lfr_frames
from funasr_swap.features import batch_features, kaldi_fbank, load_feature_extractor
from funasr_swap.features import lfr_stack as torch_lfr_stack
from funasr_swap.features import num_lfr_frames as torch_num_lfr_frames
from tests.tolerances import assert_log_mels_close

# numpy's pocketfft and matrix product round otherwise than torch's (1.6e-4 in log-mel measured on speech-level
# noise): the same computation up to float32 rounding, bounded relative to each frame's total energy
# (tests/tolerances.py).


@pytest.mark.parametrize("amplitude", [0.3, 1e-2, 1e-4])
@pytest.mark.parametrize("seconds", [0.025, 0.4, 3.07])
def test_features_equal_the_projects_within_tolerance(amplitude, seconds):
    rng = np.random.default_rng(7)
    waveform = (rng.standard_normal(round(seconds * 16000)) * amplitude).astype(np.float32)
    expected = batch_features(load_feature_extractor(), [waveform])["input_features"][0].numpy()
    settings = FeatureSettings()
    ours = lfr_stack(fbank(waveform, settings), settings.lfr_m, settings.lfr_n)
    assert ours.shape == expected.shape and ours.dtype == np.float32
    assert_log_mels_close(ours, expected)


@pytest.mark.parametrize("window", ["hamming", "hanning", "povey", "rectangular", "blackman"])
def test_every_kaldi_window_matches(window):
    waveform = np.random.default_rng(1).standard_normal(4000).astype(np.float32) * 0.1
    settings = FeatureSettings(window=window)
    expected = kaldi_fbank(torch.from_numpy(waveform) * 32768, window=window).numpy()
    assert_log_mels_close(fbank(waveform, settings), expected, err_msg=window)


def test_lfr_stacking_copies_the_same_frames():
    frames = np.random.default_rng(2).standard_normal((23, 5)).astype(np.float32)
    expected = torch_lfr_stack(torch.from_numpy(frames)[None], [23], 7, 6)[0].numpy()
    np.testing.assert_array_equal(lfr_stack(frames, 7, 6), expected)


@pytest.mark.parametrize("samples", [400, 401, 560, 1359, 16000, 48123])
def test_lfr_frame_counts_equal_the_extractors(samples):
    assert num_lfr_frames(samples, FeatureSettings()) == torch_num_lfr_frames(load_feature_extractor(), samples)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="at least one 25.0 ms frame"):
        fbank(np.zeros(100, np.float32), FeatureSettings())
    with pytest.raises(ValueError, match="window must be one of"):
        fbank(np.zeros(1000, np.float32), FeatureSettings(window="kaiser"))
