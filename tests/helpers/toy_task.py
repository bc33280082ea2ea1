"""A shared toy task for end-to-end models: two classes told apart by the colour of the slide's
left half, on a non-square 32×48 input. A model that learns drives the loss down. And the check
of the end-to-end models' ``checkpointing="auto"``, the same for each."""

import torch
import torch.nn.functional as F


def toy_losses(model: torch.nn.Module, lr: float, steps: int = 8) -> list[float]:
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(8, 3, 32, 48, generator=g)
    ys = torch.arange(8) % 2
    xs[:, 0, :, :24] += (ys.float() * 2 - 1).view(8, 1, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(xs), ys)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    print("losses", [round(v, 4) for v in losses])
    return losses


def check_auto_checkpointing(monkeypatch, module, model: torch.nn.Module, x: torch.Tensor, tokens: int,
                             depth: int) -> None:
    """``model`` (``checkpointing="auto"``, from ``module``, which calls ``checkpoint`` once per
    block and reads ``UNCHECKPOINTED_TOKENS``) on ``x`` of ``tokens`` tokens, batch included: at
    the threshold ``tokens`` no block is recomputed, one below it every one of the ``depth``
    blocks is, never without gradients; both give the same output and gradients."""
    calls: list[int] = []
    real = module.checkpoint
    monkeypatch.setattr(module, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    results = []
    for threshold, recomputed in ((tokens, 0), (tokens - 1, depth)):
        monkeypatch.setattr(module, "UNCHECKPOINTED_TOKENS", threshold)
        calls.clear()
        model.zero_grad()
        out = model(x)
        out.sum().backward()
        assert len(calls) == recomputed
        with torch.no_grad():
            model(x)
        assert len(calls) == recomputed
        results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b)
