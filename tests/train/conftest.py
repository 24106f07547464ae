"""Fixtures shared by the training tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny tensors on a shared 2-core machine: one thread avoids oversubscription stalls.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
