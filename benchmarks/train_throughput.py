"""Training throughput: our loop against a plain PyTorch loop, and achieved GFLOP/s against matmul.

    .venv/bin/python benchmarks/train_throughput.py [--preset default] [--repeats 3] [key=value ...]

Both loops train the same model (same init) on the same source task for one epoch and then
evaluate the test set; each is timed `repeats` times after a warm-up epoch, alternating, and the
median is reported. The plain loop is written the usual way: a DataLoader over a float
TensorDataset (NCHW), `.item()` every step for logging.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from common import parse_study
from minima import data, models
from minima.evaluation import pick_device
from minima.methods import Adam
from minima.train import TrainSpec, fit


def plain_epoch(model, train: DataLoader, test: DataLoader, optimizer, device) -> float:
    model.train()
    running = 0.0
    for x, y in train:
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running += loss.item()
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in test:
            correct += (model(x.to(device)).argmax(1) == y.to(device)).sum().item()
    return running


def train_flops_per_image(model, image_size: int, device, batch: int = 32) -> float:
    """FLOPs of one forward and backward pass, per image."""
    x = torch.rand(batch, 3, image_size, image_size, device=device)
    y = torch.zeros(batch, dtype=torch.long, device=device)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def matmul_gflops(device, dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """The best rate of an n x n matmul in `dtype` on `device` (GFLOP/s)."""
    if device.type == "cuda":
        n = 8192  # big enough to fill the GPU
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / min(times) / 1e9


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args, study = parse_study(parser)
    device = pick_device(study.device)
    task = data.load_task(study, "source")
    n_train, n_test = len(task.y_train), len(task.y_test)
    spec = TrainSpec(epochs=1, batch_size=study.batch_size, lr=study.lr, weight_decay=study.weight_decay,
                     label="ours", compile=study.compile)

    torch.manual_seed(0)
    ours_model = models.model_for(study, task.n_classes).to(device, memory_format=torch.channels_last)
    torch.manual_seed(0)
    plain_model = models.model_for(study, task.n_classes).to(device)
    plain_opt = torch.optim.AdamW(plain_model.parameters(), lr=study.lr, weight_decay=study.weight_decay)
    train_ds = TensorDataset(task.x_train.float() / 255, task.y_train)
    test_ds = TensorDataset(task.x_test.float() / 255, task.y_test)
    train_dl = DataLoader(train_ds, batch_size=study.batch_size, shuffle=True, drop_last=True)
    test_dl = DataLoader(test_ds, batch_size=512)

    def ours() -> None:
        fit(ours_model, task, spec, Adam())
        _sync(device)

    def plain() -> None:
        plain_epoch(plain_model, train_dl, test_dl, plain_opt, device)
        _sync(device)

    timings = {"ours": [], "plain": []}
    for name, fn in (("ours", ours), ("plain", plain)):
        fn()  # warm-up
    for _ in range(args.repeats):
        for name, fn in (("ours", ours), ("plain", plain)):
            start = time.perf_counter()
            fn()
            timings[name].append(time.perf_counter() - start)

    images = n_train  # per epoch; both loops also evaluate the same test set
    rate = {k: images / statistics.median(v) for k, v in timings.items()}
    flops = train_flops_per_image(models.model_for(study, task.n_classes).to(device), study.image_size, device)
    eval_flops = flops / 3 * n_test / n_train  # forward only, on the test set, per training image
    achieved = rate["ours"] * (flops + eval_flops) / 1e9
    # the rate our loop's arithmetic could reach: bf16 under autocast on CUDA, float32 elsewhere
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_gflops(device, dtype)
    print(f"device {device}, threads {torch.get_num_threads()}, preset {study.preset}: {study.arch} "
          f"width {study.width}, {study.image_size} px, batch {study.batch_size}, "
          f"{n_train} train + {n_test} test images per epoch, median of {args.repeats}")
    for name in ("ours", "plain"):
        print(f"  {name:<6} {rate[name]:8.0f} train images/s  (epoch {statistics.median(timings[name]):.2f} s)")
    print(f"  speed-up of our loop over the plain loop: {rate['ours'] / rate['plain']:.2f}x")
    print(f"  training FLOPs per image (forward + backward): {flops / 1e6:.1f} MFLOP")
    print(f"  our loop achieves {achieved:.1f} GFLOP/s; {str(dtype).removeprefix('torch.')} matmul runs at "
          f"{peak:.1f} GFLOP/s -> {achieved / peak:.0%} of the matmul rate")


if __name__ == "__main__":
    main()
