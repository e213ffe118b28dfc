"""Warm starts of a swap, measured: the `fresh`, `bridge` and `vocab` adaptor initialisations of each family's swap
over the quickstart's seed worlds (built by `benchmarks/quickstart_seeds.py`), everything else equal.

    PYTHONPATH=. python benchmarks/warm_start.py --worlds runs/seeds --seeds 0 1 2 --train-seeds 0 1 2 \
        --runs runs/warm_start --out benchmarks/results/warm_start

Per seed, family and initialisation: the valid CER right after the swap (no training: zero-shot) and the
transcripts of the first valid clips; for the seeds of `--train-seeds`, the world's adaptor retraining
(`miniature.retrain_adaptor`, the world's recipe): the validation curve, the steps until the valid CER reaches
`fresh`'s final valid CER, and the final test CER. A swap the world already trained with the same recipe (the
quickstart's default initialisation) is read back from the world, not trained again. Every measured run is kept in
`--runs` (a finished one is read back: the script resumes), and the worlds are only read.

One torch thread by default: the quickstart trains its swaps on one thread each, and a thread count is part of a
run's arithmetic. Writes OUT.json (every run) and OUT.md (per family and initialisation: mean and min-max over seeds).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch
from environment import device_info, write_results  # benchmarks/environment.py: the scripts run from this folder

from funasr_swap.miniature import (
    FAMILY_LLMS,
    MiniatureConfig,
    base_model_folder,
    cached_run,
    load_corpus,
    read_index,
)
from funasr_swap.miniature.config import ADAPTOR_INITS, DEFAULT_FAMILIES
from funasr_swap.miniature.report import build_environment
from funasr_swap.miniature.runs import first_step_at_most, retrain_adaptor, swap_into

TRANSCRIPTS = 3  # valid clips whose zero-shot transcripts are kept
# How the vocab initialisation's settings were chosen (seed 0's Llama-3.2 swap, zero-shot valid CER; one thread)
TRIED = """What was tried for `vocab` (seed 0, Llama-3.2, valid CER right after the swap, 50 clips). The carried
targets fed to the new LLM directly, in place of the adaptor (the fit's ceiling): 31.7% with the CTC blank carried
as the zero vector (the default), 30.4-30.5% with the reading's logits halved or quartered (temperature 0.5, 0.25),
59.7% with the blank left out of the softmax, 45.6% with every frame carried as its most likely token, 40.1% with
blank frames repeating the last token, 30.5% with blank frames zero and the others their most likely token; the
base's frames read by greedy CTC decoding: 12.3%. The new adaptor fitted on those targets (MSE, Adam): from
`fresh`, 128 clips, 300 full-batch steps 51.4% (from `bridge`: 60.3%; lr 1e-2: 80.4%); 600 steps 52.3%; 512
clips, 64 a step, 300 steps at lr 3e-3 55.6%, 600 steps at lr 2e-3 47.7% (the default: relative error 0.077 on
the fitted frames; the swap with its fit took 72-136 s on one shared core). The gap between the fit (47.7%) and its
ceiling (31.7%) is the adaptor's: a standard projector does not land exactly on a mixture of token embeddings."""
MEASURE_FILE = "warm_start.json"


@dataclasses.dataclass(frozen=True)
class World:
    """The folders of one seed's quickstart world (read only)."""

    seed: int
    base: Path
    llms: Path
    corpus: Path
    swaps: dict[tuple[str, str], Path]  # (family, init) -> run folder of a swap the world trained

    @classmethod
    def read(cls, folder: Path, seed: int) -> World:
        index = read_index(folder)
        base = base_model_folder(folder)
        swaps = {(e.family, e.init): (folder / e.folder).parent for e in index if e.init != "joint"}
        return cls(seed, base, next(folder.glob("llm-*")), next(folder.glob("corpus-*")), swaps)


def measure(world: World, family: str, init: str, train: bool, runs: Path, config: MiniatureConfig) -> dict:
    """One swap of `world` into `family` with adaptor initialisation `init`: zero-shot valid CER and transcripts
    and, with `train`, the retraining's curve and test CER (read from the world where it trained this swap)."""
    folder = runs / f"seed-{world.seed}" / f"{family}-{init}"
    cache = folder / MEASURE_FILE
    if cache.is_file():
        record = json.loads(cache.read_text())
        if record["trained"] or not train:
            return record
    from funasr_swap.training import evaluate

    data = load_corpus(world.corpus, config)
    began = time.perf_counter()
    swapped = swap_into(world.base, world.llms / FAMILY_LLMS[family], init, config, clips=data["train"])
    swap_seconds = time.perf_counter() - began
    zero = evaluate(swapped.model, swapped.processor, data["valid"], batch_size=50, loss_fn=None)
    record = {
        "seed": world.seed, "family": family, "init": init, "swap_seconds": swap_seconds,
        "zero_shot_cer": zero.metrics["cer"], "vocab_init": swapped.report.vocab_init,
        "transcripts": [{"ref": u.text, "hyp": h} for u, h in zip(data["valid"], zero.hypotheses[:TRANSCRIPTS])],
        "trained": False,
    }  # fmt: skip
    if train:
        trained = world.swaps.get((family, init))
        run = cached_run(trained) if trained is not None else None
        source = "world" if run is not None else "here"
        if run is None:
            run = retrain_adaptor(swapped, folder / "run", data, config)
        record |= {
            "trained": True, "run_source": source, "start_cer": run.start_cer, "test_cer": run.test_cer,
            "train_seconds": run.seconds,
            "curve": [(r["step"], r["valid/cer"]) for r in run.history if "valid/cer" in r],
        }  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(record, indent=2))
    return record


def summary(records: list[dict]) -> list[dict]:
    """Per family and initialisation: zero-shot valid CER, steps to fresh's final valid CER, test CER over seeds."""
    fresh_final = {
        (r["seed"], r["family"]): r["curve"][-1][1] for r in records if r["trained"] and r["init"] == "fresh"
    }
    rows = []
    for family in dict.fromkeys(r["family"] for r in records):
        for init in dict.fromkeys(r["init"] for r in records):
            mine = [r for r in records if (r["family"], r["init"]) == (family, init)]
            if not mine:
                continue
            trained = [r for r in mine if r["trained"] and (r["seed"], family) in fresh_final]
            row = {
                "family": family, "init": init, "zero_shot": [r["zero_shot_cer"] for r in mine],
                "zero_shot_seeds": [r["seed"] for r in mine], "trained_seeds": [r["seed"] for r in trained],
                "steps_to_fresh_final": [
                    first_step_at_most([(0, r["start_cer"]), *r["curve"]], fresh_final[(r["seed"], family)])
                    for r in trained
                ],
                "test": [r["test_cer"] for r in trained],
                "swap_seconds": [r["swap_seconds"] for r in mine],
            }  # fmt: skip
            rows.append(row)
    return rows


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1%}"
    return f"{statistics.fmean(values):.1%} ({min(values):.1%}-{max(values):.1%})"


def markdown(record: dict) -> str:
    env = record["environment"]
    lines = [
        "# Warm starts of a swap: fresh, bridge and vocab adaptor initialisations over the quickstart's seeds",
        "",
        f"`{record['command']}`",
        "",
        f"Machine: {env['cpu']}, {record['threads']} torch thread(s); torch {env['torch']}, transformers "
        f"{env['transformers']}. Valid CER on the world's {record['config']['valid_utterances']} validation clips; "
        "test CER on its test split. Mean (min-max) over the seeds listed.",
        "",
        "| family | init | valid CER right after the swap | seeds | steps to fresh's final valid CER | test CER "
        "after retraining | trained seeds | swap + init seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in record["summary"]:
        steps = ", ".join("not reached" if s is None else str(s) for s in row["steps_to_fresh_final"]) or "-"
        seeds = ", ".join(map(str, row["zero_shot_seeds"]))
        trained = ", ".join(map(str, row["trained_seeds"])) or "-"
        seconds = statistics.fmean(row["swap_seconds"])
        lines.append(
            f"| {row['family']} | {row['init']} | {_spread(row['zero_shot'])} | {seeds} | {steps} | "
            f"{_spread(row['test'])} | {trained} | {seconds:.0f} |"
        )
    trained = [r for r in record["runs"] if r["trained"]]
    read_back = [f"seed {r['seed']} {r['family']} {r['init']}" for r in trained if r["run_source"] == "world"]
    if read_back:
        lines += ["", "Retraining runs read back from the worlds (the quickstart's own, same recipe and threads): "
                  + ", ".join(read_back) + "; their zero-shot CER was measured here again."]  # fmt: skip
    if trained:
        steps = [step for step, _ in trained[0]["curve"]]
        lines += ["", "Validation curves (valid CER at each evaluation; step 0: right after the swap):", ""]
        lines += ["| seed | family | init | " + " | ".join(f"step {s}" for s in [0, *steps]) + " | test CER |"]
        lines += ["|---" * (len(steps) + 5) + "|"]
        for r in trained:
            cers = " | ".join(f"{c:.1%}" for c in [r["start_cer"], *(c for _, c in r["curve"])])
            lines.append(f"| {r['seed']} | {r['family']} | {r['init']} | {cers} | {r['test_cer']:.1%} |")
    lines += ["", "Zero-shot transcripts (swapped, not retrained; first validation clips of each seed):", ""]
    for r in record["runs"]:
        shown = "; ".join(f"`{t['hyp']}`" for t in r["transcripts"])
        lines.append(f"- seed {r['seed']} {r['family']} {r['init']} ({r['zero_shot_cer']:.1%}): {shown}")
    refs = "; ".join(f"`{t['ref']}`" for t in record["runs"][0]["transcripts"]) if record["runs"] else ""
    lines += ["", f"(references of seed {record['runs'][0]['seed']}: {refs})" if refs else "", ""]
    lines += [TRIED, "", "Settings: `" + json.dumps(record["config"]) + "`", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", type=Path, default=Path("runs/seeds"), help="folder of the worlds (seed-S each)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds measured (zero-shot)")
    parser.add_argument("--train-seeds", type=int, nargs="*", default=[0, 1, 2], help="of those, the ones retrained")
    parser.add_argument("--families", default=",".join(DEFAULT_FAMILIES))
    parser.add_argument("--inits", default=",".join(ADAPTOR_INITS))
    parser.add_argument("--runs", type=Path, default=Path("runs/warm_start"), help="where the measured runs go")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/warm_start"))
    parser.add_argument("--summarise", action="store_true", help="measure nothing: write the results of the runs "
                        "already in --runs (a measurement cut short)")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    families, inits = args.families.split(","), args.inits.split(",")

    records = []
    # seed by seed, retrained or zero-shot only; a run cut short keeps what it measured, and a later run with more
    # --train-seeds retrains what was measured zero-shot only
    for seed, train in [] if args.summarise else [(seed, seed in args.train_seeds) for seed in args.seeds]:
        world = World.read(args.worlds / f"seed-{seed}", seed)
        config = dataclasses.replace(MiniatureConfig(), seed=seed)
        for family in families:
            for init in inits:
                record = measure(world, family, init, train, args.runs, config)
                print(f"seed {seed} {family} {init}: zero-shot {record['zero_shot_cer']:.1%}"
                      + (f", test {record['test_cer']:.1%}" if record["trained"] else ""), flush=True)  # fmt: skip
    for seed in args.seeds:
        for family in families:
            for init in inits:
                cache = args.runs / f"seed-{seed}" / f"{family}-{init}" / MEASURE_FILE
                if cache.is_file():
                    records.append(json.loads(cache.read_text()))

    config = dataclasses.asdict(MiniatureConfig())
    del config["seed"]
    record = {
        "environment": {**device_info("cpu"), **build_environment(args.threads)},
        "threads": args.threads, "config": config, "runs": records, "summary": summary(records),
    }  # fmt: skip
    write_results(args.out, record, markdown)


if __name__ == "__main__":
    main()
