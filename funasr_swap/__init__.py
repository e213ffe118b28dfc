"""funasr_swap: the model side of an LLM swap in Fun-ASR-Nano, built on transformers' FunAsrNano classes."""
