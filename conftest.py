"""One folder of miniature worlds for the whole pytest run: the tests' `quick_world` fixture builds the quick world
there, and the notebooks (nbval's kernels inherit the environment) and their browser test open that same world
instead of building their own. Removed at the end; a FUNASR_SWAP_RUNS already set is used and kept.

Under pytest-xdist (`-n auto`, the README's test command), everything that opens that world runs on one worker, in
collection order (`xdist_group`, with `--dist loadgroup` from pyproject's addopts): the notebooks add swaps to it
while tests read it, so they must not run side by side, and one worker builds it once. Each worker gets an equal
share of the cores for torch, so that two workers do not each start a thread per core."""

import os
import shutil
import tempfile

import pytest

RUNS_ENV = "FUNASR_SWAP_RUNS"  # the notebooks' parameters cell reads it
QUICK_WORLD_GROUP = "quick-world"
_made: list[str] = []


def pytest_configure(config) -> None:
    if RUNS_ENV not in os.environ:  # xdist's workers inherit the folder the controller made
        os.environ[RUNS_ENV] = tempfile.mkdtemp(prefix="funasr-swap-runs-")
        _made.append(os.environ[RUNS_ENV])
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // workers))


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if item.path.suffix == ".ipynb" or "quick_world" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group(QUICK_WORLD_GROUP))


def pytest_unconfigure(config) -> None:
    for folder in _made:
        shutil.rmtree(folder, ignore_errors=True)
