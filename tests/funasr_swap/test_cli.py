"""The `funasr-swap` command line as a new user tries it: one vocabulary (`--model`, `--manifest`, `-o/--output`,
`--adaptor`, `--markers`), the library's defaults, every bad input one line and exit status 1 with nothing written,
a swap that never replaces what it reads, and a plan that stays readable at 80 columns."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
import soundfile
import typer
from typer.testing import CliRunner

from funasr_swap.adaptor import Strategy as AdaptorStrategy
from funasr_swap.cli import app
from funasr_swap.gguf import GGUF_FAMILIES
from funasr_swap.gguf import OutType as GgufOutType
from funasr_swap.llms import LLMS
from funasr_swap.llms import RandomWeights as RandomWeightShapes
from funasr_swap.plan import swap_plan
from funasr_swap.swap import swap_llm
from funasr_swap.synth import synthesize
from funasr_swap.training import LoraSettings, TrainConfig, evaluate
from funasr_swap.training.checkpoints import STATE_FILE
from funasr_swap.transcribe import DEFAULT_MAX_AUDIO_SECONDS, transcribe
from tokenmap.markers import Strategy as MarkerStrategy

RATE = 16000
COMMANDS = ("convert", "transcribe", "plan", "swap", "synth", "train", "eval", "demo", "export", "fetch-converter")


def invoke(*args: str | Path, env: dict[str, str | None] | None = None):
    return CliRunner().invoke(app, [str(arg) for arg in args], env=env)


def assert_error(result, message: str, *, alone: bool = True) -> None:
    """Exit status 1 and `error: ...message...` as the last line of stderr, no traceback; with `alone`, the only
    line of output (the error came before any model loaded)."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last
    if alone:
        assert len(result.output.strip().splitlines()) == 1, result.output


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def base(tiny_base_folder) -> Path:
    return tiny_base_folder


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """Three clips of tones (0.4, 0.7, 1.0 s) and their manifest, audio paths relative to it."""
    folder = tmp_path_factory.mktemp("corpus")
    lines = []
    for i, seconds in enumerate((0.4, 0.7, 1.0)):
        t = np.arange(int(RATE * seconds)) / RATE
        soundfile.write(
            folder / f"clip{i}.wav", (0.3 * np.sin(2 * np.pi * (200 + 100 * i) * t)).astype(np.float32), RATE
        )
        lines.append(json.dumps({"audio": f"clip{i}.wav", "text": ["one", "two three", "four"][i], "language": "en"}))
    path = folder / "valid.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def with_lines(manifest: Path, tmp_path: Path, *extra: dict) -> Path:
    """A copy of `manifest` (audio by absolute path) with `extra` lines after its own."""
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    rows += list(extra)
    for row in rows:
        row["audio"] = str(manifest.parent / row["audio"])
    path = tmp_path / "manifest.jsonl"
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return path


# ---------------------------------------------------------------------------------------------------------------
# Help, vocabulary, defaults


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_an_example_in_the_new_vocabulary(command):
    result = invoke(command, "--help", env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert f"funasr-swap {command} " in result.output
    for old in ("--jsonl", "--base", "--strategy", "--size"):
        assert old not in result.output, old
    if command in ("transcribe", "swap", "train", "eval"):
        assert "--model" in result.output and "-o" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["swap", "--base", "X", "--llm", "Y", "-o", "Z"],
        ["swap", "--model", "X", "--llm", "Y", "--strategy", "bridge", "-o", "Z"],
        ["swap", "--model", "X", "--llm", "Y", "--size", "real", "-o", "Z"],
        ["eval", "--model", "X", "--manifest", "Y", "--jsonl", "Z"],
        ["transcribe", "--model", "X", "a.wav", "--jsonl", "Z"],
    ],
)
def test_old_option_names_are_gone(args, tmp_path):
    result = invoke(*args)
    assert result.exit_code == 2 and "No such option" in result.output


def test_starting_the_cli_imports_no_torch():
    """Defaults are read from the library only when a command needs them: `funasr-swap --help` stays fast."""
    code = "import sys, funasr_swap.cli; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


@pytest.mark.parametrize(
    ("command", "flag", "literal"),
    [
        ("swap", "--adaptor", AdaptorStrategy),
        ("swap", "--markers", MarkerStrategy),
        ("swap", "--random-weights", RandomWeightShapes),
        ("export", "--outtype", GgufOutType),
    ],
)
def test_each_option_offers_the_librarys_values(command, flag, literal):
    """`--help` shows the values of the Literal that the library's code takes, in its order."""
    output = invoke(command, "--help", env={"COLUMNS": "200"}).output
    choices = "|".join(typing.get_args(literal))
    assert re.search(rf"{flag}\s+<{re.escape(choices)}>", output), output


def defaults(command: str) -> dict:
    """The value each option of `command` takes when it is left out."""
    params = typer.main.get_command(app).commands[command].params
    return {p.name: p.default() if callable(p.default) else p.default for p in params}


def parameter_defaults(function) -> dict:
    return {name: p.default for name, p in inspect.signature(function).parameters.items()}


def test_train_defaults_are_train_configs():
    cli, config, lora = defaults("train"), TrainConfig(output_dir=Path("unused")), LoraSettings()
    same_name = ("batch_size", "grad_accum", "lr", "weight_decay", "max_grad_norm", "eval_every", "save_every",
                 "keep_last", "seed", "unfreeze_encoder", "train_llm", "log_samples", "num_workers",
                 "audio_cache", "dither")  # fmt: skip
    for option in same_name:
        assert cli[option] == getattr(config, option), option
    assert (cli["steps"], cli["warmup"]) == (config.max_steps, config.warmup_steps)
    assert cli["compile_layers"] == config.compile
    assert (cli["lora_alpha"], cli["lora_dropout"]) == (lora.alpha, lora.dropout)
    assert cli["lora_targets"] is None and lora.target_modules is None  # None: the registry's per-architecture targets
    assert cli["max_seconds"] == DEFAULT_MAX_AUDIO_SECONDS
    assert "[default: 1000]" in invoke("train", "--help", env={"COLUMNS": "200"}).output  # --steps, as help shows it


def test_other_defaults_are_the_librarys():
    pairs = {  # (command, option): the library default it must equal
        ("transcribe", "batch_size"): parameter_defaults(transcribe)["batch_size"],
        ("transcribe", "beams"): parameter_defaults(transcribe)["num_beams"],
        ("transcribe", "max_new_tokens"): parameter_defaults(transcribe)["max_new_tokens"],
        ("transcribe", "max_seconds"): parameter_defaults(transcribe)["max_audio_seconds"],
        ("transcribe", "itn"): parameter_defaults(transcribe)["itn"],
        ("transcribe", "language"): parameter_defaults(transcribe)["language"],
        ("eval", "batch_size"): parameter_defaults(evaluate)["batch_size"],
        ("eval", "max_seconds"): DEFAULT_MAX_AUDIO_SECONDS,
        ("swap", "adaptor"): parameter_defaults(swap_llm)["strategy"],
        ("swap", "markers"): parameter_defaults(swap_llm)["markers"],  # None: the family's choice
        ("swap", "boundaries"): parameter_defaults(swap_llm)["boundaries"],
        ("swap", "random_weights"): parameter_defaults(swap_llm)["random_weights"],
        ("synth", "seed"): parameter_defaults(synthesize)["seed"],
        ("synth", "valid_fraction"): parameter_defaults(synthesize)["valid_fraction"],
        ("synth", "test_fraction"): parameter_defaults(synthesize)["test_fraction"],
        ("synth", "workers"): parameter_defaults(synthesize)["workers"],
        ("plan", "source"): parameter_defaults(swap_plan)["source"],
    }
    for (command, option), library in pairs.items():
        assert defaults(command)[option] == library, (command, option)
    assert defaults("synth")["languages"] is None  # not given: synthesize gets its own LANGUAGES


# ---------------------------------------------------------------------------------------------------------------
# plan


@pytest.mark.parametrize("columns", ["80", None], ids=["COLUMNS=80", "piped"])
def test_plan_names_stay_whole_at_80_columns(columns):
    result = invoke("plan", env={"COLUMNS": columns})  # piped, without COLUMNS: rich's 80
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(map(len, lines)) <= 80
    first_cells = {line.split(" ")[0] for line in lines}
    assert set(LLMS) <= first_cells  # each name whole at the start of its row
    assert "remap to" in result.output and "deepseek-coder" in result.output  # the tokenizer work folds, whole words


def test_plan_unknown_source_is_one_line():
    assert_error(invoke("plan", "--from", "Qwen9"), "unknown LLM 'Qwen9'; known: Qwen3-0.6B")


# ---------------------------------------------------------------------------------------------------------------
# swap


def test_swap_with_random_weights_says_so_loudly(base, tmp_path):
    out = tmp_path / "swapped"
    result = invoke("swap", "--model", base, "--llm", "Llama-3.2-1B", "--random-weights", "tiny", "-o", out)
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("warning: RANDOM WEIGHTS: Llama-3.2-1B")
    assert "RANDOM WEIGHTS" in result.stdout and "llama3" in result.stdout  # the report says it too
    assert (out / "config.json").is_file() and "RANDOM WEIGHTS" in (out / "SWAP_REPORT.md").read_text()

    bridge = tmp_path / "bridge"  # --adaptor, --markers, --boundaries reach swap_llm
    args = ["--adaptor", "bridge", "--markers", "add", "--boundaries", "-o", bridge]
    result = invoke("swap", "--model", base, "--llm", "Qwen3-1.7B", "--random-weights", "tiny", *args)
    assert result.exit_code == 0, result.output
    report = json.loads((bridge / "swap_report.json").read_text())
    assert report["adaptor_strategy"] == "bridge" and set(report["markers"]) == {"placeholder", "start", "end"}
    assert len(report["added_token_ids"]) == 3


def test_swap_with_the_vocab_init_reads_the_clips_of_a_manifest(base, tmp_path, monkeypatch):
    from funasr_swap.swap import swap_llm
    from funasr_swap.vocab_init import VocabInitSettings
    from tests.conftest import write_tone

    # the fit's length is the library's to test (test_vocab_init): here 3 Adam steps instead of the default 600
    monkeypatch.setitem(swap_llm.__kwdefaults__, "vocab", VocabInitSettings(steps=3))
    lines = []
    for i, text in enumerate(["hello world", "the cat sat"]):
        write_tone(tmp_path / f"{i}.wav", 0.8 + 0.2 * i)
        lines.append(json.dumps({"audio": f"{i}.wav", "text": text, "language": "en"}))
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    common = ["swap", "--model", base, "--llm", "Llama-3.2-1B", "--random-weights", "tiny", "--adaptor", "vocab"]
    result = invoke(*common, "--clips", tmp_path / "train.jsonl", "-o", tmp_path / "vocab")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "vocab" / "swap_report.json").read_text())
    assert report["adaptor_strategy"] == "vocab" and report["vocab_init"]["fit_frames"] > 0
    assert_error(invoke(*common, "-o", tmp_path / "none"), "pass clips", alone=False)
    assert not (tmp_path / "none").exists()


def test_swap_refuses_to_overwrite_unless_asked(base, tmp_path):
    out = tmp_path / "swapped"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["swap", "--model", base, "--llm", "Qwen3-1.7B", "--random-weights", "tiny", "-o", out]
    assert_error(invoke(*args), f"-o/--output {out} exists; pass --overwrite to replace it")
    assert files_under(out) == {"keep.txt": b"mine"}
    result = invoke(*args, "--overwrite")
    assert result.exit_code == 0, result.output
    assert (out / "config.json").is_file() and not (out / "keep.txt").exists()


@pytest.mark.parametrize(("where", "relation"), [(".", "is"), ("./inside", "lies inside"), ("..", "holds")])
def test_swap_never_replaces_the_folder_it_reads(base, where, relation):
    before = files_under(base)
    out = base / where
    result = invoke("swap", "--model", base, "--llm", "Llama-3.2-1B", "--random-weights", "tiny", "-o", out,
                    "--overwrite")  # fmt: skip
    assert_error(result, f"-o/--output {out} {relation} --model {base}, which this command reads")
    assert files_under(base) == before


def test_swap_never_replaces_the_llm_folder_it_reads(base, tmp_path):
    result = invoke("swap", "--model", base, "--llm", tmp_path, "-o", tmp_path / "sub")
    assert_error(result, f"lies inside --llm {tmp_path}")


def test_swap_bad_inputs_are_one_line_and_write_nothing(base, tmp_path):
    out = tmp_path / "out"
    no_weights = invoke("swap", "--model", base, "--llm", "Llama-3.2-1B", "-o", out)
    assert_error(no_weights, "--llm Llama-3.2-1B: no such folder, and the registry's Llama-3.2-1B has no weights")
    folder_with_random = invoke("swap", "--model", base, "--llm", tmp_path, "--random-weights", "real", "-o", out)
    assert_error(folder_with_random, f"--random-weights real is for registry names; --llm {tmp_path} is a folder")
    unknown = invoke("swap", "--model", base, "--llm", "Lama-3", "--random-weights", "tiny", "-o", out)
    assert_error(unknown, "unknown LLM 'Lama-3'; known: Qwen3-0.6B")
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    unwritable = invoke("swap", "--model", base, "--llm", "Llama-3.2-1B", "--random-weights", "tiny",
                        "-o", blocked / "out")  # fmt: skip
    assert_error(unwritable, f"{blocked} is a file, not a folder")
    no_free_marker = invoke("swap", "--model", base, "--llm", "DeepSeek-V2-Lite", "--random-weights", "tiny",
                            "--markers", "reuse", "-o", out)  # fmt: skip
    assert_error(no_free_marker, "0 unused special token(s)", alone=False)  # after the base's loading bar
    too_big = invoke("swap", "--model", base, "--llm", "DeepSeek-V3", "--random-weights", "real", "-o", out)
    assert_error(too_big, "GiB available", alone=False)  # MemoryError, before anything is allocated
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # no temporary folder left either


@pytest.mark.parametrize("option", ["--random-weights", "--adaptor", "--markers"])
def test_swap_choices_are_checked(base, tmp_path, option):
    out = tmp_path / "out"
    result = invoke("swap", "--model", base, "--llm", "Llama-3.2-1B", option, "tiy", "-o", out)
    assert result.exit_code == 2 and "Invalid value for" in result.output and "'tiy' is not one of" in result.output
    assert not out.exists()


def test_convert_never_replaces_its_source(base):
    before = files_under(base)
    assert_error(invoke("convert", base, "-o", base, "--overwrite"), f"-o/--output {base} is SRC {base}")
    assert files_under(base) == before


# ---------------------------------------------------------------------------------------------------------------
# transcribe, eval, train


def test_transcribe_prints_or_writes_jsonl(base, manifest, tmp_path):
    clips = sorted(manifest.parent.glob("*.wav"))
    printed = invoke("transcribe", "--model", base, *clips, "--max-new-tokens", "4")
    assert printed.exit_code == 0, printed.output
    assert [line.split("\t")[0] for line in printed.stdout.splitlines()] == list(map(str, clips))
    out = tmp_path / "new" / "transcripts.jsonl"
    written = invoke("transcribe", "--model", base, *clips, "--max-new-tokens", "4", "--language", "en", "-o", out)
    assert written.exit_code == 0, written.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["audio"] for row in rows] == list(map(str, clips)) and rows[0]["audio_seconds"] == 0.4


def test_transcribe_bad_inputs_fail_before_the_model_loads(manifest, tmp_path):
    clip = next(manifest.parent.glob("*.wav"))
    missing_model = tmp_path / "no-model"  # each check below comes first: the model is never looked at
    assert_error(invoke("transcribe", "--model", missing_model, clip, "--language", "klingon"),
                 "unknown language 'klingon'; known: ")  # fmt: skip
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert_error(invoke("transcribe", "--model", missing_model, clip, "-o", blocked / "t.jsonl"), "is a file")
    assert_error(invoke("transcribe", "--model", missing_model, clip, "-o", tmp_path), "is a folder")
    negative = invoke("transcribe", "--model", missing_model, clip, "--max-seconds", "-1")
    assert negative.exit_code == 2 and "--max-seconds" in negative.output


def test_eval_scores_and_writes(base, manifest, tmp_path):
    out = tmp_path / "scores.jsonl"
    result = invoke("eval", "--model", base, "--manifest", manifest, "-o", out)
    assert result.exit_code == 0, result.output
    assert "all" in result.stdout and f"wrote 3 transcript(s) to {out}" in result.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["ref"] for row in rows] == ["one", "two three", "four"]


def test_eval_bad_lines_name_their_line_and_skip_bad_counts_them(base, manifest, tmp_path):
    spelled = with_lines(manifest, tmp_path, {"audio": "clip0.wav", "text": "one<|im_end|>", "language": "en"})
    assert_error(invoke("eval", "--model", base, "--manifest", spelled),
                 f"{spelled}:4: 'text' 'one<|im_end|>' spells the control token '<|im_end|>'", alone=False)  # fmt: skip
    skipped = invoke("eval", "--model", base, "--manifest", spelled, "--skip-bad")
    assert skipped.exit_code == 0, skipped.output
    assert f"{spelled}: skipped 1 bad line(s); the first, line 4: " in skipped.stderr

    too_long = invoke("eval", "--model", base, "--manifest", manifest, "--max-seconds", "0.5")
    assert_error(too_long, f"{manifest}:2: audio ", alone=False)
    assert "longer than --max-seconds 0.5; split it" in too_long.stderr


def test_eval_unwritable_output_fails_before_the_model_loads(manifest, tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    result = invoke("eval", "--model", tmp_path / "no-model", "--manifest", manifest, "-o", blocked / "s.jsonl")
    assert_error(result, f"{blocked} is a file, not a folder")


def test_train_passes_the_library_defaults(base, manifest, tmp_path):
    out = tmp_path / "run"
    given = ["--steps", "2", "--batch-size", "2", "--warmup", "0", "--eval-every", "0", "--save-every", "0",
             "--lora-r", "2"]  # fmt: skip
    result = invoke("train", "--model", base, "--train", manifest, "-o", out, *given)
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "checkpoint-2" / STATE_FILE).read_text())["config"]
    library = TrainConfig(output_dir=out).to_dict()
    for field in set(library) - {"output_dir", "max_steps", "batch_size", "warmup_steps", "eval_every",
                                 "save_every", "lora"}:  # fmt: skip
        assert saved[field] == library[field], field
    assert saved["lora"] == dataclasses.asdict(LoraSettings(r=2))  # target_modules None: the registry's targets


def test_train_bad_inputs_fail_before_any_work(base, manifest, tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    missing_model = tmp_path / "no-model"
    args = ["train", "--model", missing_model, "--train", manifest]
    assert_error(invoke(*args, "-o", blocked / "run"), f"{blocked} is a file, not a folder")
    assert_error(invoke(*args, "-o", tmp_path / "run", "--audio-cache", "fbank"),
                 "--audio-cache fbank: choose one of none, features, encoder")  # fmt: skip
    assert not (tmp_path / "run").exists()
    spelled = with_lines(manifest, tmp_path, {"audio": "clip1.wav", "text": "<|object_ref_start|>", "language": "en"})
    result = invoke("train", "--model", base, "--train", spelled, "-o", tmp_path / "run")
    assert_error(result, f"{spelled}:4: 'text'", alone=False)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------------------
# demo


def test_demo_without_a_quickstart_says_how_to_build_one(tmp_path):
    assert_error(invoke("demo", "--quickstart", tmp_path / "none"), "funasr-swap quickstart")


def test_demo_serves_the_quickstarts_models_and_test_clips_with_its_options(tmp_path, monkeypatch):
    from demos.config import DemoConfig

    entry = {"name": "base", "llm": "Qwen3-0.6B", "family": "qwen3", "init": "joint", "folder": "base-x/final",
             "test_cer": 0.1, "test_wer": 0.2}  # fmt: skip
    (tmp_path / "models.json").write_text(json.dumps([entry]))
    (tmp_path / "corpus-x").mkdir()
    (tmp_path / "corpus-x" / "test.jsonl").write_text("")
    served = []
    monkeypatch.setattr("demos.compare_app.serve", lambda *args: served.append(args))  # instead of serving forever
    result = invoke("demo", "--quickstart", tmp_path, "--max-seconds", "12", "--port", "7999")
    assert result.exit_code == 0, result.output
    config = DemoConfig(port=7999, max_audio_seconds=12.0)
    assert served.pop() == ([tmp_path / "base-x" / "final"], tmp_path / "corpus-x" / "test.jsonl", config)
    result = invoke("demo", "--model", tmp_path / "a", "--model", tmp_path / "b", "--max-file-size", "1mb")
    assert result.exit_code == 0, result.output
    assert served.pop() == ([tmp_path / "a", tmp_path / "b"], None, DemoConfig(max_file_size="1mb"))  # no examples


@pytest.fixture(scope="module")
def exported(tiny_export) -> Path:
    return tiny_export


@pytest.mark.slow
def test_export_then_transcribe_edge_prints_what_the_model_prints(base, exported, manifest):
    assert sorted(p.name for p in exported.iterdir()) == ["audio.onnx", "edge.json", "llm.gguf"]
    clips = sorted(manifest.parent.glob("*.wav"))
    args = (*clips, "--max-new-tokens", "6", "--language", "en", "--hotword", "tone")
    on_edge, on_torch = invoke("transcribe", "--edge", exported, *args), invoke("transcribe", "--model", base, *args)
    assert on_edge.exit_code == 0 and on_torch.exit_code == 0, on_edge.output + on_torch.output
    assert on_edge.stdout == on_torch.stdout


@pytest.mark.slow
def test_export_bad_inputs_are_one_line_and_write_nothing(base, exported, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_error(invoke("export", empty, "-o", tmp_path / "out"), f"{empty} is not a Fun-ASR-Nano checkpoint")
    assert_error(invoke("export", base, "-o", exported), "exists; pass --overwrite")
    assert_error(invoke("export", base, "-o", base / "edge"), "lies inside MODEL")
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert_error(invoke("export", base, "-o", blocked / "edge"), "is a file")

    from tests.conftest import onnx_stand_in

    def converter_fails(*args, **kwargs):
        raise ValueError("llama.cpp's converter failed on the qwen3 LLM: KeyError: 'x'")

    monkeypatch.setattr("funasr_swap.export.export_onnx", onnx_stand_in)  # its file written: a half-done export
    monkeypatch.setattr("funasr_swap.export.write_gguf", converter_fails)
    assert_error(invoke("export", base, "-o", tmp_path / "half"), "converter failed on the qwen3 LLM", alone=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "empty"]  # nothing half-written beside it
    monkeypatch.delitem(GGUF_FAMILIES, "qwen3")
    assert_error(invoke("export", base, "-o", tmp_path / "x"),
                 f"{base}: llama.cpp's converter is not set up for the 'qwen3' family here", alone=False)  # fmt: skip


def test_transcribe_takes_a_model_or_an_export(base, manifest, tmp_path):
    clip = next(manifest.parent.glob("*.wav"))
    assert_error(invoke("transcribe", clip), "give the model as --model DIR or an export as --edge DIR")
    assert_error(invoke("transcribe", clip, "--model", base, "--edge", tmp_path), "(one of the two)")
    assert_error(invoke("transcribe", clip, "--edge", tmp_path, "--beams", "2"), "--edge decodes greedily")
    assert_error(invoke("transcribe", clip, "--edge", tmp_path), f"{tmp_path} is not an edge export: no edge.json")
