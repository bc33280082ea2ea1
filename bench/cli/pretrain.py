"""``bench pretrain``: ImageNet-style pre-training of Pixel-Mamba (the paper's recipe)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from .common import Formatter, add_tracker, parse_sets, tracker_settings

log = logging.getLogger("bench")

EPILOG = """examples:
  python -m bench pretrain --data /data/imagenet                        # pixelmamba-6m, the paper's recipe
  python -m bench pretrain --data /data/imagenet --model pixelmamba-21m --set micro_batch=32
  torchrun --nproc_per_node 8 -m bench pretrain --data /data/imagenet   # DDP, as the paper's 8 GPUs
  python -m bench run --methods pixelmamba-6m --dataset luad --init results/pretrain/pixelmamba-6m/last.pt
--data is an ImageFolder: <data>/train/<class>/*.JPEG (and <data>/val/<class>/*, evaluated at the end),
or <data>/<class>/* directly. Rerunning the same command resumes from <out>/last.pt.
Recipe (bench/engine/pretrain.py): 224², AdamW lr 1e-3, weight decay 0.05, batch 1024, 300 epochs, cosine with 5
warm-up epochs, label smoothing 0.1, mixup 0.8, random erasing 0.25; change any with --set key=value
(epochs, batch_size, micro_batch, lr, min_lr, weight_decay, warmup_epochs, smoothing, mixup, cutmix, reprob,
input_size, workers, seed, save_every, max_steps).
--tracker (default tensorboard, <results>/tracking/) records one run, pretrain/<model>: loss and learning
rate per optimizer step (a resumed run continues the curve), the last loss and val top-1 at the end.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="ImageNet-style pre-training of Pixel-Mamba (resumable)", epilog=EPILOG,
                       formatter_class=Formatter)
    p.add_argument("--data", type=Path, required=True, help="ImageFolder root")
    p.add_argument("--model", default="pixelmamba-6m", help="pixelmamba-6m (default) or pixelmamba-21m")
    p.add_argument("--out", type=Path, help="checkpoint directory (default <results>/pretrain/<model>)")
    p.add_argument("--results", type=Path, default=Path(os.environ.get("BENCH_RESULTS", "results")),
                   help="results root (env BENCH_RESULTS; default %(default)s)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="recipe override (see below)")
    p.add_argument("--model-option", action="append", metavar="KEY=VALUE",
                   help="pixelmamba.create_model override, e.g. scan_window=224, act_dtype=bfloat16")
    add_tracker(p, what="the pre-training run (named pretrain/<model>)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..engine import distributed as D
    from ..engine.pretrain import PretrainConfig, pretrain

    D.init_from_env()
    cfg = PretrainConfig.from_dict({"model": args.model, **parse_sets(args.set),
                                    "model_options": parse_sets(args.model_option)})
    out = args.out or args.results / "pretrain" / args.model
    summary = pretrain(args.data, out, cfg, progress=not args.quiet, tracker=tracker_settings(args))
    if D.is_main():
        extra = f", val top-1 {summary['val_top1']:.4f}" if "val_top1" in summary else ""
        print(f"{summary['steps']} step(s), last loss {summary['last_loss']:.4f}{extra} "
              f"({summary['seconds']:.1f} s); checkpoint: {summary['checkpoint']}")
    return 0
