"""The edge runtime: transcribe with what `funasr-swap export` wrote (audio.onnx, llm.gguf, edge.json), without
torch: numpy features, onnxruntime, llama.cpp. Importing this package imports neither torch nor the runtimes."""

from funasr_swap.edge.config import EdgeConfig, read_edge_config
from funasr_swap.edge.features import FeatureSettings
from funasr_swap.edge.runtime import EdgeModel, transcribe

__all__ = ["EdgeConfig", "EdgeModel", "FeatureSettings", "read_edge_config", "transcribe"]
