"""Tolerances that more than one test file needs, each derived from the arithmetic it bounds (docs/architecture.md,
"Tolerances"): a comparison between two implementations, or against a fixture made on another processor, allows
what float32 rounding can do there and nothing that depends on the machine where a value happened to be measured."""

from __future__ import annotations

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 2^-23: the spacing of float32 numbers at 1

# Log-mel filterbanks (Kaldi fbank: frame -> FFT -> power -> mel-triangle sums -> clamp at eps -> log).
# The FFT's rounding error is norm-wise, not per bin: ||dX||_2 <= log2(N) * eta * ||X||_2 with eta = u + g4*(sqrt2 + u)
# ~ 3.3 eps for a radix-2 FFT of size N (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., Thm 24.2;
# other Cooley-Tukey orders, MKL's, pocketfft's, cuFFT's, have bounds of the same form). A bin's power |X_k|^2 errs by
# about 2 |X_k| |dX_k|, so all bins' power errors together stay below 2 ||X|| ||dX|| <= 2 sqrt2 log2(N) eta ||X_half||^2
# (Cauchy-Schwarz; sqrt2: a real frame's half spectrum holds half its energy). Each mel triangle weighs a bin by at
# most 1 and the triangles sum to 1 across the band, so every mel energy errs by at most that times the frame's TOTAL
# mel energy: 2 sqrt2 * 3.3 = 9.4 eps per FFT stage, plus the mel sums (g_k relative, k <= ~20 bins per triangle:
# ~1 eps per stage at N = 512) and the framing (DC removal, pre-emphasis, window: a few u per sample, well under 1).
# Hence 12 eps per stage; a faint bin (a mel energy many decades below the frame's) carries the frame's absolute error
# as a large relative one, which is why log-mels cannot be compared with one absolute tolerance. Measured under MKL's
# AVX-512, AVX2 and SSE4.2 kernels (MKL_ENABLE_INSTRUCTIONS; SSE4.2 reproduces an AMD EPYC's value to the last bit) on
# the fixture clips: mel energies at most 7 eps of their frame's total apart at N = 512 against this bound's 108 (a
# worst case: rounding errors rarely all align); every comparison in the suite, logs and numpy's pocketfft included,
# stays within 12% of the whole bound.
FBANK_EPS_PER_FFT_STAGE = 12


def _fbank_tolerance(ours: np.ndarray, expected: np.ndarray, num_mel_bins: int, fft_size: int):
    """Energies of both, the allowed difference per value and the difference itself, `(frames, num_mel_bins)`."""
    ours = np.asarray(ours, np.float32).reshape(-1, num_mel_bins)  # LFR rows stack whole fbank frames
    expected = np.asarray(expected, np.float32).reshape(-1, num_mel_bins)
    energy_ours, energy_expected = np.exp(ours.astype(np.float64)), np.exp(expected.astype(np.float64))
    frame_total = energy_expected.sum(-1, keepdims=True)  # clamped at eps: never below the true total
    spectrum = FBANK_EPS_PER_FFT_STAGE * np.log2(fft_size) * EPS32 * frame_total
    # Each side's log-mel is a float32 log, within one ulp of the log of its energy (MKL's and Sleef's logf are
    # <= 1 ulp): a relative error of ulp(L) on that energy once exponentiated.
    log_rounding = np.spacing(np.abs(ours)) * energy_ours + np.spacing(np.abs(expected)) * energy_expected
    return energy_ours, energy_expected, spectrum + 1.01 * log_rounding


def log_mels_within_rounding(ours, expected, num_mel_bins: int = 80, fft_size: int = 512) -> bool:
    """Whether two log-mel arrays (fbank frames, or LFR rows of whole frames) are one computation up to float32
    rounding: every mel energy within `FBANK_EPS_PER_FFT_STAGE * log2(fft_size)` eps of its frame's total energy,
    plus each log's own rounding. The floor (clamp at eps) is 1-Lipschitz: it never widens a difference."""
    if np.shape(ours) != np.shape(expected):
        return False
    energy_ours, energy_expected, allowed = _fbank_tolerance(ours, expected, num_mel_bins, fft_size)
    return bool(np.all(np.abs(energy_ours - energy_expected) <= allowed))


def assert_log_mels_close(ours, expected, num_mel_bins: int = 80, fft_size: int = 512, err_msg: str = "") -> None:
    """`log_mels_within_rounding`, or an AssertionError naming the worst value (frame, bin, both log-mels, how far
    below its frame's total energy it lies)."""
    assert np.shape(ours) == np.shape(expected), f"{err_msg}: shape {np.shape(ours)} != {np.shape(expected)}"
    energy_ours, energy_expected, allowed = _fbank_tolerance(ours, expected, num_mel_bins, fft_size)
    excess = np.abs(energy_ours - energy_expected) / allowed
    if np.all(excess <= 1.0):
        return
    frame, mel = np.unravel_index(np.argmax(excess), excess.shape)
    ours_value, expected_value = np.log(energy_ours[frame, mel]), np.log(energy_expected[frame, mel])
    share = energy_expected[frame, mel] / energy_expected[frame].sum()
    raise AssertionError(
        f"{err_msg}: {int((excess > 1.0).sum())} / {excess.size} log-mel values beyond float32 rounding; the worst, "
        f"fbank frame {frame} mel {mel}: {ours_value:.6f} vs {expected_value:.6f} expected, energy {share:.1e} of its "
        f"frame's total, {excess.max():.1f}x the bound"
    )
