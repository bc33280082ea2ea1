import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The reference is thousands of tiny ops: with 2 intra-op threads on a busy 2-core machine
    OpenMP oversubscription made it 30x slower and erratic. One thread is steady and enough."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
