"""The miniature world: the whole swap pipeline, end to end, on a model small enough for 2 CPU cores.

Real checkpoints are gigabytes; the miniature is built locally from real parts (`funasr-swap quickstart`), one
module per stage, each callable by name (the notebooks do):

    1. corpus   English sentences spoken by espeak-ng (`funasr_swap.synth`); test sentences are unseen in train
    2. LLMs     `copy_task.pretrain_llm`: a tiny LLM per family (real class, real tokenizer, real vocabulary size),
                pretrained on a copy task so that it reads its context as a real LLM reads its prompt
    3. base     `runs.train_base`: tiny Fun-ASR-Nano (SAN-M encoder + adaptor + the pretrained tiny Qwen3) trained
                jointly (encoder, adaptor, LoRA on the LLM) with `funasr_swap.training`
    4. swaps    `runs.train_swap`: `swap_llm` into each target family's tiny LLM (Llama-3.2, Gemma-2 and
                DeepSeek-V2-Lite by default; Qwen3-1.7B, the same family wider, when asked for); the encoder
                frozen, the adaptor retrained with LoRA on the frozen LLM and a CTC loss that pulls the adaptor's
                frames onto the new LLM's token embeddings (`world_loss.adaptor_ctc_loss`)
    5. report   `report.write_report`: REPORT.md and cer.png; `quickstart.read_index` lists the models built,
                `quickstart.open_world` builds what a notebook needs and is missing, `quickstart.held_out_manifest`
                the test clips the models were scored on

Every tiny LLM's vocabulary is zero outside the tokens its world uses, and `world_loss.WorldLoss` computes the
full-vocabulary loss exactly from the world rows: what makes the miniature train on 2 cores. DeepSeek-V2's attention
reads keys and values through a low-rank projection (MLA): with a rank of width / 8 and LoRA on its query and output
projections only, its swaps stalled at 20% test CER after 1,000 steps; at the real model's proportions (rank and head
dimensions of width / 4) and with LoRA on `kv_a_proj_with_mqa` and `kv_b_proj` too, they reach 10-12%.
"""

from funasr_swap.miniature.config import (
    DEFAULT_FAMILIES,
    FAMILY_LLMS,
    QUICK,
    TARGET_CER,
    MiniatureConfig,
    resolve_families,
)
from funasr_swap.miniature.copy_task import pretrain_llm
from funasr_swap.miniature.quickstart import (
    MODEL_DIR,
    NAMED_WORLDS,
    ModelEntry,
    World,
    WorldFolders,
    base_model_folder,
    held_out_manifest,
    open_world,
    read_index,
    run_quickstart,
    world_folders,
)
from funasr_swap.miniature.report import write_report
from funasr_swap.miniature.runs import (
    RunResult,
    build_base,
    cached_run,
    load_corpus,
    retrain_adaptor,
    swap_into,
    train_base,
    train_swap,
)
from funasr_swap.miniature.world_loss import WorldLoss, adaptor_ctc_loss, world_cross_entropy

__all__ = [
    "DEFAULT_FAMILIES",
    "FAMILY_LLMS",
    "MODEL_DIR",
    "NAMED_WORLDS",
    "QUICK",
    "TARGET_CER",
    "MiniatureConfig",
    "ModelEntry",
    "RunResult",
    "World",
    "WorldFolders",
    "WorldLoss",
    "adaptor_ctc_loss",
    "base_model_folder",
    "build_base",
    "cached_run",
    "held_out_manifest",
    "load_corpus",
    "open_world",
    "pretrain_llm",
    "read_index",
    "resolve_families",
    "retrain_adaptor",
    "run_quickstart",
    "swap_into",
    "train_base",
    "train_swap",
    "world_cross_entropy",
    "world_folders",
    "write_report",
]
