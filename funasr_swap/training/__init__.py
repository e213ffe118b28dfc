"""Retrain a Fun-ASR-Nano after a swap. One module per concept:

recipe        `train`: the loop, read top to bottom (torchtune's recipe shape), and `TrainResult`
step          `TrainingStep` (one optimizer step, which the recipe and the benchmarks run), what trains
              (`setup_trainable`), the loss (`supervised_loss`), the optimizer, compiled layers
checkpoints   `save_checkpoint` / `load_checkpoint`: exact resume after a kill
distributed   DDP or FSDP2 through Accelerate (`make_accelerator`), whole tensors from shards
data_order    `BatchPlan`: the seeded order of length-bucketed batches, a position in it
evaluation    `evaluate`: the loss, CER and WER
config        `TrainConfig`, `LoraSettings`
history       metrics.jsonl read back and drawn, `LiveTrainingPlot` for notebooks

from funasr_swap.training import TrainConfig, train
train(model, processor, train_data, valid_data, TrainConfig(output_dir="runs/llama"))
"""

from funasr_swap.training.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from funasr_swap.training.config import LoraSettings, TrainConfig
from funasr_swap.training.data_order import BatchPlan
from funasr_swap.training.evaluation import Evaluation, evaluate
from funasr_swap.training.history import LiveTrainingPlot, history_figure, plot_history, read_history
from funasr_swap.training.recipe import TrainResult, train
from funasr_swap.training.step import TrainingStep, added_token_ids, setup_trainable, supervised_loss

__all__ = [
    "BatchPlan",
    "Evaluation",
    "LiveTrainingPlot",
    "LoraSettings",
    "TrainConfig",
    "TrainResult",
    "TrainingStep",
    "added_token_ids",
    "evaluate",
    "history_figure",
    "latest_checkpoint",
    "load_checkpoint",
    "plot_history",
    "read_history",
    "save_checkpoint",
    "setup_trainable",
    "supervised_loss",
    "train",
]
