"""One folder of miniature worlds for the whole pytest run: the tests' `quick_world` fixture builds the quick world
there, and the notebooks (nbval's kernels inherit the environment) and their browser test open that same world
instead of building their own. Removed at the end; a FUNASR_SWAP_RUNS already set is used and kept."""

import os
import shutil
import tempfile

RUNS_ENV = "FUNASR_SWAP_RUNS"  # the notebooks' parameters cell reads it
_made: list[str] = []


def pytest_configure(config) -> None:
    if RUNS_ENV not in os.environ:
        os.environ[RUNS_ENV] = tempfile.mkdtemp(prefix="funasr-swap-runs-")
        _made.append(os.environ[RUNS_ENV])


def pytest_unconfigure(config) -> None:
    for folder in _made:
        shutil.rmtree(folder, ignore_errors=True)
