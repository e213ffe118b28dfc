"""The ASR prompt of Fun-ASR-Nano in any chat family, as a processor chat template and as training ids.

One source of truth: `build_chat_template(family, markers)` writes the Jinja chat template that a swapped model's
`FunAsrNanoProcessor` carries (the content items of the converted checkpoint's template: audio, text prompt,
keywords, language, plus `itn`), in the family's role format. `build_asr_prompt` renders that same template through
the tokenizer's own `apply_chat_template`, so training ids and inference prompts are token-identical by
construction; for qwen3 with the default system prompt the result is the reference Fun-ASR-Nano prompt.
"""

from __future__ import annotations

import dataclasses
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tokenmap.families import ChatFamily, detect_family, get_family
from tokenmap.markers import SpeechMarkers

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DEFAULT_SYSTEM = "You are a helpful assistant."
CONTEXT_PREAMBLE = (
    "请结合上下文信息，更加准确地完成语音转写任务。如果没有相关信息，我们会留空。\n\n\n**上下文信息：**\n\n\n"
)
TASK = "语音转写"
NO_ITN = "，不进行文本规整"
# The checkpoint was trained with these Chinese language names ("语音转写成<NAME>：").
LANGUAGE_NAMES = {"zh": "中文", "chinese": "中文", "en": "英文", "english": "英文", "ja": "日文", "japanese": "日文"}
QWEN3_PLACEHOLDER = "<|object_ref_start|>"
IGNORE_INDEX = -100


def language_name(language: str) -> str:
    """The checkpoint's name for a language: a code or English name of `LANGUAGE_NAMES` (any case), or one of the
    checkpoint's own names (中文, 英文, 日文). Any other language is a ValueError listing the known ones: the model
    was never trained to transcribe into it."""
    key = language.strip().lower()
    if key in LANGUAGE_NAMES:
        return LANGUAGE_NAMES[key]
    if key in LANGUAGE_NAMES.values():
        return key
    known = [*LANGUAGE_NAMES, *dict.fromkeys(LANGUAGE_NAMES.values())]
    raise ValueError(f"unknown language {language!r}; known: {', '.join(known)}")


@dataclass(frozen=True)
class AsrTask:
    """What the user turn asks for: plain transcription, into a language, without ITN, with hotwords/context."""

    language: str | None = None
    itn: bool = True
    hotwords: tuple[str, ...] = ()
    context: tuple[str, ...] = ()  # free-text context prompts (the checkpoint's "text" items)

    def __post_init__(self) -> None:
        if self.language is not None:
            language_name(self.language)  # an unknown language fails here, before any prompt is built

    def user_content(self) -> list[dict]:
        """The user message's content items, in the order `apply_transcription_request` builds them."""
        items: list[dict] = [{"type": "audio"}]
        items += [{"type": "text", "text": text} for text in self.context]
        if self.hotwords:
            items.append({"type": "keywords", "keywords": list(self.hotwords)})
        if self.language is not None:
            items.append({"type": "language", "language": language_name(self.language)})
        if not self.itn:
            items.append({"type": "itn", "itn": False})
        return items


@dataclass(frozen=True)
class AsrPrompt:
    """Token ids of one ASR example: prompt (+ target), labels, and where the audio frames go."""

    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on the prompt and audio; the target text and end-of-turn token supervised
    audio_start: int  # index of the first audio placeholder
    audio_length: int  # number of placeholders = adaptor frames

    @property
    def prompt_length(self) -> int:
        return next((i for i, label in enumerate(self.labels) if label != IGNORE_INDEX), len(self.labels))

    def with_audio_length(self, n_audio_frames: int) -> AsrPrompt:
        """The same example with `n_audio_frames` audio placeholders: what `build_asr_prompt` returns for that
        count (the placeholder is a special token, so the text around it tokenizes alike)."""
        if n_audio_frames < 1:
            raise ValueError(f"n_audio_frames must be >= 1, got {n_audio_frames}")
        start, end = self.audio_start, self.audio_start + self.audio_length
        ids = self.input_ids[:start] + [self.input_ids[start]] * n_audio_frames + self.input_ids[end:]
        labels = self.labels[:start] + [IGNORE_INDEX] * n_audio_frames + self.labels[end:]
        return AsrPrompt(ids, labels, start, n_audio_frames)


def _lit(text: str) -> str:
    """A Jinja expression that outputs `text` verbatim."""
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}" if text else ""


def build_chat_template(family: str | ChatFamily, markers: SpeechMarkers | str | None = None) -> str:
    """The Jinja chat template of a swapped model's processor, in `family`'s role format.

    `markers` gives the audio item's text (a `SpeechMarkers`, or the placeholder token itself); the default is the
    Qwen3 base's `<|object_ref_start|>`. For qwen3 the template renders exactly what the converted Fun-ASR-Nano
    checkpoint's template renders.
    """
    fam = get_family(family)
    audio = _lit(markers.audio_span if isinstance(markers, SpeechMarkers) else (markers or QWEN3_PLACEHOLDER))
    fold_before, _, fold_after = fam.system_fold.partition("{system}")
    think = ""
    if fam.think_block:  # Qwen3 non-thinking mode writes an empty think block at the start of the answer
        think = (
            "{%- if enable_thinking is defined and enable_thinking is false -%}"
            + _lit(fam.think_block)
            + "{%- endif -%}"
        )
    if fam.has_system:
        system_turn = _lit(fam.system_start) + "{{ text }}" + _lit(fam.system_end)
        default_system = _lit(fam.system_start + DEFAULT_SYSTEM + fam.system_end)
    else:  # the family has no system role: keep the text for the first user turn
        system_turn = "{% set ns.system = text %}"
        default_system = "{% set ns.system = " + json.dumps(DEFAULT_SYSTEM) + " %}"
    parts = [
        "{%- macro render(message) -%}",
        "{%- if message['content'] is string -%}{{ message['content'] }}",
        "{%- else -%}",
        "{%- set audio_items = message['content'] | selectattr('type', 'equalto', 'audio') | list -%}",
        "{%- if message['role'] == 'user' and audio_items -%}",
        "{%- set text_items = message['content'] | selectattr('type', 'equalto', 'text') | list -%}",
        "{%- set keyword_items = message['content'] | selectattr('type', 'equalto', 'keywords') | list -%}",
        "{%- set language_items = message['content'] | selectattr('type', 'equalto', 'language') | list -%}",
        "{%- set itn_items = message['content'] | selectattr('type', 'equalto', 'itn') | list -%}",
        "{%- if text_items or keyword_items -%}" + _lit(CONTEXT_PREAMBLE),
        "{%- for item in text_items -%}{{ item['text'] }}" + _lit("\n") + "{%- endfor -%}",
        "{%- set kw = namespace(items=[]) -%}",
        "{%- for item in keyword_items -%}{%- set kw.items = kw.items + item['keywords'] -%}{%- endfor -%}",
        "{%- if kw.items -%}" + _lit("热词列表：[") + "{{ kw.items | join(', ') }}" + _lit("]\n") + "{%- endif -%}",
        "{%- endif -%}",
        _lit(TASK) + "{%- if language_items -%}" + _lit("成") + "{{ language_items[0]['language'] }}{%- endif -%}",
        "{%- if itn_items and itn_items[0]['itn'] is false -%}" + _lit(NO_ITN) + "{%- endif -%}" + _lit("："),
        "{%- for item in audio_items -%}" + audio + "{%- endfor -%}",
        "{%- else -%}",
        "{%- for item in message['content'] -%}",
        "{%- if item['type'] == 'audio' -%}" + audio,
        "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}",
        "{%- endfor -%}",
        "{%- endif -%}",
        "{%- endif -%}",
        "{%- endmacro -%}",
        _lit(fam.bos or ""),
        "{%- set ns = namespace(system=none) -%}",
        "{%- for message in messages -%}",
        "{%- if loop.first and message['role'] != 'system' -%}" + default_system + "{%- endif -%}",
        "{%- set text = render(message) -%}",
        "{%- if message['role'] == 'system' -%}" + system_turn,
        "{%- elif message['role'] == 'user' -%}" + _lit(fam.user_start),
        "{%- if ns.system is not none -%}"
        + _lit(fold_before)
        + "{{ ns.system }}"
        + _lit(fold_after)
        + "{%- set ns.system = none -%}{%- endif -%}",
        "{{ text }}" + _lit(fam.user_end),
        "{%- elif message['role'] == 'assistant' -%}" + _lit(fam.assistant_start) + think,
        _lit(fam.response_prefix) + "{{ text }}" + _lit(fam.end_of_turn + fam.after_turn),
        "{%- else -%}{{ raise_exception('unsupported role ' + message['role'] + ' (system, user, assistant)') }}",
        "{%- endif -%}",
        "{%- endfor -%}",
        "{%- if add_generation_prompt -%}" + _lit(fam.assistant_start) + think + "{%- endif -%}",
    ]
    return "".join(parts)


def control_tokens(tokenizer: PreTrainedTokenizerBase, template: str) -> list[str]:
    """The tokens that must not come from user text: the special tokens, and the added tokens the template writes
    (DeepSeek-V3's `<｜User｜>` is not flagged special but is a role marker)."""
    added = tokenizer.added_tokens_decoder.values()
    found = set(tokenizer.all_special_tokens) | {
        str(t.content) for t in added if t.special or str(t.content) in template
    }
    return sorted((token for token in found if token.strip()), key=len, reverse=True)


def check_user_text(tokenizer: PreTrainedTokenizerBase, template: str, field: str, texts: Sequence[str]) -> None:
    """Refuse user text that spells a control token (tiktoken style): it would read as a role or speech marker.

    Raises ValueError naming the field and the token. Its callers (`transcribe`, manifests, the server) have no
    `allow_special_text`, so the message does not suggest it; `build_asr_prompt` does.
    """
    refuse_control_text(control_tokens(tokenizer, template), field, texts, suggest_allow_special_text=False)


def refuse_control_text(
    controls: Sequence[str], field: str, texts: Sequence[str], *, suggest_allow_special_text: bool = True
) -> None:
    """The control-token refusal, for every prompt that user text goes into (training, `transcribe`, the edge
    runtime, which keeps `controls` in its edge.json rather than a tokenizer): ValueError naming `field`, the text
    and the first of `controls` (`control_tokens`) it spells. With `suggest_allow_special_text` the message says how to
    encode such text as ordinary characters (`allow_special_text=True`), where the caller can."""
    for text in texts:
        if (special := spelled_control_token(text, controls)) is not None:
            how = (
                ", or pass allow_special_text=True to encode it as ordinary text (it never becomes a control token)"
                if suggest_allow_special_text
                else ""
            )
            raise ValueError(f"{field} {text!r} contains the special token {special!r}; remove it{how}")


def spelled_control_token(text: str, controls: Sequence[str]) -> str | None:
    """The first of `controls` (`control_tokens`, longest first) that `text` spells, or None: a tokenizer would
    read that part of `text` as the control token, not as characters."""
    return next((token for token in controls if token in text), None)


def _render_ids(tokenizer: PreTrainedTokenizerBase, template: str, messages: list[dict], **kwargs) -> list[int]:
    ids = tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=True, return_dict=False, sanitize_control_tokens=True, **kwargs
    )
    return list(ids)


def build_asr_prompt(
    tokenizer: PreTrainedTokenizerBase,
    n_audio_frames: int,
    task: AsrTask = AsrTask(),
    target: str | None = None,
    *,
    family: str | ChatFamily | None = None,
    markers: SpeechMarkers | None = None,
    system: str = DEFAULT_SYSTEM,
    enable_thinking: bool | None = None,
    allow_special_text: bool = False,
    chat_template: str | None = None,
) -> AsrPrompt:
    """Input ids, labels and the audio slot of one ASR example in `family`'s format (detected when None).

    The prompt is the family's chat template (`build_chat_template`) rendered with a system turn, the user turn of
    `task` and the generation prompt; its single audio item is expanded to `n_audio_frames` placeholder ids (one per
    adaptor frame). With `target`, the answer and the end-of-turn token are appended and supervised; everything
    before is IGNORE_INDEX. `enable_thinking=False` adds Qwen3's empty think block (the reference prompt has none).
    `chat_template` renders with a given template instead (a processor's `chat_template`, which already holds its
    speech markers); `markers` then only needs the placeholder.
    """
    if n_audio_frames < 1:
        raise ValueError(f"n_audio_frames must be >= 1, got {n_audio_frames}")
    fam = get_family(family) if family is not None else detect_family(tokenizer)
    placeholder = markers.placeholder if markers is not None else QWEN3_PLACEHOLDER
    placeholder_id = tokenizer.convert_tokens_to_ids(placeholder)
    template = chat_template or build_chat_template(fam, markers if markers is not None else placeholder)
    if not allow_special_text:
        controls = control_tokens(tokenizer, template)  # once: it reads every added token (Gemma-2: thousands)
        for field, texts in (("system prompt", [system]), ("context", task.context), ("hotword", task.hotwords),
                             ("target text", [] if target is None else [target])):  # fmt: skip
            refuse_control_text(controls, field, texts)
    messages = [{"role": "system", "content": system}, {"role": "user", "content": task.user_content()}]
    extra = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    prompt = _render_ids(tokenizer, template, messages, add_generation_prompt=True, **extra)
    if prompt.count(placeholder_id) != 1:
        raise ValueError(
            f"the {fam.name} prompt holds {prompt.count(placeholder_id)} audio placeholders "
            f"{placeholder!r} (id {placeholder_id}), expected 1: is it a single token of this tokenizer?"
        )
    target_ids: list[int] = []
    if target is not None:
        full = _render_ids(tokenizer, template, messages + [{"role": "assistant", "content": target}], **extra)
        end_id = tokenizer.convert_tokens_to_ids(fam.end_of_turn)
        if full[: len(prompt)] != prompt or end_id not in full[len(prompt) :]:
            raise RuntimeError(f"the {fam.name} template's answer turn does not extend its generation prompt")
        answer = full[len(prompt) :]
        target_ids = answer[: answer.index(end_id) + 1]
    labels = [IGNORE_INDEX] * len(prompt) + target_ids
    return AsrPrompt(prompt + target_ids, labels, prompt.index(placeholder_id), 1).with_audio_length(n_audio_frames)


# Stands in for the answer when a conversation is rendered once per task (`AsrPromptBuilder`): text no target holds.
_ANSWER_STAND_IN = "\ue000answer\ue001"


class AsrPromptBuilder:
    """`build_asr_prompt` for many targets of one tokenizer, family and template: the same ids, rendered once per
    task instead of twice per example. What it saves: 2-7 ms a prompt by family (Gemma-2 most: its thousands of
    added tokens are read for every rendering), 25 s of a 3,600-transcript corpus.

    Per task it keeps the generation prompt's ids and the whole conversation rendered around a stand-in answer, cut
    there into the text before and after the answer. A target's ids are then the tokenizer's encoding of
    before + target + after, which is what `apply_chat_template` tokenizes for a target that spells no control
    token (one that does is refused here as there). A template that rewrites the answer (trims it, say) would not
    keep the stand-in verbatim: the first target of each task is also built by `build_asr_prompt`, and a
    difference is a RuntimeError. The tokenizer must not change (no tokens added) while the builder is in use.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        family: str | ChatFamily | None = None,
        markers: SpeechMarkers | None = None,
        system: str = DEFAULT_SYSTEM,
        chat_template: str | None = None,
    ):
        self.tokenizer = tokenizer
        self.family = get_family(family) if family is not None else detect_family(tokenizer)
        self.markers = markers
        self.system = system
        self.chat_template = chat_template
        placeholder = markers.placeholder if markers is not None else QWEN3_PLACEHOLDER
        self.template = chat_template or build_chat_template(
            self.family, markers if markers is not None else placeholder
        )
        self.controls = control_tokens(tokenizer, self.template)  # once: it reads every added token
        # task -> (its prompt with one audio frame, the text before and after the answer)
        self._tasks: dict[AsrTask, tuple[AsrPrompt, str, str]] = {}

    def __call__(self, n_audio_frames: int, task: AsrTask = AsrTask(), target: str | None = None) -> AsrPrompt:
        """What `build_asr_prompt(tokenizer, n_audio_frames, task, target, ...)` returns with this builder's
        family, markers, system prompt and template."""
        if task not in self._tasks:
            return self._first(n_audio_frames, task, target)
        prompt, before, after = self._tasks[task]
        if target is None:
            return prompt.with_audio_length(n_audio_frames)
        refuse_control_text(self.controls, "target text", [target])
        return self._with_target(prompt, before, after, target).with_audio_length(n_audio_frames)

    def _build(self, n_audio_frames: int, task: AsrTask, target: str | None) -> AsrPrompt:
        return build_asr_prompt(
            self.tokenizer, n_audio_frames, task, target, family=self.family, markers=self.markers,
            system=self.system, chat_template=self.chat_template,
        )  # fmt: skip

    def _first(self, n_audio_frames: int, task: AsrTask, target: str | None) -> AsrPrompt:
        """The task's first prompt, built by `build_asr_prompt` (which checks the task's text); its renderings kept."""
        built = self._build(n_audio_frames, task, target)
        prompt = self._build(1, task, None)
        messages = [
            {"role": "system", "content": self.system}, {"role": "user", "content": task.user_content()},
            {"role": "assistant", "content": _ANSWER_STAND_IN},
        ]  # fmt: skip
        rendered = self.tokenizer.apply_chat_template(messages, chat_template=self.template, tokenize=False)
        if rendered.count(_ANSWER_STAND_IN) != 1:
            raise RuntimeError(f"the {self.family.name} template does not write the answer verbatim once")
        before, after = rendered.split(_ANSWER_STAND_IN)
        if (
            target is not None
            and self._with_target(prompt, before, after, target).with_audio_length(n_audio_frames) != built
        ):
            raise RuntimeError(f"the {self.family.name} template's answer does not tokenize as its text alone")
        self._tasks[task] = (prompt, before, after)
        return built

    def _with_target(self, prompt: AsrPrompt, before: str, after: str, target: str) -> AsrPrompt:
        """`prompt` (one audio frame) with `target`'s answer ids and end of turn appended and supervised."""
        full = self.tokenizer.encode(before + target + after, add_special_tokens=False)
        end_id = self.tokenizer.convert_tokens_to_ids(self.family.end_of_turn)
        n = len(prompt.input_ids)
        if full[:n] != prompt.input_ids or end_id not in full[n:]:
            raise RuntimeError(f"the {self.family.name} template's answer turn does not extend its generation prompt")
        answer = full[n:]
        target_ids = answer[: answer.index(end_id) + 1]
        return AsrPrompt(prompt.input_ids + target_ids, prompt.labels + target_ids, prompt.audio_start, 1)


# The parts of a rendered ASR prompt (`prompt_tokens`) and the colour each is shown in (the CLI and notebooks).
ROLE_COLOURS = {
    "system": "#c6e2ff", "user": "#c8f0c8", "audio": "#f5c6f5", "assistant": "#fff1b8", "target": "#ffd27f",
}  # fmt: skip


@dataclass(frozen=True)
class PromptToken:
    """One token of a rendered ASR prompt: its id and text, the part of the conversation it belongs to (a key of
    `ROLE_COLOURS`), whether it is a control token (`control_tokens`: role and speech markers, end of turn...), and
    how many times it repeats (the audio placeholder's run, with `prompt_tokens(merge_audio=True)`)."""

    id: int
    text: str
    role: str
    special: bool
    count: int = 1


def prompt_tokens(
    tokenizer: PreTrainedTokenizerBase,
    prompt: AsrPrompt,
    task: AsrTask = AsrTask(),
    *,
    template: str,
    system: str = DEFAULT_SYSTEM,
    merge_audio: bool = False,
) -> list[PromptToken]:
    """The tokens of `prompt` (built by `build_asr_prompt` from `task`, `system` and the chat `template`), each with
    its role: the template renders prefixes of the conversation to prefixes of the ids, so the system and user
    turns end where their renderings end; the audio placeholders are "audio", the answer "target". `merge_audio`
    gives the audio placeholders as one token with their count (a clip of seconds has dozens)."""
    system_turn = [{"role": "system", "content": system}]
    user_turn = system_turn + [{"role": "user", "content": task.user_content()}]
    ends = [
        (len(_render_ids(tokenizer, template, system_turn)), "system"),
        (len(_render_ids(tokenizer, template, user_turn)) + prompt.audio_length - 1, "user"),
        (prompt.prompt_length, "assistant"),
    ]
    special = set(tokenizer.convert_tokens_to_ids(control_tokens(tokenizer, template)))
    audio = range(prompt.audio_start, prompt.audio_start + prompt.audio_length)
    tokens = []
    for index, token_id in enumerate(prompt.input_ids):
        role = "audio" if index in audio else next((name for end, name in ends if index < end), "target")
        tokens.append(PromptToken(token_id, tokenizer.decode([token_id]), role, token_id in special))
    if merge_audio:
        audio_run = dataclasses.replace(tokens[prompt.audio_start], count=prompt.audio_length)
        tokens[audio.start : audio.stop] = [audio_run]
    return tokens


def prompt_html(tokens: Sequence[PromptToken]) -> str:
    """`tokens` as HTML: one box per token coloured by role, its id beneath (and the repeat count of a run), special
    tokens in bold; a legend."""
    legend = " ".join(
        f'<span style="background:{colour};padding:1px 4px;border-radius:3px">{role}</span>'
        for role, colour in ROLE_COLOURS.items()
    )
    boxes = []
    for token in tokens:
        text = html.escape(token.text).replace("\n", "\u21b5").replace(" ", "\u00a0") or "&nbsp;"
        text += f" \u00d7{token.count}" if token.count > 1 else ""
        weight = "bold" if token.special else "normal"
        boxes.append(
            f'<span style="display:inline-block;text-align:center;margin:1px;padding:1px 3px;border-radius:3px;'
            f'background:{ROLE_COLOURS[token.role]};font-family:monospace;font-weight:{weight}" '
            f'title="{token.role} {token.id}">{text}<br><small style="color:#555">{token.id}</small></span>'
        )
    return f'<div>{legend}</div><div style="line-height:2.2">{"".join(boxes)}</div>'
