"""Where transformers' FunAsrNano falls short, filled narrowly (each fix is idempotent and tested).

- `mask_adaptor_padding`: transformers 5.24 leaves the adaptor config without an attention implementation, and
  with none its blocks get no attention mask: in a padded batch, a short clip's frames attend to the padding, so
  batched transcription and batched training differ from one clip at a time.
- `restore_logit_softcapping`: what a family's `*ForCausalLM` does after the backbone that FunAsrNano's plain
  `lm_head` does not.
- `NO_HUB_KERNELS`: from 5.25, `from_pretrained` swaps layers for Hugging Face Hub kernels by default
  (`use_kernels=True`), fetched from the Hub at load time on a GPU; with no network (or none allowed: nothing here
  downloads at run time) loading a model onto CUDA fails ("Kernel repository 'kernels-community/rotary' could not
  verify publisher trust status"). Every load passes it.

FunAsrNano builds the text backbone with `AutoModel` and its own `lm_head`, so Gemma-2's final logit soft-capping
(`logits = cap * tanh(logits / cap)`, cap 30.0) is lost. `restore_logit_softcapping` puts it back with a forward
hook on `lm_head`, read from `text_config.final_logit_softcapping`, so it survives save/load of the config. A model
loaded with stock `AutoModelForSpeechSeq2Seq` needs the call again; greedy decoding is unaffected either way
(tanh is monotonic), only probabilities, losses and sampling change.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import FunAsrNanoForConditionalGeneration

_HOOK_ATTR = "_funasr_swap_softcap_hook"
NO_HUB_KERNELS = {"use_kernels": False}  # `from_pretrained(..., **NO_HUB_KERNELS)`: layers as the model defines them


def _softcap_hook(cap: float):
    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], logits: torch.Tensor) -> torch.Tensor:
        return torch.tanh(logits / cap) * cap

    return hook


def restore_logit_softcapping(model: nn.Module) -> bool:
    """Apply `text_config.final_logit_softcapping` to `model.lm_head`'s output (idempotent).

    Returns True when the text config asks for soft-capping (Gemma-2), False when there is nothing to restore.
    """
    cap = getattr(model.config.text_config, "final_logit_softcapping", None)
    if not cap:
        return False
    if getattr(model.lm_head, _HOOK_ATTR, None) is None:
        setattr(model.lm_head, _HOOK_ATTR, model.lm_head.register_forward_hook(_softcap_hook(float(cap))))
    return True


def active_logit_softcap(model: nn.Module) -> float | None:
    """The cap `restore_logit_softcapping` applies to `model.lm_head`'s output, or None where no cap hook is on it
    (a loss that bypasses the hook, `funasr_swap.loss.lm_head_cross_entropy`, applies this one itself)."""
    if getattr(model.lm_head, _HOOK_ATTR, None) is None:
        return None
    return float(model.config.text_config.final_logit_softcapping)


def fill_gaps(model: FunAsrNanoForConditionalGeneration) -> None:
    """Apply every fix of this module (idempotent): what each entry point that runs a model calls, so a model
    loaded with stock transformers behaves as one loaded by funasr_swap."""
    mask_adaptor_padding(model)
    restore_logit_softcapping(model)


def mask_adaptor_padding(model: FunAsrNanoForConditionalGeneration) -> None:
    """Make the adaptor's attention ignore padded audio frames, with the audio encoder's attention implementation.

    `create_bidirectional_mask` returns no mask for a config whose `_attn_implementation` is None, which is what
    `adaptor_config` gets (it is no sub-model's config), whether the model was built or loaded.
    """
    adaptor = model.config.adaptor_config
    if adaptor._attn_implementation is None:
        adaptor._attn_implementation = model.config.audio_config._attn_implementation
