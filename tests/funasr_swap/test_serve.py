"""`funasr-swap serve`: OpenAI's own client gets `transcribe`'s text for every clip, concurrent requests are batched,
each bad request gets its 4xx in OpenAI's error shape and the server goes on serving, and Ctrl-C lets a request in
flight finish."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import openai
import pytest
import soundfile
import typer

from funasr_swap.errors import SettingError
from funasr_swap.serve import ServeConfig
from funasr_swap.serve.app import bind, build_app, hotwords_of, running
from funasr_swap.serve.batching import BatchingQueue, QueueFull
from funasr_swap.serve.recognizers import pytorch_recognizer
from funasr_swap.transcribe import transcribe
from tests.conftest import audio_dependent_tiny_base, voice

MAX_NEW_TOKENS = 8
CONFIG = ServeConfig(
    port=0, model_name="tiny", max_file_size="300kb", max_audio_seconds=5.0, max_new_tokens=MAX_NEW_TOKENS,
    max_batch_size=4, max_wait_ms=300,
)  # fmt: skip


def wav_bytes(waveform: np.ndarray, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, waveform, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def base():
    return audio_dependent_tiny_base()


@pytest.fixture(scope="module")
def clips() -> list[bytes]:
    """Eight wav files of distinct audio, 0.6 to 3.1 s."""
    return [wav_bytes(voice(seconds, seed)) for seed, seconds in enumerate((1.3, 3.1, 0.6, 2.2, 1.7, 0.9, 2.6, 1.1))]


@pytest.fixture(scope="module")
def expected(base, clips) -> list[str]:
    """`transcribe`'s text of each clip alone, greedy, the server's settings."""
    model, processor = base
    return [t.text for t in transcribe(model, processor, clips, batch_size=1, max_new_tokens=MAX_NEW_TOKENS)]


@pytest.fixture(scope="module")
def server(base):
    """The tiny base served in this process: (base URL, app)."""
    model, processor = base
    recognizer = pytorch_recognizer(model, processor, "tiny", MAX_NEW_TOKENS, CONFIG.max_audio_seconds)
    app = build_app(recognizer, CONFIG)
    with running(app, bind(CONFIG)) as url:
        yield url, app


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0)


def test_models_lists_the_served_model(client):
    assert [model.id for model in client.models.list()] == ["tiny"]


def test_concurrent_clients_get_transcribes_text_and_are_batched(server, client, clips, expected):
    assert len(set(expected)) > 1  # the answers depend on the audio: the comparison means something
    batch_sizes = server[1].state.batching.batch_sizes
    before = batch_sizes.copy()
    texts: list[str | None] = [None] * len(clips)
    start = threading.Barrier(len(clips))

    def ask(i: int) -> None:
        start.wait()
        texts[i] = client.audio.transcriptions.create(model="tiny", file=(f"{i}.wav", clips[i])).text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(clips))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert texts == expected
    made = batch_sizes - before  # model calls by their clips, during this test
    assert sum(size * calls for size, calls in made.items()) == len(clips)
    assert max(made) > 1  # several clips went through one model call
    assert max(made) <= CONFIG.max_batch_size


def test_response_formats(client, clips, expected):
    text = client.audio.transcriptions.create(model="tiny", file=("a.wav", clips[1]), response_format="text")
    assert text.strip() == expected[1]
    verbose = client.audio.transcriptions.create(model="tiny", file=("a.wav", clips[1]), response_format="verbose_json")
    assert (verbose.text, verbose.language, verbose.duration) == (expected[1], None, pytest.approx(3.1, abs=1e-3))


def test_language_and_prompt_hotwords_reach_the_prompt(base, client, clips):
    model, processor = base
    hotwords = ["Fun-ASR", "Qwen3"]
    (alone,) = transcribe(
        model, processor, [clips[3]], language="en", hotwords=hotwords, batch_size=1, max_new_tokens=MAX_NEW_TOKENS
    )
    (plain,) = transcribe(model, processor, [clips[3]], batch_size=1, max_new_tokens=MAX_NEW_TOKENS)
    assert alone.text != plain.text  # the task changes the answer: the comparison means something
    served = client.audio.transcriptions.create(
        model="tiny", file=("a.wav", clips[3]), language="en", prompt="Fun-ASR, Qwen3", response_format="verbose_json"
    )
    assert (served.text, served.language) == (alone.text, "en")


def test_batch_mates_with_different_tasks_go_through_separate_calls(server, client, clips, expected, base):
    """A request with hotwords and one without, together: each gets its own task's answer."""
    model, processor = base
    (hinted,) = transcribe(model, processor, [clips[0]], hotwords=["Qwen3"], max_new_tokens=MAX_NEW_TOKENS)
    answers: dict[str, str] = {}
    start = threading.Barrier(2)

    def ask(name: str, prompt: str | None) -> None:
        start.wait()
        answers[name] = client.audio.transcriptions.create(model="tiny", file=("a.wav", clips[0]), prompt=prompt).text

    threads = [threading.Thread(target=ask, args=args) for args in (("plain", None), ("hinted", "Qwen3"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == {"plain": expected[0], "hinted": hinted.text}


def test_hotwords_of_a_prompt():
    assert hotwords_of("Fun-ASR, Qwen3，通义\n  ,") == ["Fun-ASR", "Qwen3", "通义"]
    assert hotwords_of(None) == hotwords_of("") == []


BAD_REQUESTS = {
    "not audio": (dict(file=("a.wav", b"RIFF but not a wav at all")), 400, "a.wav: cannot read audio"),
    "empty": (dict(file=("a.wav", b"")), 400, "a.wav: the file is empty"),
    "too long": (dict(file=("long.wav", "6 s")), 400, "long.wav: audio is 6.0 s long, longer than the server's "
                 "--max-seconds 5"),
    "too short": (dict(file=("short.wav", "1 ms")), 400, "short.wav: audio is 0.001 s long, shorter than one"),
    "too large": (dict(file=("big.wav", b"\0" * 320_000)), 413, "big.wav: the file is 320,000 bytes, over this"),
    "far too large: refused unread": (dict(file=("big.wav", b"\0" * 400_000)), 413, "the request is 400,"),
    "unknown response_format": (dict(response_format="srt"), 400, "response_format 'srt' is not served"),
    "another model": (dict(model="whisper-1"), 404, "model 'whisper-1' is not served here"),
    "unknown language": (dict(language="xx"), 400, "unknown language 'xx'"),
    "a hotword spelling a control token": (dict(prompt="<|im_end|>"), 400, "contains the special token"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_a_bad_request_gets_its_4xx_and_the_server_goes_on(client, clips, expected, case):
    changes, status, message = BAD_REQUESTS[case]
    if isinstance(changes.get("file", (None, b""))[1], str):  # a duration: a clip of that length
        name, length = changes["file"]
        seconds = float(length.split()[0]) / (1000 if length.endswith("ms") else 1)
        changes = {**changes, "file": (name, wav_bytes(voice(seconds, 0)))}
    request = {"model": "tiny", "file": ("a.wav", clips[0]), **changes}
    with pytest.raises(openai.APIStatusError) as raised:
        client.audio.transcriptions.create(**request)
    error = raised.value
    assert error.status_code == status
    assert set(error.body) >= {"message", "type"} and "\n" not in error.body["message"]  # one line, OpenAI's shape
    assert message in error.body["message"]
    assert client.audio.transcriptions.create(model="tiny", file=("a.wav", clips[0])).text == expected[0]


@pytest.mark.parametrize(
    ("request_", "status", "message"),
    [
        ({"data": {"model": "tiny"}}, 400, "file: Field required"),
        ({"data": {"model": "tiny", "stream": "true"}, "with_file": True}, 400, "streaming is not served"),
        ({"method": "GET", "path": "/v1/nothing"}, 404, "Not Found"),
    ],
    ids=["no file", "stream", "unknown path"],
)
def test_requests_openais_client_does_not_send_get_openais_error_shape(server, clips, request_, status, message):
    url = server[0] + request_.get("path", "/v1/audio/transcriptions")
    files = {"file": ("a.wav", clips[0])} if request_.get("with_file") else None
    if request_.get("method") == "GET":
        response = httpx.get(url)
    else:
        response = httpx.post(url, data=request_["data"], files=files or {"unused": ("x", b"")})
    assert response.status_code == status
    assert message in response.json()["error"]["message"]


def test_a_failing_model_call_gets_a_500_and_the_server_goes_on(base, clips, expected):
    model, processor = base
    working = pytorch_recognizer(model, processor, "tiny", MAX_NEW_TOKENS, CONFIG.max_audio_seconds)
    calls = []

    def fails_first(*args):
        calls.append(len(calls))
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return working.transcribe(*args)

    app = build_app(dataclasses.replace(working, transcribe=fails_first), CONFIG)
    with running(app, bind(CONFIG)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.InternalServerError) as raised:
            client.audio.transcriptions.create(model="tiny", file=("a.wav", clips[0]))
        assert raised.value.body == {"message": "RuntimeError: out of memory", "type": "server_error", "param": None,
                                     "code": None}  # fmt: skip
        assert client.audio.transcriptions.create(model="tiny", file=("a.wav", clips[0])).text == expected[0]


def test_a_busy_port_is_refused_before_the_model_loads(server):
    port = int(server[0].rsplit(":", 1)[1])
    with pytest.raises(SettingError, match=f"port={port} on 127.0.0.1 is not free"):
        bind(ServeConfig(port=port))


def test_the_queue_batches_by_task_and_turns_away_what_does_not_fit():
    """The batching queue alone, with a stand-in model call that records what it was given."""
    calls: list[tuple[int, str | None, tuple[str, ...]]] = []
    release = threading.Event()

    def model_call(waveforms, language, hotwords, timestamps):
        release.wait(5)
        calls.append((len(waveforms), language, tuple(hotwords)))
        return [f"{len(w)} {language}" for w in waveforms]

    async def scenario():
        queue = BatchingQueue(model_call, max_batch_size=3, max_wait_seconds=0.2, queue_size=4)
        queue.start()
        first = asyncio.ensure_future(queue.submit(np.zeros(1), None, ()))  # runs alone, held by `release`
        await asyncio.sleep(0.4)
        waiting = [asyncio.ensure_future(queue.submit(np.zeros(n), lang, ())) for n, lang in
                   [(2, "en"), (3, None), (4, "en"), (5, "en")]]  # fmt: skip
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await queue.submit(np.zeros(6), None, ())
        release.set()
        results = await asyncio.gather(first, *waiting)
        await queue.close()
        return results, queue.batch_sizes

    results, batch_sizes = asyncio.run(scenario())
    assert results == ["1 None", "2 en", "3 None", "4 en", "5 en"]
    # the three that waited first form a batch: two calls (en, then none); the fourth waits for the next batch
    assert calls == [(1, None, ()), (2, "en", ()), (1, None, ()), (1, "en", ())]
    assert batch_sizes == {1: 3, 2: 1}


@pytest.mark.slow
def test_the_command_serves_a_folder_and_ctrl_c_lets_a_request_in_flight_finish(tiny_base_folder, tmp_path):
    """`funasr-swap serve --model DIR` in a subprocess: a request sent just before SIGINT still gets its transcript
    (equal to `funasr-swap transcribe`'s), then the server shuts down and exits."""
    from funasr_swap.convert import load_base

    clip = wav_bytes(voice(2.0, 1))
    model, processor = load_base(tiny_base_folder)
    (alone,) = transcribe(model, processor, [clip], max_new_tokens=MAX_NEW_TOKENS)
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    # A shell's foreground command gets Ctrl-C with Python's default handler, whatever this process was started
    # with: a SIGINT ignored here (as a background job's is) would be inherited, and uvicorn would then exit 0.
    program = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    program += "from funasr_swap.cli import app; app()"
    command = [sys.executable, "-c", program, "serve", "--model",
               str(tiny_base_folder), "--port", "0", "--max-new-tokens", str(MAX_NEW_TOKENS),
               "--max-wait-ms", "2000"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stdout.readline()
        assert line.startswith(f"serving {tiny_base_folder.name} on http://127.0.0.1:"), line + process.stderr.read()
        url = line.split()[-1]
        for _ in range(600):  # the model loaded before the line; uvicorn starts just after it
            try:
                if httpx.get(f"{url}/models").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        answer: dict = {}

        def ask() -> None:
            client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
            answer["text"] = client.audio.transcriptions.create(model=tiny_base_folder.name, file=("a.wav", clip)).text

        asking = threading.Thread(target=ask)
        asking.start()
        time.sleep(1.0)  # the request is in the queue, waiting up to 2 s for batch-mates
        process.send_signal(signal.SIGINT)
        asking.join(60)
        assert answer == {"text": alone.text}
        assert process.wait(60) == 130  # as Ctrl-C ends a command, once the server has shut down
        log = process.stderr.read()
        assert "batch of 1 clip(s)" in log and "Application shutdown complete" in log and "Traceback" not in log
    finally:
        process.kill()
        process.wait()


@pytest.mark.slow
def test_an_export_is_served_with_the_edge_runtimes_text(tiny_export):
    from funasr_swap.edge import transcribe as edge_transcribe
    from funasr_swap.serve.recognizers import edge_recognizer

    clips = [wav_bytes(voice(seconds, seed)) for seed, seconds in enumerate((1.3, 0.7))]
    wanted = [t.text for t in edge_transcribe(tiny_export, clips, max_new_tokens=MAX_NEW_TOKENS)]
    config = ServeConfig(port=0, max_new_tokens=MAX_NEW_TOKENS)
    app = build_app(edge_recognizer(tiny_export, MAX_NEW_TOKENS, config.max_audio_seconds), config)
    with running(app, bind(config)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        (model,) = client.models.list()
        assert model.id == tiny_export.name
        texts = [client.audio.transcriptions.create(model=model.id, file=("a.wav", clip)).text for clip in clips]
        with pytest.raises(openai.BadRequestError, match=r"the export has no CTC branch \(ctc.onnx\)"):
            client.audio.transcriptions.create(
                model=model.id, file=("a.wav", clips[0]), response_format="verbose_json",
                timestamp_granularities=["word"],
            )  # fmt: skip
    assert texts == wanted


@pytest.mark.slow
def test_an_export_with_the_ctc_branch_is_served_with_the_edge_runtimes_words(timestamped_export, clips):
    from funasr_swap.edge import transcribe as edge_transcribe
    from funasr_swap.serve.recognizers import edge_recognizer
    from funasr_swap.timestamps import words_of

    wanted = edge_transcribe(timestamped_export, clips[:2], max_new_tokens=MAX_NEW_TOKENS, timestamps=True)
    config = ServeConfig(port=0, max_new_tokens=MAX_NEW_TOKENS)
    app = build_app(edge_recognizer(timestamped_export, MAX_NEW_TOKENS, config.max_audio_seconds), config)
    with running(app, bind(config)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        for clip, transcript in zip(clips, wanted):
            got = client.audio.transcriptions.create(
                model=timestamped_export.name, file=("a.wav", clip), response_format="verbose_json",
                timestamp_granularities=["word"],
            )  # fmt: skip
            assert got.words and [(w.word, w.start, w.end) for w in got.words] == [
                (w.token, pytest.approx(w.start), pytest.approx(w.end)) for w in words_of(transcript.timestamps)
            ]


def test_the_servers_limits_default_to_the_demos():
    from demos.config import DemoConfig

    assert (ServeConfig().max_file_size, ServeConfig().max_audio_seconds) == (
        DemoConfig().max_file_size, DemoConfig().max_audio_seconds,
    )  # fmt: skip
    assert ServeConfig().max_file_bytes == 10 * 1024**2 and ServeConfig().host == "127.0.0.1"
    with pytest.raises(SettingError, match="ServeConfig.max_file_size='ten': give a whole number"):
        ServeConfig(max_file_size="ten")


def test_the_commands_defaults_are_serve_configs():
    from funasr_swap.cli import app

    params = {p.name: p.default() if callable(p.default) else p.default
              for p in typer.main.get_command(app).commands["serve"].params}  # fmt: skip
    config = ServeConfig()
    for option in ("host", "port", "max_batch_size", "max_wait_ms", "queue_size", "max_file_size", "max_new_tokens"):
        assert params[option] == getattr(config, option), option
    assert (params["name"], params["max_seconds"]) == (config.model_name, config.max_audio_seconds)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give the model as --model DIR or an export as --edge DIR"),
        (["--model", "a", "--edge", "b"], "give the model as --model DIR or an export as --edge DIR"),
        (["--model", "a", "--max-file-size", "ten"], "--max-file-size ten: give a whole number and a unit"),
        (["--model", "a", "--port", "{busy}"], "--port {busy} on 127.0.0.1 is not free"),
    ],
    ids=["neither", "both", "file size", "busy port"],
)
def test_the_command_refuses_bad_settings_before_the_model_loads(server, args, message):
    from typer.testing import CliRunner

    from funasr_swap.cli import app

    busy = server[0].rsplit(":", 1)[1]
    result = CliRunner().invoke(app, ["serve", *[arg.format(busy=busy) for arg in args]])
    assert result.exit_code == 1, result.output
    assert f"error: {message.format(busy=busy)}" in result.output.splitlines()[-1]


def test_the_commands_help_teaches_the_endpoint():
    from typer.testing import CliRunner

    from funasr_swap.cli import app

    result = CliRunner().invoke(app, ["serve", "--help"], terminal_width=120)
    assert result.exit_code == 0
    for taught in ("POST /v1/audio/transcriptions", "response_format", "verbose_json", "curl http://127.0.0.1:8000",
                   "client.audio.transcriptions.create("):  # fmt: skip
        assert taught in result.output, taught


def test_verbose_json_words_are_the_transcripts_token_times_merged_into_words(timestamped_folder, clips):
    from funasr_swap.convert import load_base
    from funasr_swap.ctc_branch import read_ctc_branch
    from funasr_swap.timestamps import words_of

    model, processor = load_base(timestamped_folder)
    branch = read_ctc_branch(timestamped_folder)
    expected = transcribe(model, processor, clips[:2], max_new_tokens=MAX_NEW_TOKENS, timestamps=True)
    config = dataclasses.replace(CONFIG, max_wait_ms=0)
    app = build_app(pytorch_recognizer(model, processor, "tiny", MAX_NEW_TOKENS, 5.0, branch), config)
    with running(app, bind(config)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        for clip, transcript in zip(clips, expected):
            got = client.audio.transcriptions.create(
                model="tiny", file=("a.wav", clip), response_format="verbose_json", timestamp_granularities=["word"]
            )  # fmt: skip
            assert got.words, "the tiny model answered nothing: nothing to time"
            assert [(w.word, w.start, w.end) for w in got.words] == [
                (w.token, pytest.approx(w.start), pytest.approx(w.end)) for w in words_of(transcript.timestamps)
            ]
            assert got.text == transcript.text
        with pytest.raises(openai.BadRequestError, match="segment timestamps are not served"):
            client.audio.transcriptions.create(model="tiny", file=("a.wav", clips[0]), response_format="verbose_json",
                                               timestamp_granularities=["word", "segment"])  # fmt: skip


@pytest.mark.parametrize(
    "granularities, response_format, message",
    [
        (["word"], "json", "timestamp_granularities needs response_format verbose_json, got 'json'"),
        (["words"], "verbose_json", "timestamp_granularities 'words' is not one of word, segment"),
    ],
)
def test_timestamp_granularities_outside_verbose_json_words_are_a_400(client, clips, granularities, response_format,
                                                                      message):  # fmt: skip
    with pytest.raises(openai.BadRequestError, match=re.escape(message)):
        client.audio.transcriptions.create(model="tiny", file=("a.wav", clips[0]), response_format=response_format,
                                           timestamp_granularities=granularities)  # fmt: skip


def test_timestamps_of_a_model_without_the_ctc_branch_are_a_400(client, clips):
    with pytest.raises(openai.BadRequestError, match="no timestamps from 'tiny': the model has no CTC branch"):
        client.audio.transcriptions.create(
            model="tiny", file=("a.wav", clips[0]), response_format="verbose_json", timestamp_granularities=["word"]
        )  # fmt: skip
    plain = client.audio.transcriptions.create(model="tiny", file=("a.wav", clips[0]), response_format="verbose_json")
    assert plain.words is None  # not asked: not given
