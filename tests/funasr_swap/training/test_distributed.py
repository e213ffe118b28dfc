"""Several processes on CPU (gloo): DDP and FSDP2 runs of 2 processes against one, FSDP's exact resume, the launch
configs, what FSDP refuses, and the multi-GPU benchmark's code path with tiny shapes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file

from funasr_swap.base import tiny_base
from funasr_swap.convert import load_base
from funasr_swap.data import Utterance
from funasr_swap.training import LoraSettings, TrainConfig, latest_checkpoint
from funasr_swap.training.checkpoints import CHECKPOINT_PREFIX
from funasr_swap.training.distributed import check_fsdp_support
from tests.funasr_swap.training.conftest import CONFIGS, _assert_same_run, _free_port, _log, _train_losses, _worker
from tests.funasr_swap.training.ddp_worker import run as run_worker


def _three_steps(corpus) -> list[str]:
    """The runs that two processes take below: 3 steps of a batch of 2 each."""
    return ["--train", str(corpus["train"]), "--steps", "3", "--batch-size", "2"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, corpus) -> Path:
    """The same 3 steps in one process (this one), each of 2 micro-batches of 2: the same global batch; its folder."""
    out = tmp_path_factory.mktemp("one-process")
    run_worker([*_three_steps(corpus), "--out", str(out), "--grad-accum", "2"])
    return out


@pytest.mark.slow
def test_ddp_two_processes_equal_one_with_the_same_global_batch(tmp_path, corpus, one_process):
    ddp = _worker(*_three_steps(corpus), "--out", str(tmp_path / "ddp"), config="accelerate_ddp.yaml")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count("llm weight: Parameter (128, 64), local (128, 64)") == 2  # whole on both processes
    assert ddp.stdout.count("distributed: MULTI_CPU") == 2

    state = json.loads((tmp_path / "ddp" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["world_size"] == 2
    # float32: the two processes' gradients are summed in another order than one process's
    _assert_same_run(tmp_path / "ddp", one_process, 3, rel=1e-5, atol=1e-5)


@pytest.mark.slow
def test_fsdp_two_processes_shard_the_llm_and_equal_one_process(tmp_path, corpus, one_process):
    fsdp = _worker(*_three_steps(corpus), "--out", str(tmp_path / "fsdp"), config="accelerate_fsdp.yaml")
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    # the frozen LLM's weights are split across the two processes (FSDP2's DTensor shards), not copied
    assert fsdp.stdout.count("llm weight: DTensor (128, 64), local (64, 64)") == 2, fsdp.stdout[-2000:]
    assert fsdp.stdout.count("distributed: FSDP") == 2  # Accelerate's FSDP code paths ran (no_sync, clipping)

    # the checkpoint holds whole tensors, as one process writes them
    _assert_same_run(tmp_path / "fsdp", one_process, 3, rel=1e-5, atol=1e-5)
    optimizer, reference = (torch.load(folder / f"{CHECKPOINT_PREFIX}3" / "optimizer.pt", weights_only=True)
                            for folder in (tmp_path / "fsdp", one_process))  # fmt: skip
    assert optimizer["optimizer"]["param_groups"] == reference["optimizer"]["param_groups"]
    for index, moments in reference["optimizer"]["state"].items():
        for key, value in moments.items():
            torch.testing.assert_close(optimizer["optimizer"]["state"][index][key], value, rtol=1e-4, atol=1e-6)
    # the final folder: the whole model, gathered, loadable as the single-process one
    final, reference_final = (
        load_base(folder / "final")[0].state_dict() for folder in (tmp_path / "fsdp", one_process)
    )
    assert final.keys() == reference_final.keys()
    for name, value in reference_final.items():
        torch.testing.assert_close(final[name], value, rtol=0, atol=1e-5, msg=name)


@pytest.mark.slow
def test_fsdp_resume_after_sigkill_gives_the_uninterrupted_losses(tmp_path, corpus):
    # the sharded encoder trains too, and its dropout draws from the RNG; two micro-batches a step (no_sync)
    common = ["--train", str(corpus["train"]), "--steps", "5", "--batch-size", "2", "--grad-accum", "2",
              "--save-every", "2", "--unfreeze-encoder"]  # fmt: skip
    killed = _worker(*common, "--out", str(tmp_path / "run"), "--kill-after", "3", config="accelerate_fsdp.yaml")
    assert killed.returncode != 0, killed.stderr[-2000:]
    assert latest_checkpoint(tmp_path / "run").name == "checkpoint-2"
    assert max(_train_losses(tmp_path / "run")) == 3  # step 3 ran and was logged, then the kill

    # the resume, then in the same two processes the uninterrupted run from the start (train seeds every run)
    resumed = _worker(*common, "--out", str(tmp_path / "run"), "--resume",
                      "--uninterrupted", str(tmp_path / "reference"), config="accelerate_fsdp.yaml")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("distributed: FSDP") == 4  # both runs, on both processes

    steps = [r["step"] for r in _log(tmp_path / "run")]
    assert steps == sorted(set(steps)) == [1, 2, 3, 4, 5]  # the killed step 3 is logged once
    # the same two processes, the same reductions: the resumed run is the uninterrupted one up to float noise
    _assert_same_run(tmp_path / "run", tmp_path / "reference", 5, rel=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["accelerate_ddp.yaml", "accelerate_fsdp.yaml"])
def test_launch_configs_parse_and_name_the_models_layers(name):
    config = load_config_from_file(str(CONFIGS / name))  # Accelerate's own reader, as `accelerate launch` reads it
    assert config.compute_environment == "LOCAL_MACHINE" and config.num_machines == 1
    if name == "accelerate_ddp.yaml":
        assert config.distributed_type == "MULTI_GPU" and config.fsdp_config == {}
        return
    assert config.distributed_type == "FSDP"
    fsdp = config.fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    # every class named must be a layer of the model (Accelerate raises otherwise): the base's encoder and Qwen3 LLM
    classes = {type(module).__name__ for module in tiny_base(seed=0)[0].modules()}
    wrapped = set(fsdp["fsdp_transformer_layer_cls_to_wrap"].split(","))
    assert wrapped == {"FunAsrNanoEncoderLayer", "Qwen3DecoderLayer"} and wrapped <= classes


def test_fsdp_refuses_what_it_does_not_support_yet(tmp_path):
    config = TrainConfig(output_dir=tmp_path, lora=LoraSettings(), trainable_token_ids=(5,))
    with pytest.raises(ValueError, match="validation set .*; lora .*; trainable_token_ids"):
        check_fsdp_support(config, [Utterance(audio=tmp_path / "a.wav", text="a")])
    check_fsdp_support(TrainConfig(output_dir=tmp_path, unfreeze_encoder=True), None)  # adaptor and encoder: fine


# ------------------------------------------------------------------------------------------------------------------
# The multi-GPU benchmark's code path, on CPU with tiny shapes (benchmarks/train_distributed.py)


BENCHMARK = Path(__file__).parents[3] / "benchmarks" / "train_distributed.py"


@pytest.mark.slow
def test_distributed_benchmark_two_fsdp_processes_against_one(tmp_path):
    common = ["--tiny", "--model", "Qwen3-1.7B", "--batch-size", "2", "--steps", "2", "--warmup", "1",
              "--utterances", "16"]  # fmt: skip
    from benchmarks.train_distributed import compare, main

    # one process: this one (as the one-process runs of the trainer above)
    main([*common, "--grad-accum", "2", "--out", str(tmp_path / "one.json"),
          "--save-adaptor", str(tmp_path / "one.safetensors")])  # fmt: skip
    two = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "accelerate_fsdp.yaml"),
         "--num_processes", "2", "--main_process_port", str(_free_port()), str(BENCHMARK), *common,
         "--out", str(tmp_path / "two.json"), "--save-adaptor", str(tmp_path / "two.safetensors")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    result = json.loads((tmp_path / "two.json").read_text())
    assert (result["distributed_type"], result["llm_sharded"], result["processes"]) == ("FSDP", True, 2)
    assert result["global_batch"] == json.loads((tmp_path / "one.json").read_text())["global_batch"] == 4
    assert len(result["peak_memory_gb_per_process"]) == 2 and result["samples_per_s"] > 0

    summary = compare(tmp_path / "one.json", tmp_path / "two.json",
                      adaptors=(tmp_path / "one.safetensors", tmp_path / "two.safetensors"))  # fmt: skip
    # the same batches in the same steps: float32 summation order only; Adam (lr 1e-3, 3 steps, each moving a weight
    # by up to lr) turns the rounding of near-zero gradients into update differences, hence the adaptor's 5e-4
    assert summary["max_loss_difference"] < 1e-4
    assert summary["max_adaptor_difference"] < 5e-4
    assert summary["scaling_efficiency"] > 0
