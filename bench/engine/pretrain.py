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
from .steps import StepLoop, resolve_device
from .tracking import Continued, open_run, tracks

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
    # the backbone (every tensor but the task head ``head.*``, and those a release's key map leaves
    # at initialisation on purpose): (loaded, all) tensors and (loaded, all) parameters
    backbone_tensors: tuple[int, int] = (0, 0)
    backbone_params: tuple[int, int] = (0, 0)

    @property
    def share(self) -> float:
        """The share of the backbone's parameters loaded from the checkpoint."""
        return self.backbone_params[0] / self.backbone_params[1] if self.backbone_params[1] else 1.0

    def partial(self) -> str | None:
        """What is missing when not every backbone tensor was loaded (None: all were)."""
        got, total = self.backbone_tensors
        if got >= total:
            return None
        pct = f"{100 * self.share:.3g}%" if self.share >= 1e-4 else "<0.01%"
        return (f"only {got} of {total} backbone tensors ({self.backbone_params[0]:,} of {self.backbone_params[1]:,} "
                f"parameters, {pct}) loaded from {Path(self.path).name}; the rest stay at random initialisation")

    def to_dict(self) -> dict[str, Any]:
        """What the unit record keeps of the load."""
        return {"path": self.path, "backbone_tensors": list(self.backbone_tensors),
                "backbone_params": list(self.backbone_params), "share": round(self.share, 6)}

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
        report = InitReport(str(path), loaded=sorted(m.state), missing=m.init_only, unexpected=m.dropped,
                            provenance=prov)
        return _with_share(report, model, exempt=set(m.init_only))
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
    return _with_share(report, model)


def _with_share(report: InitReport, model: torch.nn.Module, exempt: set[str] = frozenset()) -> InitReport:
    own = model.state_dict()
    backbone = [k for k in own if not k.startswith("head.") and k not in exempt]
    loaded = set(report.loaded)
    got = [k for k in backbone if k in loaded]
    report.backbone_tensors = (len(got), len(backbone))
    report.backbone_params = (sum(own[k].numel() for k in got), sum(own[k].numel() for k in backbone))
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


@dataclass
class _Data:
    """Pre-training's data side: the ImageFolder, its loader and sampler, mixup and the loss."""

    train_set: Any
    loader: Any
    sampler: Any
    gen: torch.Generator
    mixup: Any
    criterion: Any


def _data(cfg: PretrainConfig, train_dir: Path, world: int) -> _Data:
    from timm.data import Mixup, create_transform
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from torch.utils.data import DataLoader, DistributedSampler
    from torchvision.datasets import ImageFolder

    mix_on = cfg.mixup > 0 or cfg.cutmix > 0
    if mix_on and cfg.micro_batch % 2:
        raise ValueError(f"mixup pairs images inside a micro-batch: micro_batch must be even, got {cfg.micro_batch}")
    tf = create_transform(cfg.input_size, is_training=True, hflip=0.5, color_jitter=None, auto_augment=None,
                          re_prob=cfg.reprob, re_mode="pixel", interpolation="bicubic")
    train_set = ImageFolder(str(train_dir), transform=tf)
    if len(train_set) < cfg.micro_batch * world:
        raise ValueError(f"{train_dir} has {len(train_set)} images, fewer than one micro-batch "
                         f"({cfg.micro_batch} x {world}); lower --set micro_batch=...")
    sampler = DistributedSampler(train_set, seed=cfg.seed, drop_last=True) if world > 1 else None
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(train_set, batch_size=cfg.micro_batch, shuffle=sampler is None, sampler=sampler,
                        num_workers=cfg.workers, drop_last=True, generator=gen, persistent_workers=False)
    n_classes = len(train_set.classes)
    mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.smoothing,
                  num_classes=n_classes) if mix_on else None
    criterion = SoftTargetCrossEntropy() if mix_on else LabelSmoothingCrossEntropy(cfg.smoothing)
    return _Data(train_set, loader, sampler, gen, mixup, criterion)


def _resume(last: Path, cfg: PretrainConfig, loop: StepLoop, classes: list[str], train_dir: Path) -> int:
    """The optimizer step ``out/last.pt`` reached (its model, optimizer and schedule restored), else 0."""
    if not last.is_file():
        return 0
    ck = torch.load(last, map_location="cpu", weights_only=True)
    if ck.get("format") != CHECKPOINT_FORMAT or ck.get("arch") != cfg.model:
        raise ValueError(f"{last} is not a {cfg.model} pre-training checkpoint of this version; "
                         "move it away or pick another --out")
    if ck.get("classes") != classes:
        raise ValueError(f"{last} was trained on other classes than {train_dir}; pick another --out")
    loop.model.load_state_dict(ck["model"])
    loop.opt.load_state_dict(ck["optimizer"])
    loop.sched.load_state_dict(ck["scheduler"])
    return int(ck["step"])


def pretrain(data: Path | str, out: Path | str, cfg: PretrainConfig, *, progress: bool = True,
             device: str = "auto", tracker: Any = None) -> dict[str, Any]:
    """Pre-train ``cfg.model`` on the ImageFolder ``data``; checkpoints in ``out``. Resumes from
    ``out/last.pt`` when it exists. Returns a summary (steps, last loss, val top-1 if any).
    ``device``: ``auto`` trains on this rank's GPU under torchrun, else on the first GPU when there
    is one, else on the CPU (``steps.resolve_device``). ``tracker``: a
    :class:`~bench.engine.tracking.TrackerSettings`; the run is tracked as ``pretrain/<model>``
    (per-step loss and learning rate, numbered from the resumed step; the summary at the end)."""
    name = f"pretrain/{cfg.model}"
    with open_run(tracker if D.is_main() else None, name, {**asdict(cfg), "data": str(data), "out": str(out)}) as run:
        summary = _pretrain(data, out, cfg, progress, device, run if tracks(run) else None)
        run.log_final(**{k: float(summary[k]) for k in ("last_loss", "val_top1", "steps") if k in summary})
    return summary


def _pretrain(data: Path | str, out: Path | str, cfg: PretrainConfig, progress: bool, device: str,
              run: Any) -> dict[str, Any]:
    import pixelmamba

    train_dir, val_dir = _folders(Path(data))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    world = D.world_size()
    if cfg.batch_size % (cfg.micro_batch * world):
        raise ValueError(f"batch_size {cfg.batch_size} must be a multiple of micro_batch {cfg.micro_batch} "
                         f"x {world} process(es)")
    accum = cfg.batch_size // (cfg.micro_batch * world)
    d = _data(cfg, train_dir, world)
    torch.manual_seed(cfg.seed)
    model = pixelmamba.create_model(cfg.model, num_classes=len(d.train_set.classes),
                                    **{"checkpointing": False, **cfg.model_options})
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and not getattr(p, "_no_weight_decay", False)]
    rest = [p for n, p in model.named_parameters() if not (p.ndim > 1 and not getattr(p, "_no_weight_decay", False))]
    steps_per_epoch = max(1, len(d.loader) // accum)
    loop = StepLoop(model, resolve_device(device), [{"params": decay, "weight_decay": cfg.weight_decay},
                                                    {"params": rest, "weight_decay": 0.0}],
                    lr=cfg.lr, weight_decay=cfg.weight_decay, accum=accum, betas=(0.9, 0.999),
                    total_steps=steps_per_epoch * cfg.epochs, warmup_steps=int(cfg.warmup_epochs * steps_per_epoch),
                    floor=cfg.min_lr / cfg.lr)
    last = out / "last.pt"
    step = _resume(last, cfg, loop, d.train_set.classes, train_dir)
    if step:
        log.info("resuming from %s at step %d (epoch %d)", last, step, step // steps_per_epoch + 1)
    loop.tracker = Continued(run, start=step) if run is not None else None
    t0 = time.perf_counter()
    step, loss_val = _pretrain_steps(loop, d, cfg, step, steps_per_epoch, last, progress)
    summary: dict[str, Any] = {"steps": step, "last_loss": loss_val, "seconds": time.perf_counter() - t0,
                               "checkpoint": str(last), "classes": len(d.train_set.classes)}
    if val_dir is not None and D.is_main():
        summary["val_top1"] = evaluate(model, val_dir, cfg, d.train_set.class_to_idx)
    return summary


def _pretrain_steps(loop: StepLoop, d: _Data, cfg: PretrainConfig, step: int, steps_per_epoch: int, last: Path,
                    progress: bool) -> tuple[int, float]:
    """Optimizer steps from ``step`` on, a checkpoint every ``cfg.save_every`` steps and at every
    epoch's end. Returns (steps done, last loss)."""
    from tqdm.auto import tqdm

    def save() -> None:
        if D.is_main():
            _atomic_save({"format": CHECKPOINT_FORMAT, "arch": cfg.model, "classes": d.train_set.classes,
                          "step": step, "epoch": step / steps_per_epoch, "config": asdict(cfg),
                          "model": loop.model.state_dict(), "optimizer": loop.opt.state_dict(),
                          "scheduler": loop.sched.state_dict()}, last)

    limit = min(steps_per_epoch * cfg.epochs, cfg.max_steps if cfg.max_steps is not None else steps_per_epoch * cfg.epochs)
    bar = tqdm(total=limit, initial=step, desc=f"pretrain {cfg.model}", unit="step",
               disable=None if progress and D.is_main() else True, dynamic_ncols=True)
    loss_val, accum = float("nan"), loop.accum
    try:
        for epoch in range(step // steps_per_epoch, cfg.epochs):
            if step >= limit:
                break
            if d.sampler is not None:
                d.sampler.set_epoch(epoch)
            d.gen.manual_seed(cfg.seed + epoch)  # the same order when an epoch is resumed
            skip = (step - epoch * steps_per_epoch) * accum  # micro-batches already done in this epoch
            loop.model.train()
            loop.opt.zero_grad(set_to_none=True)
            for i, (x, y) in enumerate(d.loader):
                if i < skip:
                    continue
                if i // accum >= steps_per_epoch or step >= limit:
                    break
                x, y = x.to(loop.device), y.to(loop.device)
                if d.mixup is not None:
                    x, y = d.mixup(x, y)
                sync = (i + 1) % accum == 0
                with loop.pass_(sync):
                    loss = d.criterion(loop.net(x), y)
                    loop.backward(loss, lambda _here, loss=loss: FloatingPointError(
                        f"pre-training loss became {loss.item()} at step {step}: lower --set lr=... "
                        "(the last checkpoint is kept)"))
                if not sync:
                    continue
                loop.step()
                step += 1
                loss_val = loss.item()
                bar.update(1)
                bar.set_postfix(loss=f"{loss_val:.3f}", lr=f"{loop.last_lr():.2e}")
                if step % cfg.save_every == 0:
                    save()
            save()
    finally:
        bar.close()
    return step, loss_val


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

