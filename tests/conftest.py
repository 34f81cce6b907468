"""Shared test set-up."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def single_torch_thread():
    """The models in the tests are tiny: one thread is as fast, and far faster when the cores are busy.
    Runs compared bit for bit use the same thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)
