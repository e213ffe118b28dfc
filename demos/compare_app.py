"""The comparison page: one clip through every model side by side, and each model's ASR prompt token by token.

`build_app` lays out the page over models loaded once (`demos.models.load_models`) and optional example clips;
`launch` serves it with the limits of `DemoConfig`: bound to 127.0.0.1, uploads capped (`max_file_size`) and
audio too (`max_audio_seconds`), a bounded queue running one comparison at a time, no `allowed_paths` (Gradio
serves only the files it wrote into the temp folder: uploads and the examples' copies), monitoring, run history, MCP
and server-side rendering off. Every upload and cached file goes to one temp folder (`GRADIO_TEMP_DIR`), removed when
the process exits unless the config named it. A model with an edge export (`demos.models`) gets a second column,
"edge": the export's transcript, latency and RTF, and whether it equals PyTorch's. Bad input
(no audio, not audio, empty, too long) and models that failed to load give a message in the page, never a
traceback; the server keeps serving. `funasr-swap demo` starts it.
"""

from __future__ import annotations

import os

# before Gradio is imported: it would otherwise report usage to its servers (and wait on an unreachable network)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import atexit  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import html  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Mapping, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402

from demos.compare import DIFF_LABELS, EdgeResult, ModelResult, compare_models, ranking  # noqa: E402
from demos.config import DemoConfig  # noqa: E402
from demos.models import DemoModel  # noqa: E402
from demos.prompt_view import model_prompt_tokens  # noqa: E402
from funasr_swap.data import Utterance  # noqa: E402
from funasr_swap.errors import SettingError  # noqa: E402
from tokenmap.prompt import prompt_html  # noqa: E402

__all__ = [
    "RANKING_HEADERS", "build_app", "check_port", "compare_clip", "launch", "read_examples", "read_input", "serve",
    "use_temp_dir",
]  # fmt: skip

RANKING_HEADERS = ["rank", "model", "CER %", "latency s", "RTF"]
NO_AUDIO = "Upload a file, record from the microphone or pick an example first."


def use_temp_dir(config: DemoConfig) -> Path:
    """The folder for every file Gradio writes (uploads, recordings, the examples' copies): `config.temp_dir`, or a
    new folder in the system's temp, removed with what it holds when the process exits (uploads are people's audio).
    Gradio reads it from the environment when a page is built and at each upload, so it is set there for this
    process."""
    if config.temp_dir is not None:
        folder = Path(config.temp_dir)
    else:
        folder = Path(tempfile.mkdtemp(prefix="funasr-swap-demo-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(folder.resolve())
    os.environ["GRADIO_EXAMPLES_CACHE"] = str((folder / "examples").resolve())
    return folder


def read_input(path: str | None, sampling_rate: int, max_seconds: float) -> tuple[np.ndarray | None, str]:
    """(the audio at `path` as a mono waveform at `sampling_rate`, "") or (None, the message that says why not):
    nothing given, not readable as audio, empty, or longer than `max_seconds`."""
    from funasr_swap.audio import load_audio

    if not path:
        return None, NO_AUDIO
    name = Path(path).name
    try:
        waveform = load_audio(path, sampling_rate)
    except (ValueError, FileNotFoundError) as error:  # the message names the temp path: show the file's name
        reason = str(error).replace(str(path), name).rstrip(".")  # soundfile's reasons end with one
        return None, f"**{name}** cannot be used: {reason}."
    seconds = len(waveform) / sampling_rate
    if seconds > max_seconds:
        return None, f"**{name}** is {seconds:.1f} s long; this demo takes at most {max_seconds:g} s: cut it shorter."
    return waveform, ""


def _stats(result: ModelResult) -> str:
    if result.error is not None:
        return f"**error:** {html.escape(result.error)}"
    parts = [f"latency {result.latency:.2f} s", f"RTF {result.rtf:.3f}"]
    if result.cer is not None:
        parts.append(f"CER {result.cer:.1%}")
    return " · ".join(parts)


def _edge_stats(result: EdgeResult) -> str:
    if result.error is not None:
        return f"**error:** {html.escape(result.error)}"
    same = "equals PyTorch's ✓" if result.equal else "differs from PyTorch's ✗"
    return f"latency {result.latency:.2f} s · RTF {result.rtf:.3f} · {same}"


def _edge_card_markdown(model: DemoModel) -> str:
    title = f"### {html.escape(model.name)} · edge\n"
    if model.edge is None:
        return f"{title}**could not load** `{model.edge_folder}`: {html.escape(model.edge_error or '')}"
    config = model.edge.config
    return f"{title}`funasr_swap.edge` (llama.cpp, {config.outtype}) from `{model.edge_folder}`"


def _card_markdown(model: DemoModel) -> str:
    if not model.loaded:
        return f"### {html.escape(model.name)}\n**could not load** `{model.folder}`: {html.escape(model.error)}"
    return f"### {html.escape(model.name)}\n{model.card.to_markdown()}"


def _prompt_section(model: DemoModel) -> str:
    title = f"<h3>{html.escape(model.name)}</h3>"
    if not model.loaded:
        return f"{title}<p>not loaded</p>"
    try:
        tokens = model_prompt_tokens(model.processor)
    except ValueError as error:  # a tokenizer of no known chat family: its markers cannot be told apart
        return f"{title}<p>{html.escape(str(error))}</p>"
    return f"{title}<p>{sum(t.count for t in tokens)} tokens for 1 s of audio</p>{prompt_html(tokens)}"


def compare_clip(
    models: Sequence[DemoModel], config: DemoConfig, audio: str | None, reference: str, selected: list[str] | None
) -> list:
    """The page's outputs for one press of Compare: the message (empty when all went well), the ranking rows, the
    results by model name (text, latency, rtf, cer, error, and edge: text, latency, rtf, equal, error), then for
    each of `models` in order its transcript, its stats line and its word differences, and where it has an edge
    column (`DemoModel.has_edge`) the edge transcript and stats line. The selected models that loaded transcribe
    the clip at `audio`; a clip that cannot be used (`read_input`) or no model selected gives only the message."""
    loaded = [m for m in models if m.loaded]
    # no loaded model: any rate serves, the clip is only checked
    sampling_rate = loaded[0].processor.feature_extractor.sampling_rate if loaded else 16000
    per_model = {m.name: ("", "not selected" if m.loaded else "not loaded", None) for m in models}
    per_edge = {m.name: ("", "not selected" if m.edge is not None else "not loaded") for m in models if m.has_edge}
    waveform, message = read_input(audio, sampling_rate, config.max_audio_seconds)
    chosen = [m for m in loaded if m.name in (selected or [])]
    if waveform is not None and not chosen:
        message = "Select at least one model."
    results: list[ModelResult] = []
    if waveform is not None and chosen:
        results = compare_models(chosen, waveform, reference, config.max_new_tokens)
        for result in results:
            per_model[result.name] = (result.text or "", _stats(result), result.diff or None)
            if result.edge is not None:
                per_edge[result.name] = (result.edge.text or "", _edge_stats(result.edge))
            elif result.name in per_edge and result.error is not None:
                per_edge[result.name] = ("", "not run: the PyTorch model failed")
        if all(r.error is not None for r in results):
            message = "Every selected model failed on this audio: each column says why."
    by_model = {}
    for r in results:
        by_model[r.name] = {"text": r.text, "latency": r.latency, "rtf": r.rtf, "cer": r.cer, "error": r.error}
        if r.edge is not None:
            by_model[r.name]["edge"] = dataclasses.asdict(r.edge)
    outputs = [f"⚠️ {message}" if message else "", ranking(results), by_model]
    for model in models:
        outputs.extend(per_model[model.name])
        outputs.extend(per_edge.get(model.name, ()))
    return outputs


def build_app(models: Sequence[DemoModel], examples: Sequence[Utterance], config: DemoConfig) -> gr.Blocks:
    """The page over `models` (in this order; those that failed to load show their error) with `examples` (held-out
    clips and their references). Sets the temp folder first (`use_temp_dir`). The comparison is also an HTTP API,
    `/compare` (audio, reference, model names) -> (message, ranking, results by model, then per model: transcript,
    stats, differences, and with an edge column its transcript and stats)."""
    use_temp_dir(config)
    loaded = [m for m in models if m.loaded]
    with gr.Blocks(title="funasr-swap: compare models", delete_cache=(3600, 3600)) as app:
        gr.Markdown(
            "# funasr-swap: compare swapped models\nOne clip through every model: the same encoder, each with its "
            "own LLM behind a retrained adaptor."
        )
        with gr.Tab("Compare"):
            with gr.Row():
                with gr.Column(scale=2):
                    audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Audio", elem_id="audio")
                    reference = gr.Textbox(label="Reference transcript (optional: CER and differences)",
                                           elem_id="reference")  # fmt: skip
                    selected = gr.CheckboxGroup([m.name for m in loaded], value=[m.name for m in loaded],
                                                label="Models", elem_id="models")  # fmt: skip
                    button = gr.Button("Compare", variant="primary", elem_id="compare")
                with gr.Column(scale=3):
                    if examples:
                        gr.Examples(
                            [[str(u.audio), u.text] for u in examples], [audio, reference],
                            label="Held-out test clips (never trained on)", elem_id="examples", cache_examples=False,
                        )  # fmt: skip
            message = gr.Markdown(elem_id="message")
            columns = []
            with gr.Row(equal_height=False):
                for index, model in enumerate(models):
                    with gr.Column(min_width=260):
                        gr.Markdown(_card_markdown(model), elem_id=f"card-{index}")
                        columns += [
                            gr.Textbox(label="Transcript", interactive=False, elem_id=f"transcript-{index}"),
                            gr.Markdown(elem_id=f"stats-{index}"),
                            gr.HighlightedText(label="Against the reference", color_map=DIFF_LABELS, show_legend=True,
                                               combine_adjacent=False, elem_id=f"diff-{index}"),
                        ]  # fmt: skip
                    if model.has_edge:
                        with gr.Column(min_width=260):
                            gr.Markdown(_edge_card_markdown(model), elem_id=f"edge-card-{index}")
                            columns += [
                                gr.Textbox(label="Edge transcript", interactive=False,
                                           elem_id=f"edge-transcript-{index}"),
                                gr.Markdown(elem_id=f"edge-stats-{index}"),
                            ]  # fmt: skip
            table = gr.Dataframe(headers=RANKING_HEADERS, label="Ranking", interactive=False, elem_id="ranking")
            with gr.Accordion("Results by model (JSON)", open=False):
                results = gr.JSON(elem_id="results")
            button.click(functools.partial(compare_clip, models, config), [audio, reference, selected],
                         [message, table, results, *columns], api_name="compare")  # fmt: skip
            # a new upload or recording has no reference: a previous example's would score it wrongly
            for event in (audio.upload, audio.stop_recording):
                event(lambda: "", None, reference, api_visibility="private")
        with gr.Tab("Prompts"):
            gr.HTML("<p>Each model's ASR prompt as its tokenizer cuts it, with token ids, coloured by the part of the "
                    "conversation; control tokens in bold. The audio placeholder repeats once per 60 ms audio "
                    "frame.</p>")  # fmt: skip
            for model in models:
                gr.HTML(_prompt_section(model))
    return app


def launch(app: gr.Blocks, config: DemoConfig, *, block: bool = True, quiet: bool = False) -> str:
    """Serve `app` with `config`'s limits; returns its local URL. `block=False` returns at once, the server running
    in a thread (tests; `app.close()` stops it)."""
    app.queue(max_size=config.queue_size, default_concurrency_limit=config.concurrency_limit)
    _, url, _ = app.launch(
        server_name=config.host, server_port=config.port, max_file_size=config.max_file_size, allowed_paths=[],
        share=False, enable_monitoring=False, run_history=False, mcp_server=False, ssr_mode=False, pwa=False,
        show_error=False, footer_links=["api"], prevent_thread_lock=not block, quiet=quiet,
    )  # fmt: skip
    return url


def check_port(config: DemoConfig) -> None:
    """SettingError naming `config.port` when something already listens there (Gradio binds it the same way)."""
    if config.port is None:
        return
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((config.host, config.port))
        except OSError as error:
            raise SettingError(f"{{port}} on {config.host} is not free ({error.strerror}): choose another port, or "
                               "leave it out for the first free one from 7860", port=config.port) from None  # fmt: skip


def read_examples(manifest: str | os.PathLike | None, count: int) -> list[Utterance]:
    """The first `count` clips of a JSONL manifest (`funasr_swap.data.load_manifest`), with their references;
    none without a manifest."""
    from funasr_swap.data import load_manifest

    return load_manifest(manifest).utterances[:count] if manifest is not None else []


def serve(
    folders: Sequence[str | os.PathLike],
    examples: str | os.PathLike | None = None,
    config: DemoConfig = DemoConfig(),
    *,
    exports: Mapping[str | os.PathLike, str | os.PathLike] | None = None,
    block: bool = True,
    quiet: bool = False,
) -> tuple[gr.Blocks, str]:
    """Load the model `folders` once (with their edge exports: `exports[folder]`, else a run's `RUN/edge`; see
    `demos.models`), build the page with the first `config.max_examples` clips of the `examples` manifest, and serve
    it (`launch`); returns the app and its local URL."""
    from demos.models import load_models

    check_port(config)  # before the models load: a busy port would otherwise fail only after
    app = build_app(load_models(folders, exports), read_examples(examples, config.max_examples), config)
    return app, launch(app, config, block=block, quiet=quiet)
