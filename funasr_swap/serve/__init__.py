"""`funasr-swap serve`: a model behind an OpenAI-compatible transcription endpoint, with requests that arrive
together batched.

    config.py       ServeConfig: where it listens, its limits (the demo's), its batching (torch-free)
    recognizers.py  the model it runs: a PyTorch folder (batched `transcribe`) or an export (the edge runtime)
    batching.py     BatchingQueue: a bounded queue, batches by size and wait, one worker thread
    app.py          the FastAPI app (`build_app`), OpenAI's error shape, and serving it (`bind`, `run`, `running`)

Importing the package imports only the config (no torch, no FastAPI): the CLI reads its defaults from there.
"""

from funasr_swap.serve.config import ServeConfig

__all__ = ["ServeConfig"]
