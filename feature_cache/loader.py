"""Patch batches for the encoder: read from the slide, resized and transformed while the encoder
runs on the previous batch.

Two ways, same output (``(start index, float tensor (B, 3, S, S))`` in order):

* ``workers > 0`` (default): a ``torch.utils.data.DataLoader`` with that many worker
  *processes*. Each worker opens its own slide handle in ``worker_init_fn`` (handles are never
  pickled or shared), decodes and transforms whole batches, and hands them over through shared
  memory; ``pin_memory`` when the encoder is on CUDA. Decoding then never competes with the
  encoder for the interpreter, whatever the reader does with the GIL.
* ``workers == 0``: threads in this process (``threads`` of them, each with its own handle). No
  process start-up and no copy between processes; the fallback where processes are unwanted
  (tiny slides, debugging, platforms without ``fork``).

Errors keep their meaning across the process boundary: a worker returns a failed batch's
:class:`~feature_cache.slide.SlideError` message instead of raising, and the main process raises
it again, so the message still starts with the slide's path (DataLoader would prefix its own).
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
from PIL import Image

from feature_cache.slide import Slide, SlideError, open_slide

__all__ = ["Preprocess", "PatchBatches", "load_batches", "default_workers", "default_threads"]

log = logging.getLogger(__name__)


def default_workers() -> int:
    """DataLoader worker processes when none are given: one per core beyond the one the encoder
    uses, at least 1, at most 4."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def default_threads() -> int:
    return min(4, os.cpu_count() or 1)


class Preprocess:
    """An encoder's eval transform, batched and picklable (it travels to DataLoader workers
    without the network): uint8 (B, H, W, 3) -> resize (``interpolation``, antialiased) to
    ``resize_size`` -> centre crop ``input_size`` -> normalise -> float32 (B, 3, S, S).
    Already-transformed float (B, 3, S, S) tensors pass through."""

    def __init__(self, input_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                 resize_size: int | None = None, interpolation: str = "bilinear"):
        self.input_size, self.resize_size, self.interpolation = int(input_size), resize_size, interpolation
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)

    def __call__(self, batch: Any) -> "torch.Tensor":
        import torch
        import torch.nn.functional as F

        if isinstance(batch, torch.Tensor):
            x = batch
        else:
            arr = np.asarray(batch)
            x = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
        if x.dtype == torch.uint8:
            if x.ndim == 3:
                x = x.unsqueeze(0)
            if x.ndim != 4 or x.shape[-1] != 3:
                raise ValueError(f"expected uint8 patches (B, H, W, 3); got {tuple(x.shape)}")
            x = x.permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W)
            side = self.resize_size or self.input_size
            if x.shape[-2:] != (side, side):
                x = F.interpolate(x, size=(side, side), mode=self.interpolation,
                                  align_corners=False, antialias=True)
                if self.interpolation == "bicubic":
                    x = x.clamp_(0.0, 1.0)  # bicubic overshoots; PIL's output is clipped too
            if side != self.input_size:  # centre crop, as torchvision's CenterCrop
                top = int(round((side - self.input_size) / 2.0))
                x = x[..., top : top + self.input_size, top : top + self.input_size]
            mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
            x = (x - mean) / std
        elif not x.is_floating_point() or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError("expected uint8 (B, H, W, 3) patches or transformed float "
                             f"(B, 3, S, S) tensors; got {x.dtype} {tuple(x.shape)}")
        return x.float()


def read_patches(slide: Slide, part: np.ndarray, level: int, read: int, ps: int) -> np.ndarray:
    """uint8 (B, ps, ps, 3): each patch read at ``level`` (``read`` px) and resized to ``ps``."""
    out = np.empty((len(part), ps, ps, 3), np.uint8)
    for j, (x, y) in enumerate(part):
        im = slide.read_region((int(x), int(y)), level, (read, read))
        if read != ps:
            im = im.resize((ps, ps), Image.BILINEAR if read < ps else Image.BOX)
        out[j] = np.asarray(im)
    return out


class PatchBatches:
    """A map-style dataset over one slide's patches: item ``b`` is ``(start, batch)`` for patches
    ``start = b * batch_size`` onwards, ``batch`` the transformed float (B, 3, S, S) tensor -- or
    ``(start, SlideError message)`` when reading failed. The slide handle is opened lazily per
    process (in ``worker_init_fn`` for DataLoader workers) and never pickled."""

    def __init__(self, path: str | Path, open_kwargs: Mapping[str, Any], coords: np.ndarray,
                 level: int, read: int, ps: int, batch_size: int, preprocess: Preprocess):
        self.path, self.open_kwargs = Path(path), dict(open_kwargs)
        self.coords = np.asarray(coords)
        self.level, self.read, self.ps, self.batch_size = int(level), int(read), int(ps), int(batch_size)
        self.preprocess = preprocess
        self.slide: Slide | None = None

    def __len__(self) -> int:
        return math.ceil(len(self.coords) / self.batch_size)

    def open(self) -> Slide:
        if self.slide is None:
            self.slide = open_slide(self.path, **self.open_kwargs)
        return self.slide

    def close(self) -> None:
        s, self.slide = self.slide, None
        if s is not None:
            s.close()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "slide": None}  # a handle is per process, never sent

    def __getitem__(self, b: int) -> tuple[int, Any]:
        start = int(b) * self.batch_size
        try:
            patches = read_patches(self.open(), self.coords[start:start + self.batch_size],
                                    self.level, self.read, self.ps)
        except SlideError as err:
            return start, str(err)
        return start, self.preprocess(patches)


def _worker_init(worker_id: int) -> None:
    import torch.utils.data

    info = torch.utils.data.get_worker_info()
    try:
        info.dataset.open()  # this worker's own handle
    except SlideError:
        pass  # reported by the first batch that needs it, with the slide's message


def load_batches(path: str | Path, open_kwargs: Mapping[str, Any], coords: np.ndarray, level: int,
                 read: int, ps: int, batch_size: int, preprocess: Preprocess, *, workers: int,
                 threads: int | None = None, pin_memory: bool = False) -> Iterator[tuple[int, Any]]:
    """``(start, float (B, 3, S, S))`` for every batch of ``coords``, in order; raises
    :class:`SlideError` (naming the slide) when a batch cannot be read."""
    ds = PatchBatches(path, open_kwargs, coords, level, read, ps, batch_size, preprocess)
    if len(ds) == 0:
        return
    if workers > 0 and multiprocessing.current_process().daemon:
        log.info("%s: decoding in threads: a daemonic process cannot start DataLoader workers", path)
        workers = 0
    if workers > 0:
        import torch.utils.data

        loader = torch.utils.data.DataLoader(
            ds, batch_size=None, shuffle=False, num_workers=min(int(workers), len(ds)),
            worker_init_fn=_worker_init, pin_memory=pin_memory, prefetch_factor=2)
        items: Any = loader
    else:
        items = _threaded(ds, threads or default_threads())
    try:
        for start, batch in _survive_worker_death(items, ds.path):
            if isinstance(batch, str):
                raise SlideError(batch)
            yield start, batch
    finally:
        ds.close()


def _survive_worker_death(items: Any, path: Path) -> Iterator[tuple[int, Any]]:
    """A decoder that crashes its process (a segfault in a codec on a corrupt tile, the OOM
    killer) ends DataLoader with a RuntimeError; it becomes this slide's SlideError, so
    ``skip_errors`` skips the slide and the extraction goes on -- with threads such a crash
    would take the whole extraction down."""
    it = iter(items)
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except RuntimeError as err:
            if "DataLoader worker" not in str(err):
                raise
            raise SlideError(
                f"{path}: a tile-decoding worker process died while reading this slide ({err}). "
                f"Fix: the file is probably corrupt -- re-copy it or exclude it (`bench extract "
                f"--skip-errors`); if the machine ran out of memory, use fewer `--workers` or a "
                f"smaller `--batch-size`."
            ) from err
        yield item


def _threaded(ds: PatchBatches, threads: int) -> Iterator[tuple[int, Any]]:
    """The dataset's items in order, ``threads`` at a time, each thread with its own slide handle
    (not every reader is safe to share). At most ``threads + 1`` batches are in flight, so memory
    stays bounded on slides with 100k patches."""
    local = threading.local()
    copies: list[PatchBatches] = []
    lock = threading.Lock()

    def item(b: int) -> tuple[int, Any]:
        mine = getattr(local, "ds", None)
        if mine is None:
            mine = local.ds = PatchBatches(ds.path, ds.open_kwargs, ds.coords, ds.level, ds.read,
                                           ds.ps, ds.batch_size, ds.preprocess)
            with lock:
                copies.append(mine)
        return mine[b]

    todo = iter(range(len(ds)))
    try:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fc-read") as pool:
            pending = deque(pool.submit(item, b) for _, b in zip(range(threads + 1), todo))
            while pending:
                fut = pending.popleft()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(item, nxt))
                yield fut.result()
    finally:
        for c in copies:
            c.close()
