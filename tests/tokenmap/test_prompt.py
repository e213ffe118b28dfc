"""build_asr_prompt and build_chat_template against the reference prompt, shipped and published templates."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from tests.conftest import real_tokenizer
from tokenmap.families import FAMILIES
from tokenmap.markers import resolve_speech_markers
from tokenmap.prompt import (
    DEFAULT_SYSTEM,
    IGNORE_INDEX,
    AsrPromptBuilder,
    AsrTask,
    PromptToken,
    build_asr_prompt,
    build_chat_template,
    language_name,
    prompt_html,
    prompt_tokens,
    refuse_control_text,
)

FIXTURES = Path(__file__).parent.parent / "fixtures"
CHECKPOINT_TEMPLATE = (FIXTURES / "fun_asr_nano_chat_template.jinja").read_text()
# family -> the tokenmap source name of a real tokenizer of that family
FAMILY_TOKENIZER = {name: name for name in FAMILIES}
N = 5
TASKS = [
    AsrTask(),
    AsrTask(language="zh"),
    AsrTask(language="en", itn=False),
    AsrTask(hotwords=("Fun-ASR", "通义")),
    AsrTask(language="ja", hotwords=("東京",), context=("会议记录",)),
]


def reference_user_text(task: AsrTask) -> str:
    """The user prompt of funasr's FunASRNano (model.py get_prompt), written out independently."""
    names = {"zh": "中文", "en": "英文", "ja": "日文"}
    text = ""
    if task.hotwords or task.context:
        text = (
            "请结合上下文信息，更加准确地完成语音转写任务。如果没有相关信息，我们会留空。\n\n\n**上下文信息：**\n\n\n"
        )
        text += "".join(c + "\n" for c in task.context)
        if task.hotwords:
            text += "热词列表：[" + ", ".join(task.hotwords) + "]\n"
    text += "语音转写" + ("成" + names[task.language] if task.language else "")
    return text + ("，不进行文本规整" if not task.itn else "") + "："


def markers_for(tok, family: str):
    try:
        return resolve_speech_markers(tok, "reuse", family=family)
    except ValueError:
        return resolve_speech_markers(tok, "add", family=family)


@pytest.mark.parametrize("task", TASKS, ids=range(len(TASKS)))
def test_qwen3_reproduces_reference_prompt(task: AsrTask):
    tok = real_tokenizer("qwen3")
    prompt = build_asr_prompt(tok, N, task, target="今天天气不错。")
    before = f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\n{reference_user_text(task)}"
    after = "<|im_end|>\n<|im_start|>assistant\n"
    enc = lambda s: tok(s, add_special_tokens=False).input_ids  # noqa: E731
    expected_prompt = enc(before) + [151646] * N + enc(after)
    expected_target = enc("今天天气不错。") + [151645]
    assert prompt.input_ids == expected_prompt + expected_target
    assert prompt.labels == [IGNORE_INDEX] * len(expected_prompt) + expected_target
    assert prompt.audio_start == len(enc(before)) and prompt.audio_length == N
    assert prompt.prompt_length == len(expected_prompt)


def test_qwen3_non_thinking_adds_empty_think_block():
    tok = real_tokenizer("qwen3")
    plain = build_asr_prompt(tok, N, target="好")
    thinking_off = build_asr_prompt(tok, N, target="好", enable_thinking=False)
    think = tok("<think>\n\n</think>\n\n", add_special_tokens=False).input_ids
    assert (
        thinking_off.input_ids
        == plain.input_ids[: plain.prompt_length] + think + plain.input_ids[plain.prompt_length :]
    )


def render(tok, template: str, messages: list[dict], **kwargs) -> str:
    return tok.apply_chat_template(messages, chat_template=template, tokenize=False, **kwargs)


CONVERSATIONS = [
    [{"role": "user", "content": [{"type": "audio"}]}],
    [{"role": "user", "content": [{"type": "audio"}, {"type": "language", "language": "英文"}]}],
    [
        {"role": "system", "content": "You transcribe meetings."},
        {
            "role": "user",
            "content": [
                {"type": "audio"},
                {"type": "text", "text": "议程"},
                {"type": "keywords", "keywords": ["a", "b"]},
            ],
        },
    ],
    [
        {
            "role": "user",
            "content": [
                {"type": "audio"},
                {"type": "keywords", "keywords": ["x"]},
                {"type": "keywords", "keywords": ["y"]},
            ],
        }
    ],
    [{"role": "user", "content": [{"type": "audio"}, {"type": "audio"}]}],
    [{"role": "user", "content": "plain text"}, {"role": "assistant", "content": "answer"}],
    [{"role": "assistant", "content": [{"type": "text", "text": "t"}, {"type": "audio"}]}],
]


@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=range(len(CONVERSATIONS)))
@pytest.mark.parametrize("generation", [True, False])
def test_qwen3_template_renders_like_the_converted_checkpoint(conversation, generation):
    tok = real_tokenizer("qwen3")
    ours = render(tok, build_chat_template("qwen3"), conversation, add_generation_prompt=generation)
    theirs = render(tok, CHECKPOINT_TEMPLATE, conversation, add_generation_prompt=generation)
    assert ours == theirs


@pytest.mark.parametrize("family", ["qwen3", "deepseek-v2", "deepseek-v3"])
@pytest.mark.parametrize("task", TASKS[:3], ids=range(3))
def test_prompt_equals_the_tokenizers_own_template(family: str, task: AsrTask):
    tok = real_tokenizer(FAMILY_TOKENIZER[family])
    assert tok.chat_template, f"{family} tokenizer ships a chat template"
    markers = markers_for(tok, family)
    prompt = build_asr_prompt(tok, 1, task, family=family, markers=markers)
    messages = [
        {"role": "system", "content": DEFAULT_SYSTEM},
        {"role": "user", "content": reference_user_text(task) + markers.audio_span},
    ]
    own = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert prompt.input_ids == list(own)


def test_deepseek_v2_answer_turn_equals_its_own_template():
    tok = real_tokenizer("deepseek-v2")
    markers = markers_for(tok, "deepseek-v2")
    prompt = build_asr_prompt(tok, 1, target="hello world", family="deepseek-v2", markers=markers)
    messages = [
        {"role": "system", "content": DEFAULT_SYSTEM},
        {"role": "user", "content": reference_user_text(AsrTask()) + markers.audio_span},
        {"role": "assistant", "content": "hello world"},
    ]
    assert prompt.input_ids == list(tok.apply_chat_template(messages, tokenize=True, return_dict=False))


# Published templates of families whose available tokenizer files ship none (meta-llama/Meta-Llama-3-8B-Instruct and
# google/gemma-2-9b-it tokenizer_config.json).
LLAMA3_PUBLISHED = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
GEMMA2_PUBLISHED = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)


@pytest.mark.parametrize("task", TASKS, ids=range(len(TASKS)))
def test_llama3_prompt_follows_the_published_format(task: AsrTask):
    tok = real_tokenizer("llama3")
    markers = resolve_speech_markers(tok, "reuse")
    prompt = build_asr_prompt(tok, N, task, target="Hello there.", markers=markers)
    enc = lambda s: tok(s, add_special_tokens=False).input_ids  # noqa: E731
    user = enc(reference_user_text(task))
    expected = (
        [128000, 128006]
        + enc("system")
        + [128007, 271]
        + enc(DEFAULT_SYSTEM)
        + [128009]
        + [128006]
        + enc("user")
        + [128007, 271]
        + user
        + [markers.placeholder_id] * N
        + [128009]
        + [128006]
        + enc("assistant")
        + [128007, 271]
    )
    assert prompt.input_ids[: prompt.prompt_length] == expected
    assert prompt.input_ids[prompt.prompt_length :] == enc("Hello there.") + [128009]
    messages = [
        {"role": "system", "content": DEFAULT_SYSTEM},
        {"role": "user", "content": reference_user_text(task) + markers.placeholder},
        {"role": "assistant", "content": "Hello there."},
    ]
    published = tok.apply_chat_template(messages, chat_template=LLAMA3_PUBLISHED, tokenize=True, return_dict=False)
    single = build_asr_prompt(tok, 1, task, target="Hello there.", markers=markers)
    assert single.input_ids == list(published)


@pytest.mark.parametrize("task", TASKS, ids=range(len(TASKS)))
def test_gemma2_prompt_folds_system_into_user_turn_like_the_published_format(task: AsrTask):
    tok = real_tokenizer("gemma2")
    markers = resolve_speech_markers(tok, "reuse")
    prompt = build_asr_prompt(tok, 1, task, target="Hello there.", markers=markers)
    messages = [
        {"role": "user", "content": DEFAULT_SYSTEM + "\n\n" + reference_user_text(task) + markers.placeholder},
        {"role": "assistant", "content": "Hello there."},
    ]
    published = list(
        tok.apply_chat_template(messages, chat_template=GEMMA2_PUBLISHED, tokenize=True, return_dict=False)
    )
    assert published[:2] == [2, 106] and 107 in published
    # the published template closes the answer with "<end_of_turn>\n"; the supervised answer stops at <end_of_turn>
    assert prompt.input_ids == published[:-1]
    assert prompt.labels[-1] == 107


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_prompt_structure(family: str):
    tok = real_tokenizer(FAMILY_TOKENIZER[family])
    fam = FAMILIES[family]
    markers = markers_for(tok, family)
    prompt = build_asr_prompt(tok, N, AsrTask(language="en"), target="hi 你好", family=family, markers=markers)
    ids, labels = prompt.input_ids, prompt.labels
    assert len(ids) == len(labels)
    assert ids[prompt.audio_start : prompt.audio_start + N] == [markers.placeholder_id] * N
    assert ids.count(markers.placeholder_id) == N
    target = [i for i, label in zip(ids, labels) if label != IGNORE_INDEX]
    assert target == ids[prompt.prompt_length :]
    assert target[-1] == tok.convert_tokens_to_ids(fam.end_of_turn)
    assert "hi 你好" in tok.decode(target)
    if fam.bos:
        assert ids[0] == tok.convert_tokens_to_ids(fam.bos) and ids.count(ids[0]) == 1  # no double BOS


@pytest.mark.parametrize("family", list(FAMILIES))
def test_with_audio_length_equals_building_with_that_length(family: str):
    tok = real_tokenizer(FAMILY_TOKENIZER[family])
    markers = markers_for(tok, family)
    task = AsrTask(language="en", hotwords=("zoe",))
    one = build_asr_prompt(tok, 1, task, target="hi 你好", family=family, markers=markers)
    for n in (1, 2, 37):
        assert one.with_audio_length(n) == build_asr_prompt(
            tok, n, task, target="hi 你好", family=family, markers=markers
        )
    assert one.with_audio_length(37).with_audio_length(3) == one.with_audio_length(3)
    with pytest.raises(ValueError, match="n_audio_frames"):
        one.with_audio_length(0)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_chat_template_tokenizes_to_build_asr_prompt_ids(family: str):
    """What a processor does: render the template, expand the placeholder N times, tokenize."""
    tok = real_tokenizer(FAMILY_TOKENIZER[family])
    markers = markers_for(tok, family)
    template = build_chat_template(family, markers)
    task = AsrTask(language="zh", hotwords=("词",), itn=False)
    messages = [{"role": "system", "content": DEFAULT_SYSTEM}, {"role": "user", "content": task.user_content()}]
    text = render(tok, template, messages, add_generation_prompt=True).replace(
        markers.placeholder, markers.placeholder * N
    )
    ids = tok(text, add_special_tokens=False).input_ids
    assert ids == build_asr_prompt(tok, N, task, family=family, markers=markers).input_ids


# transcripts as a corpus has them, and the edges of a tokenizer's merges: spaces, digits, punctuation, CJK, emoji
BUILDER_TARGETS = [
    "wendy opened ninety three green lamps this morning", "there are 11 black pens.", " leading space",
    "trailing space ", "今天天气不错。", "mixed 中文 and English!", "a", "🙂 ok", "line\nbreak",
]  # fmt: skip


@pytest.mark.parametrize("family", list(FAMILIES))
def test_prompt_builder_gives_build_asr_prompts_ids(family: str):
    """The cached path (one rendering per task) against the uncached one, for every task, length and target."""
    tok = real_tokenizer(FAMILY_TOKENIZER[family])
    markers = markers_for(tok, family)
    build = AsrPromptBuilder(tok, family=family, markers=markers)
    for task in TASKS:
        for target in [*BUILDER_TARGETS, None]:
            for n in (1, 7):
                expected = build_asr_prompt(tok, n, task, target, family=family, markers=markers)
                assert build(n, task, target) == expected, (task, target, n)


def test_prompt_builder_with_a_processors_template():
    tok = real_tokenizer("llama3")
    markers = resolve_speech_markers(tok, "reuse", boundaries=True)
    placeholder_only = type(markers)(markers.placeholder, markers.placeholder_id)
    template = build_chat_template("llama3", markers)
    build = AsrPromptBuilder(tok, markers=placeholder_only, chat_template=template)
    for target in BUILDER_TARGETS:
        assert build(3, target=target) == build_asr_prompt(tok, 3, target=target, markers=markers)


def test_prompt_builder_refuses_a_target_spelling_a_control_token_first_or_later():
    tok = real_tokenizer("qwen3")
    build = AsrPromptBuilder(tok)
    with pytest.raises(ValueError, match="<\\|im_end\\|>"):
        build(1, target="a <|im_end|> b")  # the task's first prompt
    build(1, target="fine")
    with pytest.raises(ValueError, match="<\\|im_end\\|>"):
        build(1, target="a <|im_end|> b")  # from the cached renderings


def test_prompt_builder_refuses_a_template_that_rewrites_the_answer():
    """Its answer is not the target's text: encoding before + target + after would not be the template's ids."""
    tok = real_tokenizer("qwen3")
    before, _, after = build_chat_template("qwen3").rpartition("{{ text }}")  # the last one: the answer's
    template = before + "{{ text | upper }}" + after
    build = AsrPromptBuilder(tok, chat_template=template)
    with pytest.raises(RuntimeError, match="does not write the answer verbatim"):
        build(1, target="hello")


def test_boundary_markers_wrap_the_audio():
    tok = real_tokenizer("llama3")
    markers = resolve_speech_markers(tok, "reuse", boundaries=True)
    prompt = build_asr_prompt(tok, 3, markers=markers)
    span = prompt.input_ids[prompt.audio_start - 1 : prompt.audio_start + 4]
    assert span == [markers.start_id] + [markers.placeholder_id] * 3 + [markers.end_id]


@pytest.mark.parametrize(
    "kwargs",
    [dict(target="bad <|im_end|> text"), dict(task=AsrTask(hotwords=("<|im_start|>",))), dict(system="x<|endoftext|>")],
    ids=["target", "hotword", "system"],
)
def test_user_text_spelling_a_control_token_is_refused(kwargs):
    tok = real_tokenizer("qwen3")
    with pytest.raises(ValueError, match="special token"):
        build_asr_prompt(tok, 2, **kwargs)


def test_allowed_special_text_never_becomes_a_control_token():
    tok = real_tokenizer("qwen3")
    clean = build_asr_prompt(tok, 2, target="ok")
    sneaky = build_asr_prompt(tok, 2, target="<|im_end|>ok", allow_special_text=True)
    assert sneaky.input_ids.count(151645) == clean.input_ids.count(151645)
    assert tok.decode(sneaky.input_ids[sneaky.prompt_length :]) == "<|im_end|>ok<|im_end|>"


def test_deepseek_v3_role_markers_in_user_text_are_refused():
    tok = real_tokenizer("deepseek-v3")
    with pytest.raises(ValueError, match="<｜User｜>"):
        build_asr_prompt(tok, 2, target="<｜User｜>", markers=markers_for(tok, "deepseek-v3"))


def test_bad_arguments():
    tok = real_tokenizer("qwen3")
    with pytest.raises(ValueError, match="n_audio_frames"):
        build_asr_prompt(tok, 0)
    with pytest.raises(KeyError, match="known"):
        build_asr_prompt(tok, 1, family="vicuna")


def test_a_processors_template_with_boundaries_gives_the_same_ids():
    tok = real_tokenizer("llama3")
    markers = resolve_speech_markers(tok, "reuse", boundaries=True)
    placeholder_only = type(markers)(markers.placeholder, markers.placeholder_id)
    via_template = build_asr_prompt(
        tok, 3, target="x", markers=placeholder_only, chat_template=build_chat_template("llama3", markers)
    )
    assert via_template == build_asr_prompt(tok, 3, target="x", markers=markers)


@pytest.mark.parametrize(
    ("language", "name"), [("zh", "中文"), (" EN ", "英文"), ("Japanese", "日文"), ("中文", "中文")]
)
def test_language_codes_english_names_and_the_checkpoints_names_are_accepted(language, name):
    assert language_name(language) == name
    tok = real_tokenizer("qwen3")
    assert build_asr_prompt(tok, 1, AsrTask(language=language)) == build_asr_prompt(tok, 1, AsrTask(language=name))


@pytest.mark.parametrize("language", ["xx", "fr", "Cantonese", ""])
def test_an_unknown_language_fails_when_the_task_is_made_naming_the_known_ones(language):
    with pytest.raises(ValueError, match=f"unknown language {language!r}; known: zh, chinese, en, .*中文, 英文, 日文$"):
        AsrTask(language=language)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_prompt_tokens_label_each_turn_the_audio_and_the_answer(family):
    tokenizer = copy.deepcopy(real_tokenizer(FAMILY_TOKENIZER[family]))  # `add` markers mutate it
    markers = resolve_speech_markers(tokenizer, "reuse" if FAMILIES[family].unused_special else "add", family=family)
    task = AsrTask(language="en", hotwords=("Fun-ASR",))
    prompt = build_asr_prompt(tokenizer, N, task, "hello world", family=family, markers=markers)
    tokens = prompt_tokens(tokenizer, prompt, task, template=build_chat_template(family, markers))

    assert [t.id for t in tokens] == prompt.input_ids
    roles = [t.role for t in tokens]
    assert roles.count("audio") == N and roles.index("audio") == prompt.audio_start
    order = {"system": 0, "user": 1, "audio": 1, "assistant": 2, "target": 3}  # the turns in conversation order
    assert [order[r] for r in roles] == sorted(order[r] for r in roles)
    assert roles[prompt.audio_start - 1] == "user"  # the task text, then the audio, in the user turn
    target = [t for t in tokens if t.role == "target"]
    assert len(target) == sum(label != IGNORE_INDEX for label in prompt.labels)
    assert target[-1].special and target[-1].text == FAMILIES[family].end_of_turn  # the supervised end of turn
    assert "hello" in "".join(t.text for t in target) and not any(t.special for t in target[:-1])
    assert all(t.special for t in tokens if t.role == "audio")

    page = prompt_html(tokens)
    assert page.count("<small") == len(tokens) and "&lt;" in page  # every token boxed, markup escaped


def test_prompt_tokens_can_give_the_audio_as_one_run():
    tokenizer = real_tokenizer("qwen3")
    prompt = build_asr_prompt(tokenizer, N, family="qwen3")
    tokens = prompt_tokens(tokenizer, prompt, template=build_chat_template("qwen3"), merge_audio=True)
    [run] = [t for t in tokens if t.role == "audio"]
    assert (run.count, run.special, tokens.index(run)) == (N, True, prompt.audio_start)
    assert [t.id for t in tokens for _ in range(t.count)] == prompt.input_ids


def test_prompt_html_escapes_tokens_and_shows_ids_and_runs():
    tokens = [PromptToken(1, "<|im_start|>", "system", True), PromptToken(7, "\n", "system", False),
              PromptToken(9, "<unused0>", "audio", True, 17), PromptToken(3, " a", "target", False)]  # fmt: skip
    page = prompt_html(tokens)
    assert "&lt;|im_start|&gt;" in page and "<|im_start|>" not in page
    assert "\u21b5" in page and "\u00a0a" in page  # whitespace made visible
    assert "&lt;unused0&gt; \u00d717" in page and 'title="audio 9"' in page and ">9</small>" in page
    assert page.count("font-weight:bold") == 2  # the control tokens


def test_refuse_control_text_names_the_field_the_text_and_the_token():
    controls = ["<|im_start|>", "<|im_end|>"]
    refuse_control_text(controls, "hotword", ["im_end", "<|im"])  # near misses are text
    message = "hotword 'a<|im_end|>' contains the special token '<|im_end|>'; remove it, or pass allow_special_text"
    with pytest.raises(ValueError, match=re.escape(message)):
        refuse_control_text(controls, "hotword", ["ok", "a<|im_end|>"])
    with pytest.raises(ValueError, match=r"'<\|im_start\|>'; remove it$"):
        refuse_control_text(controls, "language", ["<|im_start|>"], suggest_allow_special_text=False)
