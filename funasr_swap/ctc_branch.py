"""The original checkpoint's CTC branch, kept beside the Hugging Face folder and read back as a module.

The original Fun-ASR-Nano trains a CTC branch on its encoder next to the LLM: `ctc_decoder.*` (config.yaml's
`ctc_decoder: Transformer`, the same funasr adaptor class as the audio adaptor: linear1 -> ReLU -> linear2 ->
`n_layer` blocks, here 5 at width `llm_dim` 512) and `ctc.ctc_lo` (a linear layer to the CTC vocabulary, 60,515
entries, the blank last). transformers' `FunAsrNanoForConditionalGeneration` has no module for it, so
`funasr-swap convert` writes it to `CTC_BRANCH_FILE` in the converted folder (stock loading reads only
`model.safetensors` and ignores it), with config.yaml's `ctc_decoder_conf` in the file's metadata.

`read_ctc_branch(folder)` builds it again as a `CtcBranch`: the decoder as a transformers
`FunAsrNanoMultiModalProjector` (the audio adaptor's renames apply, `convert.LAYER_RENAMES`), the output layer as
an `nn.Linear`. Its per-frame posteriors over the CTC vocabulary (`CtcBranch.posteriors`) are what the `vocab`
adaptor initialisation carries into a new LLM (`funasr_swap.vocab_init`), through a vocabulary map from the CTC
branch's tokenizer, and its log-posteriors (`CtcBranch.log_posteriors`) are what token timestamps align a
transcript with (`funasr_swap.timestamps`).

The branch's tokenizer: a Hugging Face tokenizer folder `CTC_TOKENIZER_DIR` (`ctc_tokenizer/`) beside the branch,
which `read_ctc_branch` loads when the caller passes none. The real branch's tokenizer is `multilingual.tiktoken` of
the original checkpoint (a whisper-style encoding with funasr's own special tokens, read by funasr's
`whisper_tokenizer.py`); no PyPI wheel ships it and it is not converted here: save a Hugging Face tokenizer of that
vocabulary (the blank excluded) as `ctc_tokenizer/` in the original or the converted folder. `copy_ctc_branch`
carries both, the file and the folder, to every folder made from this one (`convert`, `swap`, `export`): a swap
keeps the encoder the branch reads.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import AutoTokenizer, FunAsrNanoAdaptorConfig, FunAsrNanoConfig, PreTrainedTokenizerBase
from transformers.models.fun_asr_nano.modeling_fun_asr_nano import FunAsrNanoMultiModalProjector

__all__ = [
    "CTC_BRANCH_FILE",
    "CTC_PREFIXES",
    "CTC_TOKENIZER_DIR",
    "CtcBranch",
    "copy_ctc_branch",
    "read_ctc_branch",
    "require_ctc_branch",
    "write_ctc_branch",
]

CTC_BRANCH_FILE = "ctc_branch.safetensors"
CTC_TOKENIZER_DIR = "ctc_tokenizer"  # a Hugging Face tokenizer of the branch's vocabulary (the module docstring)
CTC_PREFIXES = ("ctc_decoder.", "ctc.")  # the original's keys of the branch
_CONF_KEY = "ctc_decoder_conf"  # the metadata entry: config.yaml's ctc_decoder_conf, as JSON
# original key prefix -> CtcBranch key prefix; inside the blocks, convert.LAYER_RENAMES
_RENAMES = (
    ("ctc_decoder.linear1.", "decoder.linear_1."),
    ("ctc_decoder.linear2.", "decoder.linear_2."),
    ("ctc_decoder.blocks.", "decoder.layers."),
    ("ctc.ctc_lo.", "output."),
)


class CtcBranch(nn.Module):
    """The CTC branch on the encoder: `decoder` (an adaptor of funasr's Transformer class) then `output` (to the
    CTC vocabulary, the blank last); `tokenizer`: a Hugging Face tokenizer of that vocabulary (without the blank),
    which reading its posteriors as tokens needs."""

    def __init__(
        self, decoder: FunAsrNanoMultiModalProjector, output: nn.Linear, tokenizer: PreTrainedTokenizerBase | None
    ):
        super().__init__()
        self.decoder = decoder
        self.output = output
        self.tokenizer = tokenizer

    @property
    def blank_id(self) -> int:
        return self.output.out_features - 1

    @torch.no_grad()
    def logits(self, encoder_outputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(valid frames, vocabulary) CTC logits of the encoder's outputs (B, T, hidden) at mask's valid frames
        (B, T), in order, float32; the blank is the last column."""
        hidden = self.decoder(encoder_outputs, mask)[mask.bool()]
        return self.output(hidden).float()

    def posteriors(self, encoder_outputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The softmax of `logits`."""
        return self.logits(encoder_outputs, mask).softmax(-1)

    def log_posteriors(self, encoder_outputs: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """Each clip's `(its valid frames, vocabulary)` log-softmax of `logits` (the original's `ctc.log_softmax`)."""
        return list(self.logits(encoder_outputs, mask).log_softmax(-1).split(mask.sum(1).tolist()))


@dataclass(frozen=True)
class _DecoderShape:
    """What a CtcBranch's decoder is, from config.yaml's ctc_decoder_conf and the tensors (funasr's defaults)."""

    encoder_dim: int
    ffn_dim: int
    llm_dim: int
    layers: int
    heads: int

    def config(self, eps: float) -> FunAsrNanoConfig:
        adaptor = FunAsrNanoAdaptorConfig(
            hidden_size=self.llm_dim, num_attention_heads=self.heads, intermediate_size=self.llm_dim // 4,
            num_hidden_layers=self.layers, projector_hidden_size=self.ffn_dim, layer_norm_eps=eps,
            attn_implementation="sdpa",
        )  # fmt: skip
        return FunAsrNanoConfig(
            audio_config={"hidden_size": self.encoder_dim}, adaptor_config=adaptor,
            text_config={"hidden_size": self.llm_dim}, attn_implementation="sdpa",
        )  # fmt: skip


def _renamed(key: str) -> str:
    from funasr_swap.convert import LAYER_RENAMES

    for old, new in _RENAMES:
        if key.startswith(old):
            key = new + key[len(old) :]
            for old_part, new_part in LAYER_RENAMES:
                key = key.replace(old_part, new_part)
            return key
    raise KeyError(f"{key} is no key of the CTC branch ({', '.join(CTC_PREFIXES)})")


def write_ctc_branch(tensors: dict[str, torch.Tensor], conf: dict | None, path: str | Path) -> Path:
    """Write the original's CTC branch (`tensors` under their original names) and config.yaml's `ctc_decoder_conf`
    as a safetensors file."""
    metadata = {_CONF_KEY: json.dumps(conf or {})}
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return Path(path)


def copy_ctc_branch(source: str | Path, target: str | Path) -> None:
    """Copy `source`'s CTC branch (`CTC_BRANCH_FILE` and `CTC_TOKENIZER_DIR`, those it has) into `target`."""
    source, target = Path(source), Path(target)
    if (source / CTC_BRANCH_FILE).is_file():
        shutil.copy(source / CTC_BRANCH_FILE, target / CTC_BRANCH_FILE)
    if (source / CTC_TOKENIZER_DIR).is_dir():
        shutil.copytree(source / CTC_TOKENIZER_DIR, target / CTC_TOKENIZER_DIR, dirs_exist_ok=True)


def require_ctc_branch(folder: str | Path) -> CtcBranch:
    """`read_ctc_branch(folder)` for timestamps: FileNotFoundError, one line naming the folder and what it lacks,
    when it has no branch or no tokenizer for it."""
    folder = Path(folder)
    if not (folder / CTC_BRANCH_FILE).is_file():
        raise FileNotFoundError(
            f"{folder} has no CTC branch ({CTC_BRANCH_FILE}), which timestamps need; `funasr-swap convert` of an "
            "original Fun-ASR-Nano checkpoint keeps it, and swaps and exports of that folder carry it"
        )
    if not (folder / CTC_TOKENIZER_DIR).is_dir():
        raise FileNotFoundError(
            f"{folder} has a CTC branch but no {CTC_TOKENIZER_DIR}/ (a Hugging Face tokenizer of its vocabulary), "
            "which timestamps need to read a transcript in the branch's tokens"
        )
    return read_ctc_branch(folder)  # type: ignore[return-value]


def read_ctc_branch(folder: str | Path, tokenizer: PreTrainedTokenizerBase | None = None) -> CtcBranch | None:
    """The CTC branch kept in `folder`'s `CTC_BRANCH_FILE`, in eval mode, float32, with `tokenizer` (of its
    vocabulary; None: the folder's `CTC_TOKENIZER_DIR` when it has one); None when there is no branch."""
    from funasr_swap.convert import ADAPTOR_LAYER_NORM_EPS

    path = Path(folder) / CTC_BRANCH_FILE
    if not path.is_file():
        return None
    if tokenizer is None and (Path(folder) / CTC_TOKENIZER_DIR).is_dir():
        tokenizer = AutoTokenizer.from_pretrained(Path(folder) / CTC_TOKENIZER_DIR)
    with safe_open(str(path), framework="pt") as handle:
        conf = json.loads((handle.metadata() or {}).get(_CONF_KEY, "{}"))
        state = {_renamed(key): handle.get_tensor(key).float() for key in handle.keys()}  # noqa: SIM118
    linear_1, output = state["decoder.linear_1.weight"], state["output.weight"]
    layers = 1 + max((int(k.split(".")[2]) for k in state if k.startswith("decoder.layers.")), default=-1)
    shape = _DecoderShape(
        encoder_dim=conf.get("encoder_dim", linear_1.shape[1]), ffn_dim=conf.get("ffn_dim", linear_1.shape[0]),
        llm_dim=conf.get("llm_dim", output.shape[1]), layers=conf.get("n_layer", layers),
        heads=conf.get("attention_heads", 8),
    )  # fmt: skip
    with torch.device("meta"):
        decoder = FunAsrNanoMultiModalProjector(shape.config(ADAPTOR_LAYER_NORM_EPS))
        head = nn.Linear(output.shape[1], output.shape[0], bias="output.bias" in state)
    branch = CtcBranch(decoder, head, tokenizer)
    branch.load_state_dict(state, strict=True, assign=True)
    return branch.eval()
