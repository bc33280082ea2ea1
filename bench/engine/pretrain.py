"""ImageNet-style pre-training of Pixel-Mamba, and starting slide models from its weights.

The recipe is the paper's (supplement, "Pre-training"; it follows Vim/DeiT): 224² images, AdamW
(betas 0.9/0.999) with lr 1e-3, weight decay 0.05, batch 1024 (8 GPUs), 300 epochs, cosine
schedule; random resized crop, horizontal flip, label smoothing, mixup and random erasing. The
paper names no values for the last three nor a warm-up; DeiT's/Vim's are used (smoothing 0.1,
mixup alpha 0.8, random erasing p 0.25 per pixel, 5 warm-up epochs), and neither CutMix nor
RandAugment, which the paper does not list. The augmentations are timm's (``create_transform``,
``Mixup``, ``SoftTargetCrossEntropy``); the data is a torchvision ``ImageFolder``
(``<data>/train`` and, if present, ``<data>/val``; else ``<data>`` itself).

Checkpoints (``<out>/last.pt``, written atomically every ``save_every`` steps and at the end of
each epoch) hold the model, optimizer, schedule and position, so a killed run resumes where it
stopped; ``load_init`` reads the model part into any model (``bench run --init``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from baselines.weights import load_release_init
from feature_cache.weights import WeightsError, WeightsProvenance, file_sha256, read_checkpoint, record

from ..io import atomic_path
from . import distributed as D

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "wsi-bench-pretrain/1"


# -- starting a model from a checkpoint ----------------------------------------------------------

@dataclass
class InitReport:
    """What ``load_init`` did: tensors loaded, and the names it could not use, by reason."""

    path: str
    loaded: list[str] = field(default_factory=list)
    shape_mismatch: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # in the model, absent from the checkpoint
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint, absent from the model
    provenance: WeightsProvenance | None = None  # also appended to model.weights_provenance

    def summary(self) -> str:
        parts = [f"init from {self.path}: {len(self.loaded)} tensors loaded"]
        if self.shape_mismatch:
            parts.append("dropped (shape differs; e.g. a head for other classes): " + ", ".join(
                f"{k} {list(a)} vs model {list(b)}" for k, (a, b) in self.shape_mismatch.items()))
        if self.missing:
            parts.append(f"left at their initialisation: {_names(self.missing)}")
        if self.unexpected:
            parts.append(f"not in the model, ignored: {_names(self.unexpected)}")
        return "; ".join(parts)


def _names(keys: list[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The weights in a checkpoint: ours ({"model": ...}), timm/DeiT ({"model"}/{"state_dict"}) or
    a bare state dict; DDP's ``module.`` prefix is removed."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} holds no state dict of tensors (expected a `bench pretrain` checkpoint "
                         "or a saved model.state_dict())")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_init(model: torch.nn.Module, path: Path | str) -> InitReport:
    """Copy the tensors of checkpoint ``path`` whose names and shapes match into ``model``.

    Loaded with ``torch.load(weights_only=True)`` (no code runs from the file). Tensors whose
    shape differs (a classifier for 1000 ImageNet classes on a 4-stage head) are dropped and
    listed; a checkpoint that matches nothing is an error, as it is surely of another model.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--init checkpoint {path} does not exist")
    try:
        obj = read_checkpoint(path)
    except WeightsError as exc:
        raise ValueError(f"cannot read checkpoint {path}: {exc} (only weights are loaded, weights_only=True)") from exc
    if (release := load_release_init(model, path, obj)) is not None:  # Vim-Ti / LongViT-S: their key map
        prov, m = release
        return InitReport(str(path), loaded=sorted(m.state), missing=m.init_only, unexpected=m.dropped, provenance=prov)
    state = _state_dict(obj, path)
    own = model.state_dict()
    report = InitReport(str(path))
    usable = {}
    for k, v in state.items():
        if k not in own:
            report.unexpected.append(k)
        elif tuple(v.shape) != tuple(own[k].shape):
            report.shape_mismatch[k] = (tuple(v.shape), tuple(own[k].shape))
        else:
            usable[k] = v
            report.loaded.append(k)
    report.missing = [k for k in own if k not in state]
    if not usable:
        raise ValueError(f"no tensor of {path} fits the model ({len(state)} in the file, e.g. "
                         f"{_names(list(state), 3)}; the model has e.g. {_names(list(own), 3)}): "
                         "a checkpoint of another architecture?")
    model.load_state_dict(usable, strict=False)
    report.provenance = WeightsProvenance("--init", "explicit", path=str(path), sha256=file_sha256(path),
                                          mapping="name-for-name",
                                          dropped=tuple(report.unexpected + list(report.shape_mismatch)),
                                          n_keys=len(usable))
    record(model, report.provenance)
    return report


def init_identity(path: Path | str) -> dict[str, str]:
    """What enters a unit's config for ``--init``: the path and a hash of the file's content."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--init checkpoint {path} does not exist")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"checkpoint": str(path), "sha256": h.hexdigest()[:16]}


# -- pre-training ----------------------------------------------------------------------------------

@dataclass
class PretrainConfig:
    model: str = "pixelmamba-6m"
    epochs: int = 300
    batch_size: int = 1024  # images per optimizer step, over all processes
    micro_batch: int = 64  # images per forward pass per process (gradient accumulation between)
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: float = 5.0
    smoothing: float = 0.1
    mixup: float = 0.8
    cutmix: float = 0.0
    reprob: float = 0.25
    input_size: int = 224
    workers: int = 4
    seed: int = 0
    save_every: int = 500  # optimizer steps between checkpoints (and at every epoch's end)
    max_steps: int | None = None  # stop after this many optimizer steps (smoke tests)
    model_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PretrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown pre-training options {sorted(unknown)}; allowed: {sorted(names)}")
        return cls(**d)


def _folders(data: Path) -> tuple[Path, Path | None]:
    if not data.is_dir():
        raise FileNotFoundError(f"--data {data} is not a directory (expected an ImageFolder: "
                                "<data>/train/<class>/<image>, optionally <data>/val/<class>/<image>)")
    train = data / "train" if (data / "train").is_dir() else data
    val = data / "val" if (data / "val").is_dir() else None
    return train, val


def _atomic_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def pretrain(data: Path | str, out: Path | str, cfg: PretrainConfig, *, progress: bool = True) -> dict[str, Any]:
    """Pre-train ``cfg.model`` on the ImageFolder ``data``; checkpoints in ``out``. Resumes from
    ``out/last.pt`` when it exists. Returns a summary (steps, last loss, val top-1 if any)."""
    from timm.data import Mixup, create_transform
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from torch.utils.data import DataLoader, DistributedSampler
    from torchvision.datasets import ImageFolder
    from tqdm.auto import tqdm

    import pixelmamba

    from .train import _lr_lambda

    train_dir, val_dir = _folders(Path(data))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    world = D.world_size()
    if cfg.batch_size % (cfg.micro_batch * world):
        raise ValueError(f"batch_size {cfg.batch_size} must be a multiple of micro_batch {cfg.micro_batch} "
                         f"x {world} process(es)")
    accum = cfg.batch_size // (cfg.micro_batch * world)
    mix_on = cfg.mixup > 0 or cfg.cutmix > 0
    if mix_on and cfg.micro_batch % 2:
        raise ValueError(f"mixup pairs images inside a micro-batch: micro_batch must be even, got {cfg.micro_batch}")
    tf = create_transform(cfg.input_size, is_training=True, hflip=0.5, color_jitter=None, auto_augment=None,
                          re_prob=cfg.reprob, re_mode="pixel", interpolation="bicubic")
    train_set = ImageFolder(str(train_dir), transform=tf)
    if len(train_set) < cfg.micro_batch * world:
        raise ValueError(f"{train_dir} has {len(train_set)} images, fewer than one micro-batch "
                         f"({cfg.micro_batch} x {world}); lower --set micro_batch=...")
    n_classes = len(train_set.classes)
    torch.manual_seed(cfg.seed)
    model = pixelmamba.create_model(cfg.model, num_classes=n_classes,
                                    **{"checkpointing": False, **cfg.model_options})
    dev = D.device() if world > 1 else torch.device("cpu")
    model.to(dev)
    net: torch.nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[dev] if dev.type == "cuda" else None)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and not getattr(p, "_no_weight_decay", False)]
    rest = [p for n, p in model.named_parameters() if not (p.ndim > 1 and not getattr(p, "_no_weight_decay", False))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.999))
    sampler = DistributedSampler(train_set, seed=cfg.seed, drop_last=True) if world > 1 else None
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(train_set, batch_size=cfg.micro_batch, shuffle=sampler is None, sampler=sampler,
                        num_workers=cfg.workers, drop_last=True, generator=gen, persistent_workers=False)
    steps_per_epoch = max(1, len(loader) // accum)
    total = steps_per_epoch * cfg.epochs
    floor = cfg.min_lr / cfg.lr
    base = _lr_lambda(total, int(cfg.warmup_epochs * steps_per_epoch))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: floor + (1 - floor) * base(s))
    mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.smoothing,
                  num_classes=n_classes) if mix_on else None
    criterion = SoftTargetCrossEntropy() if mix_on else LabelSmoothingCrossEntropy(cfg.smoothing)

    step, start_epoch = 0, 0
    last = out / "last.pt"
    if last.is_file():
        ck = torch.load(last, map_location="cpu", weights_only=True)
        if ck.get("format") != CHECKPOINT_FORMAT or ck.get("arch") != cfg.model:
            raise ValueError(f"{last} is not a {cfg.model} pre-training checkpoint of this version; "
                             "move it away or pick another --out")
        if ck.get("classes") != train_set.classes:
            raise ValueError(f"{last} was trained on other classes than {train_dir}; pick another --out")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        step = int(ck["step"])
        start_epoch = step // steps_per_epoch
        log.info("resuming from %s at step %d (epoch %d)", last, step, start_epoch + 1)

    def save() -> None:
        if D.is_main():
            _atomic_save({"format": CHECKPOINT_FORMAT, "arch": cfg.model, "classes": train_set.classes,
                          "step": step, "epoch": step / steps_per_epoch, "config": asdict(cfg),
                          "model": model.state_dict(), "optimizer": opt.state_dict(),
                          "scheduler": sched.state_dict()}, last)

    limit = total if cfg.max_steps is None else min(total, cfg.max_steps)
    bar = tqdm(total=limit, initial=step, desc=f"pretrain {cfg.model}", unit="step",
               disable=None if progress and D.is_main() else True, dynamic_ncols=True)
    loss_val, t0 = float("nan"), time.perf_counter()
    try:
        for epoch in range(start_epoch, cfg.epochs):
            if step >= limit:
                break
            if sampler is not None:
                sampler.set_epoch(epoch)
            gen.manual_seed(cfg.seed + epoch)  # the same order when an epoch is resumed
            skip = (step - epoch * steps_per_epoch) * accum  # micro-batches already done in this epoch
            model.train()
            opt.zero_grad(set_to_none=True)
            for i, (x, y) in enumerate(loader):
                if i < skip:
                    continue
                if i // accum >= steps_per_epoch or step >= limit:
                    break
                x, y = x.to(dev), y.to(dev)
                if mixup is not None:
                    x, y = mixup(x, y)
                sync = (i + 1) % accum == 0
                with net.no_sync() if world > 1 and not sync else contextlib.nullcontext():
                    loss = criterion(net(x), y)
                    if D.any_rank(not bool(torch.isfinite(loss))):
                        raise FloatingPointError(f"pre-training loss became {loss.item()} at step {step}: "
                                                 "lower --set lr=... (the last checkpoint is kept)")
                    (loss / accum).backward()
                if not sync:
                    continue
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                loss_val = loss.item()
                bar.update(1)
                bar.set_postfix(loss=f"{loss_val:.3f}", lr=f"{sched.get_last_lr()[0]:.2e}")
                if step % cfg.save_every == 0:
                    save()
            save()
    finally:
        bar.close()
    summary: dict[str, Any] = {"steps": step, "last_loss": loss_val, "seconds": time.perf_counter() - t0,
                               "checkpoint": str(last), "classes": n_classes}
    if val_dir is not None and D.is_main():
        summary["val_top1"] = evaluate(model, val_dir, cfg, train_set.class_to_idx)
    return summary


@torch.no_grad()
def evaluate(model: torch.nn.Module, val_dir: Path, cfg: PretrainConfig, class_to_idx: dict[str, int]) -> float:
    """Top-1 accuracy on an ImageFolder (resize + center crop, timm's eval transform)."""
    from timm.data import create_transform
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    ds = ImageFolder(str(val_dir), transform=create_transform(cfg.input_size, is_training=False,
                                                              interpolation="bicubic"))
    if ds.class_to_idx != class_to_idx:
        raise ValueError(f"{val_dir} has other classes than the training folder")
    model.eval()
    dev = next(model.parameters()).device
    right = n = 0
    for x, y in DataLoader(ds, batch_size=cfg.micro_batch, num_workers=cfg.workers):
        right += int((model(x.to(dev)).argmax(-1).cpu() == y).sum())
        n += len(y)
    return right / max(n, 1)

