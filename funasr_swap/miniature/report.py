"""The quickstart's report: REPORT.md (one row per run, each adaptor init against fresh, stage times) and cer.png."""

from __future__ import annotations

import dataclasses
import io
import json
import platform
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from funasr_swap.miniature.config import TARGET_CER, MiniatureConfig
from funasr_swap.miniature.runs import RunResult
from tokenmap.io import atomic_write_bytes, atomic_write_lines

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["INIT_CHOICE", "build_environment", "cer_figure", "plot_cer", "write_report"]

# Why the default quickstart trains each family's swap with the bridge adaptor: measured with `--compare-init` on
# the seed-0 world of this recipe (benchmarks/results/quickstart_report_notebooks_world.md).
INIT_CHOICE = (
    "The swaps start from the `bridge` adaptor. Measured with `--compare-init` on the seed-0 world of this recipe, "
    "bridge and fresh end close (test CER bridge / fresh: Llama-3.2 4.6% / 4.9%, Gemma-2 3.3% / 3.0%, DeepSeek-V2 "
    "4.9% / 5.9%, Qwen3-1.7B 3.2% / 4.1%; mean 4.0% / 4.5%: one seed, inside the spread between seeds), and `vocab` "
    "starts far lower (valid CER right after the swap 44-57% against 78-97%) but ends higher (5.5-7.3%; Qwen3 4.1%). "
    "`--compare-init` adds the `fresh` and `vocab` runs and the steps each needs to reach fresh's final CER."
)


def build_environment(threads: int) -> dict[str, str | int]:
    """What a world's numbers depend on besides its settings: the libraries whose arithmetic and voices it uses,
    the processor (its kernels round differently) and the torch threads of the build."""
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)  # fmt: skip
    espeak = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout
    return {
        "torch": torch.__version__, "transformers": transformers.__version__,
        "espeak-ng": espeak.split("Data at")[0].split(":")[-1].strip(), "cpu": cpu, "threads": threads,
    }  # fmt: skip


def write_report(
    output: Path, config: MiniatureConfig, data: dict[str, list], runs: list[RunResult], timings: dict[str, float],
    environment: dict[str, str | int],
) -> Path:  # fmt: skip
    """REPORT.md in `output` (corpus, one row per run, each init against fresh when both ran, stage times, what the
    numbers were made with: `build_environment` and the settings, seed included) and cer.png."""
    hours = sum(u.duration for u in data["train"]) / 3600
    lines = [
        "# The miniature world (funasr-swap quickstart)",
        "",
        f"Corpus: English, espeak-ng; {len(data['train'])} train utterances ({hours:.2f} h), {len(data['valid'])} "
        f"valid (CER during training), {len(data['test'])} test (sentences unseen in train). Target: test CER < "
        f"{TARGET_CER:.0%}.",
        "",
        "| model | LLM | trains | trainable params | steps | train s | valid CER at step 0 | test CER | test WER | "
        f"steps to valid CER < {TARGET_CER:.0%} |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        lora = " + LoRA" if config.adaptor_lora_rank else ""
        trains = "encoder + adaptor + LoRA" if run.strategy == "joint" else f"adaptor ({run.strategy}){lora}"
        start = "" if run.start_cer is None else f"{run.start_cer:.1%}"
        reached = run.steps_to(TARGET_CER - 1e-9)
        lines.append(
            f"| {run.name} | {run.llm} | {trains} | {run.trainable:,} | {run.steps} | {run.seconds:.0f} | {start} | "
            f"{run.test_cer:.1%} | {run.test_wer:.1%} | {reached if reached is not None else 'not reached'} |"
        )
    lines += ["", INIT_CHOICE]
    comparisons = _against_fresh(runs)
    if comparisons:
        lines += ["", "Against fresh (same data, steps and seed):", "", *comparisons]
    lines += ["", "| stage | seconds to build |", "|---|---|"]
    lines += [f"| {stage} | {seconds:.0f} |" for stage, seconds in timings.items()]  # as built, cached or not
    lines += [f"| total | {sum(timings.values()):.0f} |", "", "![validation CER](cer.png)", ""]
    made_with = ", ".join(f"{name} {value}" for name, value in environment.items())
    lines += [f"Made with: {made_with}; seed {config.seed}.", ""]
    lines += ["Settings: `" + json.dumps(dataclasses.asdict(config)) + "`"]
    plot_cer(runs, output / "cer.png")
    return atomic_write_lines(output / "REPORT.md", lines)


def _against_fresh(runs: list[RunResult]) -> list[str]:
    """One line per family and adaptor initialisation trained beside `fresh`: test CERs and the steps to fresh's
    final validation CER (step 0: right after the swap)."""
    by_name = {run.name: run for run in runs}
    lines = []
    for family in dict.fromkeys(run.family for run in runs if run.strategy != "joint"):
        fresh = by_name.get(f"{family} fresh")
        others = [run for run in runs if run.family == family and run.strategy not in ("joint", "fresh")]
        if fresh is None:
            continue
        final = [r["valid/cer"] for r in fresh.history if "valid/cer" in r][-1]
        fresh_steps = fresh.steps_to(final)
        for other in others:
            steps = other.steps_to(final)
            init = other.strategy
            if steps is None:
                reached = f"reached by fresh at step {fresh_steps}, never by {init}: no speed-up"
            else:
                reached = f"reached at step {steps} ({init}) vs {fresh_steps} (fresh)"
                reached += f": speed-up {fresh_steps / steps:.2f}x" if steps else ""
            lines.append(
                f"- {family}: test CER {other.test_cer:.1%} ({init}) vs {fresh.test_cer:.1%} (fresh) after "
                f"{fresh.steps} steps; valid CER right after the swap {other.start_cer:.1%} ({init}) vs "
                f"{fresh.start_cer:.1%} (fresh); fresh's final validation CER {final:.1%} {reached}"
            )
    return lines


def cer_figure(runs: list[RunResult]) -> Figure:
    """Validation CER against step: the base on the left, the swaps (fresh dashed, vocab dotted) on the right."""
    from funasr_swap.figures import Figure  # not pyplot (a notebook backend switch); a PNG in any notebook

    fig = Figure(figsize=(11, 4), layout="tight")
    ax_base, ax_swap = fig.subplots(1, 2)
    for run in runs:
        points = run.valid_curve
        ax = ax_base if run.strategy == "joint" else ax_swap
        style = {"fresh": "--", "vocab": ":"}.get(run.strategy, "-")
        ax.plot(*zip(*points), style, marker="o", markersize=3, label=run.name)
    for ax, title in ((ax_base, "base (joint)"), (ax_swap, "swaps (adaptor retraining)")):
        ax.axhline(TARGET_CER, color="grey", linewidth=0.8)
        ax.set(xlabel="step", ylabel="validation CER", title=title, ylim=(0, None))
        ax.legend(fontsize=8)
    return fig


def plot_cer(runs: list[RunResult], path: Path) -> None:
    """`cer_figure` of `runs` written to `path` (PNG)."""
    buffer = io.BytesIO()
    cer_figure(runs).savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())
