import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The reference is thousands of tiny ops: with 2 intra-op threads on busy cores OpenMP
    oversubscription makes it many times slower and erratic. One thread is steady and enough."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
