"""Hessian-vector products three ways, and the time of every flatness measure on one model.

    .venv/bin/python benchmarks/sharpness.py [--preset default] [--repeats 3] [key=value ...]

On the preset's model (the finished adam seed-0 pretraining run when there is one, else a fresh
model of the same size) in eval mode, and the stratified train subset (`flatness_per_class`
images per class, the images of the study's flatness table), as one batch, in the non-batchnorm parameters:

- one Hessian-vector product of the mean cross-entropy, on the same random vectors: torch.func
  forward-over-reverse (jvp of grad), double backward (autograd.grad of the gradient with
  create_graph), and curvlinops' HessianLinearOperator (jvp of jacrev under vmap, what
  `minima.sharpness` uses). Each is timed `repeats` times after a warm-up; the median is reported,
  and the products are checked to agree.
- every measure of `sharpness.flatness` with the study's settings (hessian_top_k, hutchinson_probes,
  sharpness_rho_average / _worst, sharpness_samples, sharpness_steps), timed once each, and their sum:
  what one run costs the study's flatness table (plus loading the data and the model).
"""
from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp

from common import adam_checkpoint_or_fresh, parse_study, timed
from minima import data, sharpness
from minima.evaluation import eval_mode, pick_device, to_input


def median_time(fn, repeats: int):
    fn()  # warm-up
    runs = [timed(fn) for _ in range(repeats)]
    return statistics.median(t for t, _ in runs), runs[-1][1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args, study = parse_study(parser)
    device = pick_device(study.device)
    task = data.load_task(study, "source")
    model, origin = adam_checkpoint_or_fresh(study, task, device)
    subset = data.stratified_indices(task.y_train, study.flatness_per_class, study.seed)
    x_u8, y = task.x_train[subset].to(device), task.y_train[subset].to(device)
    x = to_input(x_u8, device)
    names = sharpness.hessian_names(model)
    params = {n: p.detach() for n, p in model.named_parameters() if n in names}
    size = sum(p.numel() for p in params.values())
    print(f"device {device}, threads {torch.get_num_threads()}, preset {study.preset}: {study.arch} width "
          f"{study.width}, {study.image_size} px, {len(y)} train images in one batch, {size} non-batchnorm "
          f"parameters; {origin}")

    g = torch.Generator(device=device).manual_seed(0)
    v = {n: torch.randn(p.shape, generator=g, device=device) for n, p in params.items()}

    def loss(p):
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    def by_func():
        return torch.cat([t.flatten() for t in jvp(grad(loss), (params,), (v,))[1].values()])

    def by_double_backward():
        live = [p.requires_grad_(True) for p in (t.clone() for t in params.values())]
        g1 = torch.autograd.grad(loss(dict(zip(params, live))), live, create_graph=True)
        return torch.cat([t.flatten() for t in torch.autograd.grad(g1, live, grad_outputs=list(v.values()))])

    with eval_mode(model):
        op = sharpness.hessian_operator(model, x_u8, y)
        flat_v = torch.cat([t.flatten() for t in v.values()])
        t_func, h_func = median_time(by_func, args.repeats)
        t_double, h_double = median_time(by_double_backward, args.repeats)
        t_curv, h_curv = median_time(lambda: op @ flat_v, args.repeats)
    # three float32 computations of one product in different operation orders: they agree to
    # ~1e-6 relative; a missing term or a wrong factor of 2 moves the product by O(1) relative
    diffs = {k: ((h - h_double).norm() / h_double.norm()).item() for k, h in (("func", h_func), ("curvlinops", h_curv))}
    assert max(diffs.values()) < 1e-3, f"Hessian-vector products disagree: {diffs}"
    print(f"Hessian-vector product (median of {args.repeats}), relative difference to double backward:")
    print(f"  torch.func jvp(grad) {t_func:7.3f} s ({diffs['func']:.1e}) | double backward {t_double:7.3f} s | "
          f"curvlinops operator {t_curv:7.3f} s ({diffs['curvlinops']:.1e})")
    print(f"  double backward / torch.func = {t_double / t_func:.2f}x, curvlinops / torch.func = {t_curv / t_func:.2f}x")

    rho_avg, rho_worst, seed = study.sharpness_rho_average, study.sharpness_rho_worst, study.seed
    measures = {
        f"hessian_eigenvalues, k={study.hessian_top_k} (Lanczos, tol 1e-3)":
            lambda: sharpness.hessian_eigenvalues(model, x_u8, y, study.hessian_top_k, seed=seed),
        f"hessian_trace, {study.hutchinson_probes} probes":
            lambda: sharpness.hessian_trace(model, x_u8, y, study.hutchinson_probes, seed=seed),
        f"adaptive average, rho {rho_avg}, {study.sharpness_samples} samples":
            lambda: sharpness.adaptive_sharpness(model, x_u8, y, rho_avg, "average", samples=study.sharpness_samples,
                                                 seed=seed),
        f"adaptive worst, linf rho {rho_worst}, {study.sharpness_steps} steps":
            lambda: sharpness.adaptive_sharpness(model, x_u8, y, rho_worst, "worst", "linf",
                                                 steps=study.sharpness_steps, seed=seed),
    }
    print("flatness measures with the study's settings (one run each):")
    total = 0.0
    for name, fn in measures.items():
        t, result = timed(fn)
        total += t
        shown = [round(r, 4) for r in result] if isinstance(result, list) else {k: round(r, 5) for k, r in result.items()}
        print(f"  {name:55s} {t:7.1f} s  {shown}")
    print(f"  {'all four':55s} {total:7.1f} s")


if __name__ == "__main__":
    main()
