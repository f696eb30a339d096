"""Tiny examples and pairs for the training tests, and a fast trainer configuration.

A plain module rather than a conftest.py: a second module named ``conftest`` would shadow
``tests/conftest.py`` for ``from testkit import ...`` in other test folders.
"""

from __future__ import annotations

import torch

from gradsift.data.records import Example, Pair

torch.set_num_threads(1)

# Few steps, no saving or progress bars unless a test asks: every training test runs in seconds on a CPU.
# Pinned to fp32 on the CPU even where a GPU exists, so the exact comparisons hold on any machine.
FAST = {
    "use_cpu": True,
    "bf16": False,
    "activation_checkpointing": False,
    "per_device_train_batch_size": 4,
    "learning_rate": 5e-3,
    "logging_steps": 1,
    "max_length": 64,
    "disable_tqdm": True,
    "save_strategy": "no",
    "seed": 0,
}


def make_examples(n: int) -> list[Example]:
    return [
        Example(
            id=f"ex{i}",
            messages=[
                {"role": "user", "content": f"q{i}: what is {i}+1?"},
                {"role": "assistant", "content": f"it is {i + 1}"},
            ],
        )
        for i in range(n)
    ]


def make_pairs(n: int) -> list[Pair]:
    return [
        Pair(
            id=f"p{i}",
            prompt=[{"role": "user", "content": f"say {i}"}],
            chosen=f"{i} ok",
            rejected=f"no {i * 7}",
        )
        for i in range(n)
    ]
