"""The comparison page: its input checks, its HTTP API through `gradio_client`, its limits, and path traversal."""

from __future__ import annotations

import http.client
import os
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import soundfile

from demos.compare_app import NO_AUDIO, RANKING_HEADERS, compare_clip, read_input, use_temp_dir
from demos.config import DemoConfig
from funasr_swap.transcribe import transcribe


def _wav(path, seconds: float, rate: int = 16000):
    soundfile.write(path, np.full(round(seconds * rate), 0.1, np.float32), rate)
    return path


def test_read_input_says_what_is_wrong_with_bad_audio(tmp_path):
    assert read_input(None, 16000, 30.0) == (None, NO_AUDIO)
    (tmp_path / "notes.txt").write_text("not audio")
    waveform, message = read_input(str(tmp_path / "notes.txt"), 16000, 30.0)
    assert waveform is None and "**notes.txt** cannot be used" in message and str(tmp_path) not in message
    assert message.endswith(".") and ".." not in message  # soundfile's reason ends with a period of its own
    soundfile.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    assert "empty" in read_input(str(tmp_path / "empty.wav"), 16000, 30.0)[1]
    waveform, message = read_input(str(_wav(tmp_path / "long.wav", 31.0, 8000)), 16000, 30.0)
    assert waveform is None and "31.0 s long" in message and "at most 30 s" in message
    waveform, message = read_input(str(_wav(tmp_path / "ok.wav", 1.0, 8000)), 16000, 30.0)
    assert message == "" and waveform.shape == (16000,)  # resampled to the models' rate


def test_use_temp_dir_points_every_gradio_file_at_one_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", "unchanged")  # restored after the test
    monkeypatch.setenv("GRADIO_EXAMPLES_CACHE", "unchanged")
    folder = use_temp_dir(DemoConfig(temp_dir=tmp_path / "demo"))
    assert folder.is_dir() and os.environ["GRADIO_TEMP_DIR"] == str(folder.resolve())
    assert os.environ["GRADIO_EXAMPLES_CACHE"].startswith(str(folder.resolve()))
    fresh = use_temp_dir(DemoConfig())
    assert fresh.is_dir() and fresh.name.startswith("funasr-swap-demo-")
    fresh.rmdir()  # removed at exit too (test_the_temp_folder_made_for_the_demo_is_removed_at_exit)


def test_compare_clip_fills_one_column_per_model_and_says_what_went_wrong(tiny_base_folder, tmp_path):
    from demos.models import load_models

    models = load_models([tiny_base_folder, tmp_path / "gone", tiny_base_folder])  # "tiny", "gone", "tiny (2)"
    config = DemoConfig(max_new_tokens=4)
    clip = "tests/fixtures/fbank/en.wav"
    message, rows, by_model, *columns = compare_clip(models, config, clip, "hello world", ["tiny"])
    assert message == "" and list(by_model) == ["tiny"] and [row[1] for row in rows] == ["tiny"]
    assert len(columns) == 3 * len(models)  # transcript, stats, differences per model
    assert columns[0] == by_model["tiny"]["text"] and "CER" in columns[1] and columns[2]
    assert columns[3:] == ["", "not loaded", None, "", "not selected", None]
    message, rows, by_model, *columns = compare_clip(models, config, None, "", ["tiny"])
    assert NO_AUDIO in message and rows == [] and by_model == {} and columns[:2] == ["", "not selected"]
    assert "Select at least one model" in compare_clip(models, config, clip, "", [])[0]
    soundfile.write(tmp_path / "click.wav", np.full(10, 0.1, np.float32), 16000)  # shorter than one feature frame
    message, rows, by_model, *columns = compare_clip(
        models, config, str(tmp_path / "click.wav"), "", ["tiny", "tiny (2)"]
    )
    assert "Every selected model failed" in message and "shorter than one" in columns[1]
    assert [row[2:] for row in rows] == [[None, None, None]] * 2


def test_a_model_with_an_export_gets_an_edge_column_that_says_if_it_equals_pytorch(
    tiny_base_folder, tiny_export, tmp_path, monkeypatch
):
    from demos.compare_app import build_app
    from demos.models import load_models

    models = load_models([tiny_base_folder, tmp_path / "plain"], {tiny_base_folder: tiny_export})
    message, rows, by_model, *columns = compare_clip(
        models, DemoConfig(max_new_tokens=4), "tests/fixtures/fbank/en.wav", "", ["tiny"]
    )
    assert message == "" and len(columns) == 3 + 2 + 3  # the edge's transcript and stats after the model's three
    edge = by_model["tiny"]["edge"]
    # f32: llama.cpp transcribes as PyTorch does (tests/funasr_swap/edge/test_runtime.py)
    assert edge["text"] == by_model["tiny"]["text"] and edge["equal"] is True and edge["latency"] > 0
    assert columns[3] == edge["text"] and "equals PyTorch's ✓" in columns[4] and "RTF" in columns[4]
    assert columns[5:7] == ["", "not loaded"]
    monkeypatch.setenv("GRADIO_TEMP_DIR", "unchanged")  # build_app sets them: restored after the test
    monkeypatch.setenv("GRADIO_EXAMPLES_CACHE", "unchanged")
    app = build_app(models, [], DemoConfig(temp_dir=tmp_path / "temp"))
    values = {c.get("props", {}).get("elem_id"): c["props"].get("value") for c in app.config["components"]}
    assert "tiny · edge" in values["edge-card-0"] and "f32" in values["edge-card-0"]
    assert "edge-transcript-0" in values and "edge-card-1" not in values


def test_the_temp_folder_made_for_the_demo_is_removed_at_exit(tmp_path):
    """Uploads are people's audio: the folder use_temp_dir made goes when the process ends; one the config names
    stays."""
    import subprocess
    import sys

    script = (
        "import sys; from pathlib import Path; from demos.compare_app import use_temp_dir; "
        "from demos.config import DemoConfig; made = use_temp_dir(DemoConfig()); "
        "(made / 'upload.wav').write_text('x'); named = use_temp_dir(DemoConfig(temp_dir=Path(sys.argv[1]))); "
        "print(made)"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "named")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    made = Path(result.stdout.strip())
    assert made.name.startswith("funasr-swap-demo-") and not made.exists()
    assert (tmp_path / "named").is_dir()


def test_a_model_folder_that_does_not_load_is_named_in_the_page(tiny_base_folder, tmp_path, monkeypatch):
    from demos.compare_app import build_app
    from demos.models import load_models

    monkeypatch.setenv("GRADIO_TEMP_DIR", "unchanged")  # build_app sets them: restored after the test
    monkeypatch.setenv("GRADIO_EXAMPLES_CACHE", "unchanged")
    app = build_app(load_models([tmp_path / "gone", tiny_base_folder]), [], DemoConfig(temp_dir=tmp_path / "temp"))
    values = {c.get("props", {}).get("elem_id"): c["props"].get("value") for c in app.config["components"]}
    assert "could not load" in values["card-0"] and "gone" in values["card-0"]
    assert "LLM qwen3" in values["card-1"]
    assert values["models"] == ["tiny"]  # only loaded models can be chosen


def test_demo_config_refuses_non_positive_limits():
    with pytest.raises(ValueError, match="queue_size must be > 0, got 0"):
        DemoConfig(queue_size=0)


# ---- against the running server (the quick world: slow) ----


@pytest.fixture(scope="module")
def client(demo_server):
    from gradio_client import Client

    return Client(demo_server[1], verbose=False)


def _compare(client, audio, reference, models):
    from gradio_client import handle_file

    return client.predict(handle_file(str(audio)) if audio else None, reference, models, api_name="/compare")


@pytest.mark.slow
def test_the_api_transcripts_equal_transcribes(client, world_models, world_examples, demo_config):
    example, chosen = world_examples[0], world_models[:2]
    message, table, by_model, *columns = _compare(client, example.audio, example.text, [m.name for m in chosen])
    assert message == ""
    for model in chosen:
        [expected] = transcribe(
            model.model, model.processor, [example.audio], max_new_tokens=demo_config.max_new_tokens
        )
        assert by_model[model.name]["text"] == expected.text
        assert by_model[model.name]["cer"] is not None and by_model[model.name]["latency"] > 0
    assert set(by_model) == {m.name for m in chosen}
    assert table["headers"] == RANKING_HEADERS and sorted(row[1] for row in table["data"]) == sorted(by_model)
    # per model: transcript, stats, differences, in the models' order
    assert [columns[3 * i] for i in range(2)] == [by_model[m.name]["text"] for m in chosen]
    assert "latency" in columns[1] and "CER" in columns[1]
    assert columns[3 * 2 : 3 * 2 + 2] == ["", "not selected"]
    assert columns[-2:] == ["", "not selected"]  # the last model's edge column (conftest: world_models)


@pytest.mark.slow
def test_the_api_gives_the_edge_column_its_transcript_equal_to_pytorchs(client, world_models, world_examples):
    example, model = world_examples[0], world_models[-1]
    assert model.has_edge and not any(m.has_edge for m in world_models[:-1])
    message, _, by_model, *columns = _compare(client, example.audio, example.text, [model.name])
    edge = by_model[model.name]["edge"]
    assert message == "" and edge["equal"] is True and edge["text"] == by_model[model.name]["text"]  # f16
    stats = f"latency {edge['latency']:.2f} s · RTF {edge['rtf']:.3f} · equals PyTorch's ✓"
    assert columns[-2:] == [edge["text"], stats]


@pytest.mark.slow
def test_bad_input_gives_a_message_and_the_server_keeps_serving(client, world_models, world_examples, tmp_path):
    names = [m.name for m in world_models]
    (tmp_path / "notes.txt").write_text("not audio")
    soundfile.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    cases = {
        None: "Upload a file",
        tmp_path / "notes.txt": "cannot be used",
        tmp_path / "empty.wav": "empty",
        _wav(tmp_path / "long.wav", 11.0, 8000): "at most 10 s",  # the fixture's max_audio_seconds; 176 KB
    }
    for audio, expected in cases.items():
        message, table, by_model, *columns = _compare(client, audio, "", names)
        assert expected in message and by_model == {} and table["data"] in ([], [[None] * 5], [["", "", "", "", ""]])
    assert "Select at least one model" in _compare(client, world_examples[0].audio, "", [])[0]
    message, _, by_model, *_ = _compare(client, world_examples[0].audio, "", names[:1])
    assert message == "" and by_model[names[0]]["text"] is not None and by_model[names[0]]["cer"] is None


@pytest.mark.slow
def test_the_server_runs_with_the_safety_defaults(demo_server, demo_config, client, world_models, tmp_path):
    app, url = demo_server
    assert urlsplit(url).hostname == "127.0.0.1" and app.server_name == "127.0.0.1"
    assert app.allowed_paths == [] and app.max_file_size == 300 * 1024 and app.enable_monitoring is False
    assert app._queue.max_size == demo_config.queue_size and app.run_history is False
    clip = _wav(tmp_path / "fresh.wav", 0.7).read_bytes()
    _compare(client, tmp_path / "fresh.wav", "", [world_models[0].name])
    assert any(p.read_bytes() == clip for p in demo_config.temp_dir.rglob("fresh.wav"))  # the upload lands here


def _get(url: str, path: str) -> tuple[int, bytes]:
    """GET `path` exactly as written (http.client sends it unnormalised, unlike httpx, which drops `..`)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.slow
def test_path_traversal_probes_are_refused(demo_server, demo_config, quick_world, tmp_path_factory, client,
                                           world_models, world_examples):  # fmt: skip
    app, url = demo_server
    temp = demo_config.temp_dir.resolve()
    secret = temp.parent / "secret.txt"  # beside the temp folder: one `..` away from what the server may serve
    secret.write_text("SECRET-DEMO-PROBE")
    model_file = (quick_world / "models.json").resolve()
    targets = {
        "secret beside the temp folder": [f"{temp}/../secret.txt", f"{temp}/%2e%2e/secret.txt",
                                          f"{temp}/..%2fsecret.txt", f"{temp}/%252e%252e/secret.txt", str(secret)],
        "/etc/passwd": ["../../../../../../../../etc/passwd", "..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
                        "%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/etc/passwd", "%2fetc%2fpasswd",
                        "....//....//....//....//etc/passwd", "..\\..\\..\\..\\etc\\passwd"],
        "the quickstart's index": [str(model_file), f"{temp}/../../{model_file.relative_to('/')}"],
        "the working directory": ["pyproject.toml", "./pyproject.toml", "%2e/pyproject.toml"],
    }  # fmt: skip
    tried = []
    for what, paths in targets.items():
        for path in paths:
            for route in ("/file=", "/gradio_api/file=", "/gradio_api/file/"):
                status, body = _get(url, route + path)
                tried.append(f"{status}  {route}{path}  ({what})")
                assert status in (400, 403, 404), tried[-1]
                assert b"SECRET-DEMO-PROBE" not in body and b"root:" not in body and b"[project]" not in body
    for static in ("/static/../../../../etc/passwd", "/assets/..%2f..%2f..%2fetc%2fpasswd",
                   "/gradio_api/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd"):  # fmt: skip
        status, body = _get(url, static)
        tried.append(f"{status}  {static}  (/etc/passwd through the static routes)")
        assert b"root:" not in body, tried[-1]
    report = tmp_path_factory.mktemp("probes") / "probes.txt"
    report.write_text("\n".join(tried) + "\n")
    print(f"{len(tried)} probes ({report}):\n" + "\n".join(tried))
    # the control: a file the server wrote itself (an upload) is served, so the refusals are not a broken route
    _compare(client, world_examples[0].audio, "", [world_models[0].name])
    clip = world_examples[0].audio.read_bytes()
    [copy, *_] = [p for p in temp.rglob("*.wav") if p.read_bytes() == clip]
    assert _get(url, f"/gradio_api/file={copy}") == (200, clip)
