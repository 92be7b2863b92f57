"""Fixtures for the model tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Run each model test on one intra-op thread, restoring the setting afterwards.

    The models here are tiny (widths of 2–8 on 64×64 inputs): splitting their kernels over threads
    costs more than it gains, and on a CPU shared with other jobs two threads wait for each other
    (measured: this folder took 55 s with PyTorch's default 2 threads, 21 s with one).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
