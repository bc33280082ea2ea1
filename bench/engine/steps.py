"""The one training step loop: device choice, DDP wrapping, AdamW with a warmed-up cosine schedule,
gradient accumulation and the non-finite check, shared by the trainer (``train.train_and_predict``,
one case per forward pass) and pre-training (``pretrain.pretrain``, micro-batches of images).

The caller owns what differs (the data, the loss, the checkpoints); every optimizer step goes
through :class:`StepLoop`: inside ``loop.pass_(sync)`` the forward and ``loop.backward(loss, ...)``
run without a gradient all-reduce until the pass that completes an accumulation (DDP's
``no_sync``), and ``loop.step()`` applies it.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, ContextManager, Iterable

import torch

from . import distributed as D


def resolve_device(device: str | None = "auto") -> torch.device:
    """``auto``: this rank's device under torchrun, else the first CUDA device when there is one, else
    the CPU."""
    if device in (None, "auto"):
        if D.active():
            return D.device()
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is visible here (torch {torch.__version__}, "
                         f"CUDA build: {torch.version.cuda or 'no'}); use --device cpu")
    return dev


def cosine_schedule(total_steps: int, warmup_steps: int, floor: float = 0.0) -> Callable[[int], float]:
    """The learning-rate factor of optimizer step ``step``: linear warm-up over ``warmup_steps``, then
    a cosine from 1 down to ``floor`` (a fraction of the base rate) at ``total_steps``."""
    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    if not floor:
        return f
    return lambda s: floor + (1 - floor) * f(s)


class StepLoop:
    """Optimizer steps over gradient-accumulated passes of ``model`` on ``device``, wrapped in
    ``DistributedDataParallel`` under torchrun (``self.net``: what the forward calls)."""

    def __init__(self, model: torch.nn.Module, device: torch.device, params: Iterable[Any], *, lr: float,
                 weight_decay: float, accum: int, total_steps: int, warmup_steps: int, floor: float = 0.0,
                 grad_clip: float | None = None, before_step: Callable[[torch.nn.Module], None] | None = None,
                 betas: tuple[float, float] | None = None) -> None:
        self.model, self.device, self.accum = model, device, accum
        self.world = D.world_size()
        model.to(device)
        self.net: torch.nn.Module = model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        extra = {"betas": betas} if betas is not None else {}
        self.opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **extra)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, cosine_schedule(total_steps, warmup_steps, floor))
        self.grad_clip, self.before_step = grad_clip, before_step
        # experiment tracking (bench.engine.tracking): the mean loss of each optimizer step's passes
        # and the learning rate it stepped with, reported by the main rank; None: untracked
        self.tracker: Any = None
        self.n_steps = 0
        self._step_losses: list[float] = []

    def pass_(self, sync: bool) -> ContextManager:
        """The context of one forward + backward: gradients are all-reduced only when ``sync``."""
        return self.net.no_sync() if self.world > 1 and not sync else contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, error: Callable[[bool], Exception]) -> None:
        """Accumulate ``loss``'s gradient (scaled by 1 / accum). A loss that is non-finite on any rank
        raises ``error(here)`` on every rank (``here``: it is this rank's own loss)."""
        here = not bool(torch.isfinite(loss))
        if D.any_rank(here):
            raise error(here)
        (loss / self.accum).backward()
        if self.tracker is not None:
            self._step_losses.append(float(loss.detach()))

    def step(self) -> None:
        if self.before_step is not None:
            self.before_step(self.model)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        lr = self.last_lr()
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.n_steps += 1
        if self.tracker is not None and D.is_main():
            losses, self._step_losses = self._step_losses, []
            self.tracker.log_step(self.n_steps, loss=sum(losses) / max(1, len(losses)), lr=lr)

    def last_lr(self) -> float:
        return self.sched.get_last_lr()[0]
