"""The tiny base's supervised loss and adaptor gradients, eager then with every layer compiled (`compile_layers`),
saved for test_step.py, which runs this in a process of its own under glibc's heap checks: compiled CPU code that
writes outside its buffers aborts this process instead of corrupting the test run's memory.

    python tests/funasr_swap/training/compiled_worker.py --train T.jsonl --out results.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from funasr_swap.base import tiny_base
from funasr_swap.data import AsrCollator, load_manifest
from funasr_swap.training import TrainConfig
from funasr_swap.training.step import compile_layers, setup_trainable, supervised_loss, train_mode


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    model, processor = tiny_base()
    batch = AsrCollator(processor)(load_manifest(args.train).utterances[:3])
    setup_trainable(model, TrainConfig(output_dir=Path("unused")))
    train_mode(model)
    results = {}
    for name, compiled in (("eager", False), ("compiled", True)):
        compile_layers(model, compiled)
        for _ in range(2):  # the second call runs the compiled code again, after its first buffers were freed
            model.zero_grad(set_to_none=True)
            loss = supervised_loss(model, batch)
            loss.backward()
        grads = [p.grad.clone() for p in model.model.multi_modal_projector.parameters()]
        results[name] = {"loss": loss.item(), "grads": grads}
    compile_layers(model, False)
    torch.save(results, args.out)


if __name__ == "__main__":
    main()
