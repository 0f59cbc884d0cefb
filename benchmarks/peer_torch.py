"""The peer side of ``benchmarks/peer.py``: Barlow Twins with lightly on PyTorch (CPU).

Runs in the peer venv (``python benchmarks/peer.py setup``), never in bt_keras's: it imports
torch, torchvision and lightly, and nothing from bt_keras. One JSON line on stdout per run.

    step   train-step throughput on a synthetic batch (the model, loss and optimizer only)
    e2e    train steps fed by lightly's transform + a DataLoader over a JPEG folder
    knn    pretrain for a CPU-time budget from a JPEG folder, then write the encoder's
           features of DIR/train and DIR/test (``features.npz``) for peer.py's shared kNN

The model is what lightly's own CIFAR-10 benchmark builds (``ResNetGenerator("resnet-18")``,
3×3 stem, no max-pool, global average pooling, ``BarlowTwinsProjectionHead``,
``BarlowTwinsLoss``) at the width and projector asked for; the recipe for ``knn`` is that
benchmark's (SGD lr 0.06 × batch/128, momentum 0.9, weight decay 5e-4, cosine; BYOL views,
blur off), with the cosine driven by the spent fraction of the budget.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from cpu_clock import tree_cpu_seconds
from lightly.loss import BarlowTwinsLoss
from lightly.models import ResNetGenerator
from lightly.models.modules import BarlowTwinsProjectionHead
from torch import nn


class BarlowTwinsTorch(nn.Module):
    def __init__(self, width: int, proj: int):
        super().__init__()
        resnet = ResNetGenerator("resnet-18", width=width / 64)
        resnet.linear = nn.Identity()  # ResNet.forward pools after layer4: the [batch, 8·width] features
        self.backbone = resnet
        self.head = BarlowTwinsProjectionHead(8 * width, proj, proj)

    def forward(self, x):
        return self.head(self.backbone(x))


def build(args):
    torch.manual_seed(args.seed)
    model = BarlowTwinsTorch(args.width, args.proj)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    if args.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)
    elif args.optimizer == "lars":
        from lightly.utils.lars import LARS

        opt = LARS(groups, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    else:
        opt = torch.optim.SGD(groups, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    return model, opt, BarlowTwinsLoss(lambda_param=0.0051), fmt


def train_step(model, opt, loss_fn, x0, x1, bf16=False):
    # bf16: the model under autocast, the loss in float32 (as bt_keras's mixed_bfloat16 does).
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        z0, z1 = model(x0), model(x1)
    loss = loss_fn(z0.float(), z1.float())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def _timed(args, model, opt, loss_fn, next_views) -> dict:
    """``--warmup`` untimed steps, then ``--steps`` timed ones (CPU of this process and its workers)."""
    for _ in range(args.warmup):
        train_step(model, opt, loss_fn, *next_views(), args.bf16)
    c0, w0 = tree_cpu_seconds(), time.perf_counter()
    for _ in range(args.steps):
        loss = train_step(model, opt, loss_fn, *next_views(), args.bf16)
    float(loss.detach())
    return {"pairs": args.steps * args.batch, "cpu_s": tree_cpu_seconds() - c0, "wall_s": time.perf_counter() - w0}


def run_step(args):
    model, opt, loss_fn, fmt = build(args)
    model.train()
    g = torch.Generator().manual_seed(args.seed)
    x0, x1 = (torch.randn(args.batch, 3, args.size, args.size, generator=g).to(memory_format=fmt) for _ in range(2))
    return {**_timed(args, model, opt, loss_fn, lambda: (x0, x1)), "threads": torch.get_num_threads()}


def _loader(args, folder):
    from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform
    from torchvision.datasets import ImageFolder

    views = {"input_size": args.size, "gaussian_blur": 0.0, "min_scale": args.min_scale}
    transform = BYOLTransform(
        view_1_transform=BYOLView1Transform(**views), view_2_transform=BYOLView2Transform(**views)
    )
    data = ImageFolder(folder, transform=transform)
    return torch.utils.data.DataLoader(
        data,
        batch_size=args.batch,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        generator=torch.Generator().manual_seed(args.seed),
    )


def _batches(loader, fmt):
    while True:
        for (x0, x1), _ in loader:
            yield x0.to(memory_format=fmt), x1.to(memory_format=fmt)


def run_e2e(args):
    model, opt, loss_fn, fmt = build(args)
    model.train()
    batches = _batches(_loader(args, os.path.join(args.data, "train")), fmt)
    return {**_timed(args, model, opt, loss_fn, lambda: next(batches)), "workers": args.workers}


@torch.no_grad()
def _features(model, folder, size, fmt):
    from lightly.transforms.utils import IMAGENET_NORMALIZE
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    tf = transforms.Compose(
        [transforms.Resize(size), transforms.ToTensor(), transforms.Normalize(**IMAGENET_NORMALIZE)]
    )
    loader = torch.utils.data.DataLoader(ImageFolder(folder, transform=tf), batch_size=512, num_workers=0)
    model.eval()
    xs, ys = [], []
    for x, y in loader:
        xs.append(model.backbone(x.to(memory_format=fmt)).numpy())
        ys.append(y.numpy())
    import numpy as np

    return np.concatenate(xs), np.concatenate(ys)


def run_knn(args):
    """Pretrains until ``--budget-cpu-s`` CPU seconds (trainer + loader workers) have been spent."""
    import numpy as np

    model, opt, loss_fn, fmt = build(args)
    model.train()
    batches = _batches(_loader(args, os.path.join(args.data, "train")), fmt)
    peak = args.lr
    train_step(model, opt, loss_fn, *next(batches))  # the first step (start-up) is not counted, as on our side
    c0, w0, steps, spent = tree_cpu_seconds(), time.perf_counter(), 0, 0.0
    while spent < args.budget_cpu_s:
        for group in opt.param_groups:
            cosine = peak * 0.5 * (1 + math.cos(math.pi * min(spent / args.budget_cpu_s, 1.0)))
            group["lr"] = cosine * min(1.0, (steps + 1) / args.lr_warmup_steps) if args.lr_warmup_steps else cosine
        train_step(model, opt, loss_fn, *next(batches))
        steps += 1
        spent = tree_cpu_seconds() - c0
    wall = time.perf_counter() - w0
    x_tr, y_tr = _features(model, os.path.join(args.data, "train"), args.size, fmt)
    x_te, y_te = _features(model, os.path.join(args.data, "test"), args.size, fmt)
    np.savez(args.out, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    return {"steps": steps, "pairs": steps * args.batch, "cpu_s": spent, "wall_s": wall, "features": args.out}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["step", "e2e", "knn"])
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--proj", type=int, default=1024)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--optimizer", choices=["adamw", "lars", "sgd"], default="adamw")
    p.add_argument("--lr", type=float, default=0.004)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--bf16", action="store_true", help="step: the model under torch.autocast(bfloat16)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", help="a folder with train/ and test/ (class sub-folders of JPEGs)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--budget-cpu-s", type=float, default=600.0)
    p.add_argument("--min-scale", type=float, default=0.08, help="knn/e2e: smallest crop (lightly's default)")
    p.add_argument("--lr-warmup-steps", type=int, default=0, help="knn: linear warmup before the cosine")
    p.add_argument("--out", help="features.npz (knn)")
    args = p.parse_args(argv)
    result = {"step": run_step, "e2e": run_e2e, "knn": run_knn}[args.mode](args)
    result.update(side="lightly", torch=torch.__version__, channels_last=args.channels_last, bf16=args.bf16)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
