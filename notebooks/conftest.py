"""The notebooks under nbval (`pytest` collects them with `--nbval-lax`): on the quick world unless told otherwise,
and marked slow (each builds, trains and transcribes; `pytest -m "not slow"` is the fast set)."""

import os

import pytest

os.environ.setdefault("FUNASR_SWAP_WORLD", "quick")  # the kernels nbval starts inherit this environment


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.slow)
