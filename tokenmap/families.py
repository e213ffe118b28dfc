"""Chat families: one record per prompt format (litgpt `prompts.py` style, as data).

A `ChatFamily` holds what differs between LLM families in a single-turn chat: role markers, BOS, the end-of-turn
token that closes a supervised answer, stop tokens, whether a system role exists (Gemma and the `[INST]` formats
have none: the system text is folded into the first user turn, as their templates do), and which special tokens of
the family's tokenizer are genuinely unused (candidates for speech markers). The ASR prompt and the processor chat
template are both generated from these records (`tokenmap.prompt`), so a family is defined in exactly one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class ChatFamily:
    """The single-turn chat format of one LLM family.

    Turn texts are Jinja-free literal strings; `{role}`-style fields are already specialised per role.
    `system_fold` is used only when `has_system` is False: a format string with `{system}` that is prepended to the
    first user message.
    """

    name: str
    bos: str | None  # literal BOS text the template starts with (None: the family uses no BOS)
    system_start: str
    system_end: str
    user_start: str
    user_end: str
    assistant_start: str  # the generation prompt
    end_of_turn: str  # closes a supervised answer (the label's last token)
    stop_tokens: tuple[str, ...]
    has_system: bool = True
    system_fold: str = "{system}\n\n"
    response_prefix: str = ""  # the template writes this between the generation prompt and the answer
    after_turn: str = ""  # text after an answer's end-of-turn token (ChatML and Gemma: a newline)
    think_block: str | None = None  # Qwen3 non-thinking mode: empty think block after the generation prompt
    unused_special: str | None = None  # regex of the tokenizer's genuinely unused special tokens
    signature: tuple[str, ...] = field(default_factory=tuple)  # tokens whose presence identifies the family

    def unused_special_tokens(self, tokenizer: PreTrainedTokenizerBase) -> list[tuple[str, int]]:
        """(token, id) of the tokenizer's added tokens that this family never uses, in id order."""
        if self.unused_special is None:
            return []
        pattern = re.compile(self.unused_special)
        found = [
            (str(t.content), i) for i, t in tokenizer.added_tokens_decoder.items() if pattern.fullmatch(str(t.content))
        ]
        return sorted(found, key=lambda item: item[1])


_CHATML = dict(
    bos=None,
    system_start="<|im_start|>system\n",
    system_end="<|im_end|>\n",
    user_start="<|im_start|>user\n",
    user_end="<|im_end|>\n",
    assistant_start="<|im_start|>assistant\n",
    end_of_turn="<|im_end|>",
    after_turn="\n",
)
_DEEPSEEK_PLAIN = dict(  # deepseek-llm chat and DeepSeek-V2 (-Lite): "User: ...\n\nAssistant:"
    bos="<｜begin▁of▁sentence｜>",
    system_start="",
    system_end="\n\n",
    user_start="User: ",
    user_end="\n\n",
    assistant_start="Assistant:",
    end_of_turn="<｜end▁of▁sentence｜>",
    stop_tokens=("<｜end▁of▁sentence｜>",),
    response_prefix=" ",
)

# Each entry cites the template or published format it follows.
FAMILIES: dict[str, ChatFamily] = {
    f.name: f
    for f in [
        # Qwen3 tokenizer_config.json chat template (ChatML), enable_thinking=False adds the empty think block.
        ChatFamily(
            name="qwen3",
            **_CHATML,
            stop_tokens=("<|im_end|>", "<|endoftext|>"),
            think_block="<think>\n\n</think>\n\n",
            # Vision/grounding tokens that text-only Qwen3 never emits; Fun-ASR-Nano uses the first as placeholder.
            unused_special=r"<\|(object_ref|box|quad|vision)_(start|end)\|>|<\|(vision|image|video)_pad\|>",
            signature=("<|im_start|>", "<|im_end|>"),
        ),
        # Llama-3 prompt format (llama.com "Llama 3" model card / llama_models chat_format.py).
        ChatFamily(
            name="llama3",
            bos="<|begin_of_text|>",
            system_start="<|start_header_id|>system<|end_header_id|>\n\n",
            system_end="<|eot_id|>",
            user_start="<|start_header_id|>user<|end_header_id|>\n\n",
            user_end="<|eot_id|>",
            assistant_start="<|start_header_id|>assistant<|end_header_id|>\n\n",
            end_of_turn="<|eot_id|>",
            stop_tokens=("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"),
            unused_special=r"<\|reserved_special_token_\d+\|>",
            signature=("<|start_header_id|>", "<|eot_id|>"),
        ),
        # Gemma-2 format (ai.google.dev gemma formatting): no system role, the model's turn is called "model".
        ChatFamily(
            name="gemma2",
            bos="<bos>",
            system_start="",
            system_end="",
            user_start="<start_of_turn>user\n",
            user_end="<end_of_turn>\n",
            assistant_start="<start_of_turn>model\n",
            end_of_turn="<end_of_turn>",
            after_turn="\n",
            stop_tokens=("<end_of_turn>", "<eos>"),
            has_system=False,
            unused_special=r"<unused\d+>",
            signature=("<start_of_turn>", "<end_of_turn>"),
        ),
        # Mistral-7B-Instruct-v0.3 template: system text joins the user turn; [INST]/[/INST] are control tokens.
        ChatFamily(
            name="mistral",
            bos="<s>",
            system_start="",
            system_end="",
            user_start="[INST] ",
            user_end="[/INST]",
            assistant_start="",
            end_of_turn="</s>",
            stop_tokens=("</s>",),
            has_system=False,
            response_prefix=" ",
            unused_special=r"\[control_\d+\]",
            signature=("[INST]", "[/INST]"),
        ),
        # Llama-2-chat template: <<SYS>> block inside the first [INST]; [INST] is plain text.
        ChatFamily(
            name="llama2",
            bos="<s>",
            system_start="",
            system_end="",
            user_start="[INST] ",
            user_end=" [/INST]",
            assistant_start="",
            end_of_turn="</s>",
            stop_tokens=("</s>",),
            has_system=False,
            system_fold="<<SYS>>\n{system}\n<</SYS>>\n\n",
            response_prefix=" ",
        ),
        ChatFamily(name="deepseek-llm", **_DEEPSEEK_PLAIN),
        ChatFamily(name="deepseek-v2", **_DEEPSEEK_PLAIN),
        # DeepSeek-V3 tokenizer_config.json chat template: system text right after BOS, no separators.
        ChatFamily(
            name="deepseek-v3",
            bos="<｜begin▁of▁sentence｜>",
            system_start="",
            system_end="",
            user_start="<｜User｜>",
            user_end="",
            assistant_start="<｜Assistant｜>",
            end_of_turn="<｜end▁of▁sentence｜>",
            stop_tokens=("<｜end▁of▁sentence｜>",),
            unused_special=r"<｜place▁holder▁no▁\d+｜>",
            signature=("<｜User｜>", "<｜Assistant｜>"),
        ),
        # deepseek-coder-*-instruct template ("### Instruction:" / "### Response:", <|EOT|>); listed after
        # deepseek-v3, whose tokenizer also holds <|EOT|>, because detection tries families in this order.
        ChatFamily(
            name="deepseek-coder",
            bos="<｜begin▁of▁sentence｜>",
            system_start="",
            system_end="\n",
            user_start="### Instruction:\n",
            user_end="\n",
            assistant_start="### Response:\n",
            end_of_turn="<|EOT|>",
            after_turn="\n",
            stop_tokens=("<|EOT|>", "<｜end▁of▁sentence｜>"),
            signature=("<|EOT|>",),
        ),
    ]
}


def get_family(name: str | ChatFamily) -> ChatFamily:
    """The `ChatFamily` called `name` (a ChatFamily passes through); an unknown name lists the known ones."""
    if isinstance(name, ChatFamily):
        return name
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown chat family {name!r}; known: {', '.join(FAMILIES)}") from None


def detect_family(tokenizer: PreTrainedTokenizerBase) -> ChatFamily:
    """The chat family of a tokenizer, read from its special tokens (never from its Python class).

    Families whose tokenizers share every special (deepseek-llm and deepseek-v2, same BPE and format) resolve to the
    one whose tokenizer ships a chat template when the tokenizer has one.
    """
    vocab = tokenizer.get_vocab()
    for family in FAMILIES.values():
        if family.signature and all(token in vocab for token in family.signature):
            return family
    if "<｜begin▁of▁sentence｜>" in vocab:
        return FAMILIES["deepseek-v2" if tokenizer.chat_template else "deepseek-llm"]
    if "<s>" in vocab and "</s>" in vocab:
        return FAMILIES["llama2"]
    specials = ", ".join(sorted(tokenizer.all_special_tokens)[:12])
    raise ValueError(
        f"cannot tell the chat family of this tokenizer from its special tokens ({specials}); "
        f"pass one of {', '.join(FAMILIES)} explicitly"
    )
