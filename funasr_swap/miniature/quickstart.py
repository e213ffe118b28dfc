"""`funasr-swap quickstart`: the miniature world built stage by stage, cached, with its report and model index.

Stages (the package docstring says what each is): corpus, tiny LLMs, base, swaps, report. Each is cached in a folder
named by a hash of the settings it depends on, so a rerun reuses what was built and an interrupted training resumes
from its checkpoint. `models.json` indexes the models built (name, LLM, family, adaptor init, folder, test CER):
notebooks and the demo read it with `read_index` instead of hard-coding hashed folder names.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from funasr_swap.llms import BASE_LLM
from funasr_swap.miniature.config import (
    DEFAULT_FAMILIES,
    FAMILY_LLMS,
    FULL_WORLD_MINUTES,
    QUICK,
    MiniatureConfig,
    resolve_families,
)
from funasr_swap.miniature.copy_task import pretrain_llm
from funasr_swap.miniature.report import build_environment, write_report
from funasr_swap.miniature.runs import RESULT_FILE, RunResult, in_worker, load_corpus, train_base, train_swap
from tokenmap.io import atomic_write_lines

__all__ = [
    "DEFAULT_OUTPUT", "INDEX_FILE", "MODEL_DIR", "NAMED_WORLDS", "ModelEntry", "World", "WorldFolders",
    "available_cores", "base_model_folder", "held_out_manifest", "open_world", "read_index", "run_quickstart",
    "world_folders",
]  # fmt: skip

DEFAULT_OUTPUT = "runs/quickstart"  # where the quickstart builds its world unless told otherwise (its CLI's -o)
INDEX_FILE = "models.json"
MODEL_DIR = "final"  # the model folder inside a run folder (funasr_swap.training's final save)

# What each stage depends on: its folder's name is a hash of these settings (and of the stages before it).
CORPUS_FIELDS = ("utterances", "seed")
LLM_FIELDS = (*CORPUS_FIELDS, "lm_steps", "lm_batch_size", "lm_lr", "target_width")
BASE_FIELDS = (
    *LLM_FIELDS, "valid_utterances", "encoder_hidden", "encoder_layers", "encoder_heads", "encoder_dropout",
    "projector_hidden",
    "base_steps", "base_lr", "base_eval_every", "base_ctc_weight", "lora_rank", "batch_size", "warmup_steps",
)  # fmt: skip
SWAP_FIELDS = (
    *BASE_FIELDS, "adaptor_steps", "adaptor_lr", "adaptor_eval_every", "adaptor_lora_rank", "adaptor_ctc_weight",
    "adaptor_batch_size",
)  # fmt: skip

# Bumped when the code changes what a stage builds from the same settings (2: DeepSeek's MLA at width / 4, LoRA on
# its KV projections; 3: features on the original's int16 scale, runs record their family; 4: the copy task's
# prompt prefix computed once per batch, every training on one torch thread), so that an older cache is not read as
# this version's.
CACHE_VERSION = 4


def _key(config: MiniatureConfig, fields: Sequence[str], *extra: str) -> str:
    """A short hash naming a cached stage folder: it changes when a setting the stage depends on does."""
    settings = [getattr(config, name) for name in fields]
    return hashlib.sha1(json.dumps([CACHE_VERSION, settings, extra]).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class WorldFolders:
    """Where each stage of a world is cached (folders named by a hash of the settings they depend on)."""

    corpus: Path  # the corpus' clips and manifests (train/valid/test.jsonl)
    llms: Path  # one folder per pretrained tiny LLM, named by its registry name (`llm`)
    base: Path  # the base's training run; its model is `base / MODEL_DIR`

    def llm(self, name: str) -> Path:
        """The pretrained tiny LLM `name` (`BASE_LLM` or a `FAMILY_LLMS` value)."""
        return self.llms / name


def world_folders(output: str | os.PathLike, config: MiniatureConfig = MiniatureConfig()) -> WorldFolders:
    """The stage folders of the world built with `config` in `output`: what a notebook opens a stage with, rather
    than a hashed folder name."""
    output = Path(output)
    return WorldFolders(
        corpus=output / f"corpus-{_key(config, CORPUS_FIELDS)}",
        llms=output / f"llm-{_key(config, LLM_FIELDS)}",
        base=output / f"base-{_key(config, BASE_FIELDS)}",
    )


@dataclass(frozen=True)
class ModelEntry:
    """One model the quickstart built, as `models.json` lists it."""

    name: str  # "base", "llama3 bridge", ...
    llm: str  # registry name of its (tiny) LLM
    family: str  # chat family (tokenmap.families)
    init: str  # "joint" for the base, else the swap's adaptor initialisation
    folder: str  # the model folder, relative to the quickstart's output folder
    test_cer: float
    test_wer: float


def read_index(output: str | os.PathLike = DEFAULT_OUTPUT) -> list[ModelEntry]:
    """The models a finished quickstart in `output` built (its `models.json`), base first; each entry's `folder`
    is relative to `output`. FileNotFoundError saying how to build them when there is no index."""
    path = Path(output) / INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `funasr-swap quickstart -o {output}` (--quick: 1 minute)")
    return [ModelEntry(**entry) for entry in json.loads(path.read_text())]


def base_model_folder(output: str | os.PathLike = DEFAULT_OUTPUT) -> Path:
    """The base's model folder of the finished quickstart in `output` (its index's jointly trained model)."""
    return next(Path(output) / entry.folder for entry in read_index(output) if entry.init == "joint")


def held_out_manifest(output: str | os.PathLike = DEFAULT_OUTPUT) -> Path:
    """The manifest of the held-out test clips the quickstart in `output` scored its models on (its corpus folder's
    `test.jsonl`). FileNotFoundError when there is none; ValueError naming them when `output` holds the corpora of
    several settings (a `--quick` and a full run in one folder), which only the caller can choose between."""
    found = sorted(Path(output).glob("corpus-*/test.jsonl"))
    if not found:
        raise FileNotFoundError(f"{output} holds no quickstart corpus (corpus-*/test.jsonl): run `funasr-swap "
                                f"quickstart -o {output}`")  # fmt: skip
    if len(found) > 1:
        raise ValueError(f"{output} holds {len(found)} quickstart corpora ({', '.join(map(str, found))}); name one")
    return found[0]


# The worlds notebooks and the demo open by name: the quickstart's (`funasr-swap quickstart`, whose default output
# folder it shares) and the minute-long one CI runs them on (`--quick`): folder names under a runs folder, settings,
# and what building one from nothing takes on 2 CPU cores.
NAMED_WORLDS: dict[str, tuple[str, MiniatureConfig, str]] = {
    "full": ("quickstart", MiniatureConfig(), f"about {FULL_WORLD_MINUTES} minutes"),
    "quick": ("quick", QUICK, "about a minute"),
}


@dataclass(frozen=True)
class World:
    """A built miniature world: its folder, its settings and the models its index lists (base first)."""

    output: Path
    config: MiniatureConfig
    models: list[ModelEntry]

    @property
    def folders(self) -> WorldFolders:
        return world_folders(self.output, self.config)

    def model_folder(self, name: str) -> Path:
        """The folder of the model `name` ("base", "llama3 bridge", ...); KeyError naming the models built."""
        for entry in self.models:
            if entry.name == name:
                return self.output / entry.folder
        raise KeyError(f"no model {name!r} in {self.output}; built: {', '.join(m.name for m in self.models)}")

    def data(self) -> dict[str, list]:
        """The corpus' utterances per split (`load_corpus`)."""
        return load_corpus(self.folders.corpus, self.config)


def open_world(
    name: str = "full",
    families: Sequence[str] = DEFAULT_FAMILIES,
    *,
    runs: str | os.PathLike = "runs",
    compare_init: bool = False,
    log: Callable[[str], None] = print,
) -> World:
    """The miniature world `name` ("full": the quickstart's, in `runs/quickstart`; "quick": a minute-long one for
    tests, in `runs/quick`) with a swap into each of `families` (and from both adaptor initialisations when
    `compare_init`). What is missing is built first (`run_quickstart`: cached stages are reused, the models already
    listed stay listed), and `log` says so. What the notebooks open the world with."""
    if name not in NAMED_WORLDS:
        raise KeyError(f"unknown world {name!r}; choose from {', '.join(NAMED_WORLDS)}")
    folder, config, duration = NAMED_WORLDS[name]
    output, config = Path(runs) / folder, replace(config, compare_init=compare_init)
    wanted = resolve_families(families)
    index = read_index(output) if (output / INDEX_FILE).is_file() else []
    built = {(m.family, m.init) for m in index if m.init != "joint"}
    missing = [f"{f} {init}" for f in wanted for init in config.adaptor_inits if (f, init) not in built]
    if missing or not index:
        new = f" (a new world: {duration} on 2 CPU cores)"
        log(f"[world] building {', '.join(missing)} in {output}" + ("" if index else new))
        families = list(dict.fromkeys([m.family for m in index if m.init != "joint"] + wanted))
        compare_init = compare_init or len({m.init for m in index} - {"joint"}) > 1
        run_quickstart(output, families, replace(config, compare_init=compare_init), log=log)
        index = read_index(output)
    return World(output, config, index)


def _write_index(output: Path, runs: list[tuple[RunResult, Path]]) -> Path:
    entries = [
        ModelEntry(run.name, run.llm, run.family, run.strategy, str((folder / MODEL_DIR).relative_to(output)),
                   run.test_cer, run.test_wer)
        for run, folder in runs
    ]  # fmt: skip
    return atomic_write_lines(output / INDEX_FILE, [json.dumps([asdict(e) for e in entries], indent=2)])


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, which a container or `taskset` narrows)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_quickstart(
    output: str | os.PathLike = DEFAULT_OUTPUT,
    families: Sequence[str] = DEFAULT_FAMILIES,
    config: MiniatureConfig = MiniatureConfig(),
    *,
    jobs: int = 3,
    log: Callable[[str], None] = print,
) -> Path:
    """Build the miniature world in `output` and write `REPORT.md`, `cer.png` and `models.json` there; returns the
    report's path.

    `families`: target families or their LLMs' registry names (`resolve_families`). Every training runs in a process
    of one torch thread (float rounding depends on the thread count), so a rerun gives the same numbers on the same
    processor, whatever its number of cores and whatever else it is doing; the cores only decide how many run side
    by side:

        LLMs + base   this process pretrains the base's LLM and then trains the base; beside it, the target LLMs are
                      pretrained in workers (one per core left, at least one; on 2 cores one after another, which
                      ends about when the base does)
        swaps         `jobs` workers side by side (on 2 cores three finish sooner than two, then one), each writing
                      its progress to a `log.txt`
    """
    from funasr_swap.synth import synthesize

    families = resolve_families(families)
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    output = Path(output)
    timings: dict[str, float] = {}  # stage -> seconds it took when it was built (this run or an earlier one)
    built_times_file = output / "build_seconds.json"
    built_times = json.loads(built_times_file.read_text()) if built_times_file.is_file() else {}

    def timed(stage: str, key: str, began: float, built: bool) -> None:
        if built or key not in built_times:
            built_times[key] = time.perf_counter() - began
            atomic_write_lines(built_times_file, [json.dumps(built_times, indent=2)])
        timings[stage] = built_times[key]
        log(f"[quickstart] {stage}: {timings[stage]:.0f} s" + ("" if built else " (when built)"))

    # 1. corpus (synthesize reuses clips; the manifests, written last, mark a complete corpus)
    began = time.perf_counter()
    folders = world_folders(output, config)
    corpus = folders.corpus
    corpus_cached = (corpus / "test.jsonl").is_file()
    if corpus_cached:
        log(f"[quickstart] corpus: cached in {corpus}")
    else:
        log(f"[quickstart] synthesizing {config.utterances} utterances into {corpus}")
        synthesize(corpus, config.utterances, ("en",), seed=config.seed, progress=False)
    data = load_corpus(corpus, config)
    timed("corpus", corpus.name, began, built=not corpus_cached)

    spawn = multiprocessing.get_context("spawn")
    # 2. tiny LLMs on the copy task over the train transcripts (valid and test sentences stay unseen), and the base
    began = time.perf_counter()
    llm_root, base_dir = folders.llms, folders.base
    targets = [FAMILY_LLMS[f] for f in families]
    missing = [name for name in targets if not (llm_root / name).is_dir()]
    for name in [BASE_LLM, *targets]:
        if (llm_root / name).is_dir():
            log(f"[quickstart] pretrain {name}: cached in {llm_root / name}")
    base_cached = (base_dir / RESULT_FILE).is_file()
    main_threads = torch.get_num_threads()
    with ProcessPoolExecutor(max(1, min(len(missing), available_cores() - 1)), mp_context=spawn) as pool:
        pretraining = {
            name: pool.submit(
                in_worker, llm_root / f"{name}.log.txt", 1, _pretrain, name, llm_root / name, data, config
            )
            for name in missing
        }
        torch.set_num_threads(1)
        try:
            if not (llm_root / BASE_LLM).is_dir():
                log(f"[quickstart] pretraining {BASE_LLM}" + (f", and beside it {', '.join(missing)}" * bool(missing)))
                _pretrain(BASE_LLM, llm_root / BASE_LLM, data, config)
                _log_pretrained(llm_root / BASE_LLM, log)
            log(f"[quickstart] base: training in {base_dir}" + (" (cached)" if base_cached else ""))
            runs = [(train_base(base_dir, llm_root / BASE_LLM, data, config), base_dir)]
        finally:
            torch.set_num_threads(main_threads)
        log(f"[quickstart] base: test CER {runs[0][0].test_cer:.1%}")
        for name, future in pretraining.items():
            future.result()
            _log_pretrained(llm_root / name, log)
    key = f"{llm_root.name}/{'+'.join([BASE_LLM, *targets])}+{base_dir.name}"
    timed("LLM pretraining and base", key, began, built=bool(missing) or not base_cached)

    # 3. swaps, one per family and adaptor initialisation, side by side
    began = time.perf_counter()
    swaps: dict[Path, Future] = {}
    with ProcessPoolExecutor(jobs, mp_context=spawn) as pool:
        for family in families:
            for strategy in config.adaptor_inits:
                folder = output / f"swap-{_key(config, SWAP_FIELDS, family, strategy)}"
                cached = (folder / RESULT_FILE).is_file()
                log(f"[quickstart] {family} {strategy}: adaptor retraining in {folder}" + (" (cached)" * cached))
                swaps[folder] = pool.submit(
                    in_worker, folder / "log.txt", 1, train_swap, base_dir / MODEL_DIR, llm_root / FAMILY_LLMS[family],
                    family, strategy, folder, corpus, config,
                )  # fmt: skip
        swaps_cached = all((folder / RESULT_FILE).is_file() for folder in swaps)
        for folder, future in swaps.items():
            runs.append((run := future.result(), folder))
            log(f"[quickstart] {run.name}: valid CER {run.start_cer:.1%} at step 0, test {run.test_cer:.1%}")
    timed("swaps", f"swaps-{_key(config, SWAP_FIELDS, *families, *config.adaptor_inits)}", began, not swaps_cached)

    report = write_report(output, config, data, [run for run, _ in runs], timings, build_environment(1))
    _write_index(output, runs)  # last: the index lists finished models only
    log(f"[quickstart] report: {report}")
    return report


def _pretrain(name: str, folder: Path, data: dict[str, list], config: MiniatureConfig) -> Path:
    """Copy-task pretraining of the tiny LLM `name` into `folder` (written atomically: a folder there is a finished
    one), on the train transcripts; its copy accuracy measured on the valid ones."""
    return pretrain_llm(
        name, [u.text for u in data["train"]], folder, width=64 if name == BASE_LLM else config.target_width,
        steps=config.lm_steps, batch_size=config.lm_batch_size, lr=config.lm_lr, seed=config.seed,
        eval_texts=[u.text for u in data["valid"]],
    )  # fmt: skip


def _log_pretrained(folder: Path, log: Callable[[str], None]) -> None:
    record = json.loads((folder / "PRETRAIN.json").read_text())
    log(f"[quickstart] pretrained {folder.name}: copy accuracy {record.get('copy_accuracy', 0):.1%}, "
        f"{record['world_tokens']} world tokens, {record['seconds']:.0f} s")  # fmt: skip
