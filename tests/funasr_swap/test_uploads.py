"""funasr_swap.uploads: the size form the demo and the server take their upload limit in."""

from __future__ import annotations

import pytest

from funasr_swap.errors import SettingError
from funasr_swap.uploads import file_size_bytes


@pytest.mark.parametrize("size", ["300kb", "10mb", "10 MB", "1gb", "512b", "2tb"])
def test_file_size_bytes_reads_sizes_as_gradio_does(size):
    from gradio.utils import _parse_file_size  # what the demo's server enforces

    assert file_size_bytes(size) == _parse_file_size(size)


@pytest.mark.parametrize("size", ["abc", "10", "mb", "1.5mb", "10 megabytes"])
def test_file_size_bytes_refuses_another_form(size):
    with pytest.raises(SettingError, match=f"Server.max_file_size={size!r}: give a whole number and a unit"):
        file_size_bytes(size, owner="Server")


def test_the_demo_and_the_server_refuse_a_limit_that_is_not_positive():
    from demos.config import DemoConfig
    from funasr_swap.serve import ServeConfig

    with pytest.raises(ValueError, match=r"ServeConfig\.max_batch_size must be > 0, got 0$"):
        ServeConfig(max_batch_size=0)
    with pytest.raises(ValueError, match=r"DemoConfig\.max_audio_seconds must be > 0, got -1\.0$"):
        DemoConfig(max_audio_seconds=-1.0)
