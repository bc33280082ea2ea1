"""DDP in the trainer: two real gloo processes give the gradients of one process on the combined
batch, and the predictions of both ranks' shares come back complete and in order."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from bench.engine import distributed as D
from bench.engine.train import Sample, TrainConfig, train_and_predict

DIM = 16


def _samples(n: int, seed: int) -> list[Sample]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        x = torch.randn(5, DIM, generator=g)
        x[:, i % 4] += 2.0
        out.append(Sample(f"c{seed}-{i}", lambda x=x: x, {"stage": float(i % 4)}))
    return out


def _train(grad_accum: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[float]]:
    """One epoch over 4 cases = one optimizer step (4 cases in one process, 2 per rank in two)."""
    from baselines.mil.pooling import MeanMIL

    torch.manual_seed(0)
    model = MeanMIL(DIM, 4)
    first: dict[str, torch.Tensor] = {}

    def grab(m: torch.nn.Module) -> None:
        if not first:
            first.update({n: p.grad.detach().clone() for n, p in m.named_parameters()})

    cfg = TrainConfig(epochs=1, lr=1e-2, grad_accum=grad_accum, grad_clip=None)
    pred, _, info = train_and_predict(model, "staging", _samples(4, 0), _samples(5, 1), cfg, progress=False,
                                      before_step=grab)
    assert info["world_size"] == D.world_size()
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    return first, weights, [*pred["case_id"], *pred["prob0"]]


def _worker(rank: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.save(_train(grad_accum=2), os.path.join(out, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    torch.multiprocessing.start_processes(_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2,
                                          start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    grads, weights, pred = _train(grad_accum=4)  # one process, the combined batch
    for g_rank, w_rank, p_rank in ranks:
        for name in grads:
            torch.testing.assert_close(g_rank[name], grads[name], rtol=1e-5, atol=1e-6, msg=name)
            torch.testing.assert_close(w_rank[name], weights[name], rtol=1e-5, atol=1e-6, msg=name)
        # every rank predicted its share; gathered, they are all 5 test cases in order
        assert p_rank[:5] == pred[:5] == [f"c1-{i}" for i in range(5)]
        torch.testing.assert_close(torch.tensor(p_rank[5:]), torch.tensor(pred[5:]))


def test_shard_pads_like_distributed_sampler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(D, "world_size", lambda: 3)
    for r, want in enumerate([[7, 4], [6, 7], [5, 6]]):  # 4 items on 3 ranks: padded to 6
        monkeypatch.setattr(D, "rank", lambda r=r: r)
        assert D.shard([7, 6, 5, 4]) == want
