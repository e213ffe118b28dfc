"""The quickstart over seeds: each seed's miniature world built from nothing, then every model scored again on a
corpus spoken with a synthesis seed none of the worlds saw.

    PYTHONPATH=. python benchmarks/quickstart_seeds.py --seeds 0 1 2 --runs runs/seeds \
        --out benchmarks/results/quickstart_seeds

A world's result depends on float rounding, which differs between processors; seeds are the cheap stand-in for
that noise, so the quickstart's figure is a range over seeds, not one run. Each world is a `funasr-swap quickstart
--seed S` in a process of its own (`--parallel` of them side by side on a machine with the cores for it: every
training runs on one torch thread, so a world's numbers do not depend on what runs beside it, only its wall time
does), timed by wall clock and CPU seconds (the process and its workers, from `os.wait4`).

Writes OUT.json (every run: settings, machine, per world and model the test CER, the unseen-corpus CER, the steps to
15% validation CER, wall and CPU seconds) and OUT.md (per model: mean and min-max over the seeds).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from environment import device_info, write_results  # benchmarks/environment.py: the scripts run from this folder

from funasr_swap.miniature import TARGET_CER, MiniatureConfig, cached_run, read_index, run_quickstart
from funasr_swap.miniature.config import DEFAULT_FAMILIES
from funasr_swap.miniature.quickstart import INDEX_FILE, available_cores
from funasr_swap.miniature.report import build_environment

UNSEEN_UTTERANCES = 200  # as many as a world's test split


def parse_overrides(pairs: list[str]) -> dict:
    """`MiniatureConfig` fields from `name=value` pairs (values parsed as JSON: numbers, true/false)."""
    fields = {f.name: f for f in dataclasses.fields(MiniatureConfig)}
    overrides = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in fields:
            raise SystemExit(f"--set {pair}: no MiniatureConfig field {name!r}; fields: {', '.join(fields)}")
        overrides[name] = json.loads(value)
    return overrides


def build_world(folder: Path, seed: int, overrides: dict, families: list[str]) -> None:
    """One world, in this process (what each child runs)."""
    config = dataclasses.replace(MiniatureConfig(), seed=seed, **overrides)
    run_quickstart(folder, families, config)


def score_unseen(world: Path, corpus: Path) -> dict[str, float]:
    """Test CER of every model of `world` on the manifest `corpus`."""
    from funasr_swap.convert import load_base
    from funasr_swap.data import load_manifest
    from funasr_swap.training import evaluate

    utterances = load_manifest(corpus).utterances
    scores = {}
    for entry in read_index(world):
        model, processor = load_base(world / entry.folder)
        scores[entry.name] = evaluate(model, processor, utterances, batch_size=50, loss_fn=None).metrics["cer"]
    return scores


def world_rows(world: Path) -> dict[str, dict]:
    """Per model of `world`: test CER and the first validation step at which its CER is under the target."""
    rows = {}
    for entry in read_index(world):
        run = cached_run((world / entry.folder).parent)
        rows[entry.name] = {"test_cer": entry.test_cer, "steps_to_target": run.steps_to(TARGET_CER - 1e-9)}
    return rows


def summary(worlds: list[dict]) -> list[dict]:
    """Per model: mean, min and max over the worlds of the test and unseen-corpus CERs, and the steps to target."""
    rows = []
    for name in worlds[0]["models"]:
        test = [w["models"][name]["test_cer"] for w in worlds]
        unseen = [w["models"][name]["unseen_cer"] for w in worlds]
        steps = [w["models"][name]["steps_to_target"] for w in worlds]
        rows.append({
            "model": name, "test_mean": statistics.fmean(test), "test_min": min(test), "test_max": max(test),
            "test_median": statistics.median(test), "unseen_mean": statistics.fmean(unseen),
            "unseen_min": min(unseen), "unseen_max": max(unseen), "steps_to_target": steps,
        })  # fmt: skip
    return rows


def markdown(record: dict) -> str:
    def pct(x: float) -> str:
        return f"{x:.1%}"

    env, worlds = record["environment"], record["worlds"]
    lines = [
        f"# The quickstart over seeds {', '.join(str(w['seed']) for w in worlds)}",
        "",
        f"`{record['command']}`",
        "",
        f"Machine: {env['cpu']}, {record['cores']} cores, one torch thread per training process, "
        f"{record['parallel']} world(s) at a time; torch {env['torch']}, transformers {env['transformers']}, "
        f"espeak-ng {env['espeak-ng']}. "
        f"Unseen corpus: {UNSEEN_UTTERANCES} utterances spoken with synthesis seed {record['unseen_seed']}.",
        "",
        f"| model | test CER mean | min-max | median | unseen-corpus CER mean | min-max | steps to valid CER < "
        f"{TARGET_CER:.0%} |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in record["summary"]:
        steps = ", ".join("not reached" if s is None else str(s) for s in row["steps_to_target"])
        lines.append(
            f"| {row['model']} | {pct(row['test_mean'])} | {pct(row['test_min'])}-{pct(row['test_max'])} | "
            f"{pct(row['test_median'])} | {pct(row['unseen_mean'])} | {pct(row['unseen_min'])}-"
            f"{pct(row['unseen_max'])} | {steps} |"
        )
    lines += ["", "| seed | wall | CPU seconds | " + " | ".join(worlds[0]["models"]) + " |"]
    lines += ["|---" * (3 + len(worlds[0]["models"])) + "|"]
    for w in worlds:
        cers = " | ".join(f"{pct(m['test_cer'])} / {pct(m['unseen_cer'])}" for m in w["models"].values())
        times = "built earlier | -" if w.get("reused") else f"{w['wall_seconds'] / 60:.1f} min | {w['cpu_seconds']:.0f}"
        lines.append(f"| {w['seed']} | {times} | {cers} |")
    lines += ["", "(per seed: test CER / unseen-corpus CER)", ""]
    lines += ["Settings: `" + json.dumps(record["config"]) + "`", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", type=Path, default=Path("runs/seeds"), help="folder of the worlds (seed-S each)")
    parser.add_argument("--parallel", type=int, default=1, help="worlds built side by side")
    parser.add_argument("--families", default=",".join(DEFAULT_FAMILIES))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="a MiniatureConfig field changed from the default (repeatable)")  # fmt: skip
    parser.add_argument("--unseen-seed", type=int, default=1000, help="synthesis seed of the unseen corpus")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/quickstart_seeds"))
    parser.add_argument("--world", type=int, help=argparse.SUPPRESS)  # a child: build the world of this seed
    args = parser.parse_args()
    overrides, families = parse_overrides(args.overrides), args.families.split(",")
    if args.world is not None:
        return build_world(args.runs / f"seed-{args.world}", args.world, overrides, families)

    from funasr_swap.synth import synthesize

    args.runs.mkdir(parents=True, exist_ok=True)
    worlds, pending, reused = [], list(args.seeds), {}
    running: dict[int, tuple[int, float]] = {}  # pid -> (seed, start)
    while pending or running:
        while pending and len(running) < args.parallel:
            seed = pending.pop(0)
            reused[seed] = (args.runs / f"seed-{seed}" / INDEX_FILE).is_file()  # built earlier: its times are not here
            log = (args.runs / f"seed-{seed}.log.txt").open("w")
            child = subprocess.Popen(
                [sys.executable, __file__, "--world", str(seed), "--runs", str(args.runs), "--families",
                 args.families, *(f"--set={pair}" for pair in args.overrides)],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            running[child.pid] = (seed, time.perf_counter())
            print(f"seed {seed}: building in {args.runs / f'seed-{seed}'} (log: {log.name})", flush=True)
        pid, status, usage = os.wait4(-1, 0)  # the child's CPU time includes its workers'
        seed, began = running.pop(pid)
        if status:
            raise SystemExit(f"seed {seed}: the build failed (exit {status >> 8}); see {args.runs}/seed-{seed}.log.txt")
        world = {"seed": seed, "reused": reused[seed], "wall_seconds": time.perf_counter() - began,
                 "cpu_seconds": usage.ru_utime + usage.ru_stime}  # fmt: skip
        print(f"seed {seed}: {world['wall_seconds']:.0f} s wall, {world['cpu_seconds']:.0f} CPU s", flush=True)
        worlds.append(world)
    worlds.sort(key=lambda w: w["seed"])

    unseen = args.runs / f"unseen-{args.unseen_seed}"
    if not (unseen / "test.jsonl").is_file():
        # test_fraction < 1 (a corpus has a train split): half of it, unused, pays for the test half
        synthesize(unseen, 2 * UNSEEN_UTTERANCES, ("en",), seed=args.unseen_seed, valid_fraction=0.0,
                   test_fraction=0.5, progress=False)  # fmt: skip
    for world in worlds:
        folder = args.runs / f"seed-{world['seed']}"
        world["models"] = world_rows(folder)
        for name, cer in score_unseen(folder, unseen / "test.jsonl").items():
            world["models"][name]["unseen_cer"] = cer

    config = dataclasses.asdict(dataclasses.replace(MiniatureConfig(), **overrides))
    del config["seed"]
    record = {
        "environment": {**device_info("cpu"), **build_environment(1)},
        "cores": available_cores(), "parallel": args.parallel, "unseen_seed": args.unseen_seed, "config": config,
        "worlds": worlds, "summary": summary(worlds),
    }  # fmt: skip
    write_results(args.out, record, markdown)


if __name__ == "__main__":
    main()
