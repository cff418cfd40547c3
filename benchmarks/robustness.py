"""Robustness sweeps: our FGSM against torchattacks, and batched local energy against one repeat at a time.

    .venv/bin/python benchmarks/robustness.py [--preset default] [--images 256] [--eps 31] [key=value ...]

On the preset's model (the finished adam seed-0 pretraining run when there is one, else a fresh
model of the same size; the timing does not depend on the weights) and the first `--images`
test images, one batch:

- FGSM over `--eps` epsilons in [0, 0.05]. Ours takes one input gradient and reuses it for every
  eps; the comparison calls `torchattacks.FGSM` once per eps (a gradient per eps). Timed twice:
  making the adversarial images only, and the whole curve (images, then loss and accuracy of
  each, the same evaluation for both). The results are checked to agree.
- Local energy at one sigma (0.1) with the preset's `energy_repeats`: all repeats at once
  (torch.func.vmap over the perturbed weights) against one repeat at a time in place. Both draw
  the same noise, so their results are checked to agree.
"""
from __future__ import annotations

import argparse

import torch
import torchattacks

from common import adam_checkpoint_or_fresh, parse_study, timed
from minima import attacks, data, robustness
from minima.evaluation import eval_mode, pick_device, to_input


@torch.no_grad()
def accuracy(model, x, y) -> float:
    return (model(x).argmax(1) == y).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--eps", type=int, default=31)
    args, study = parse_study(parser)
    device = pick_device(study.device)
    task = data.load_task(study, "source")
    model, origin = adam_checkpoint_or_fresh(study, task, device)
    x_u8, y = task.x_test[:args.images], task.y_test[:args.images]
    x, y_dev = to_input(x_u8, device), y.to(device)
    epsilons = torch.linspace(0, 0.05, args.eps).tolist()
    print(f"device {device}, threads {torch.get_num_threads()}, preset {study.preset}: {study.arch} width "
          f"{study.width}, {study.image_size} px, {len(y)} test images in one batch; {origin}")

    with eval_mode(model):
        t_ours_img, ours = timed(lambda: [a for _, a in attacks.fgsm_images(model, x, y_dev, epsilons)])
        t_ta_img, theirs = timed(lambda: [torchattacks.FGSM(model, eps=e)(x, y_dev) for e in epsilons])
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ours, theirs)), "FGSM images disagree"
        del ours, theirs
        t_ours, table = timed(lambda: robustness.fgsm(model, x_u8, y, epsilons, batch_size=len(y)))
        t_ta, accs = timed(lambda: [accuracy(model, torchattacks.FGSM(model, eps=e)(x, y_dev), y_dev)
                                    for e in epsilons])
        assert max(abs(a - b) for a, b in zip(table.accuracy, accs)) < 1e-6, "FGSM accuracies disagree"
    print(f"FGSM over {len(epsilons)} eps")
    print(f"  adversarial images only: ours {t_ours_img:6.2f} s, torchattacks loop {t_ta_img:6.2f} s "
          f"-> {t_ta_img / t_ours_img:.1f}x")
    print(f"  whole curve (+ loss and accuracy): ours {t_ours:6.2f} s, torchattacks loop {t_ta:6.2f} s "
          f"-> {t_ta / t_ours:.1f}x (each eps still needs its own forward pass)")

    reps = study.energy_repeats
    energy = lambda batched: robustness.local_energy(model, x_u8, y, [0.1], reps, study.energy_include_bn,
                                                     batch_size=len(y), batched=batched)
    t_loop, looped = timed(lambda: energy(False))
    t_vmap, batched = timed(lambda: energy(True))
    assert list(looped.accuracy) == list(batched.accuracy), "local energy paths disagree"
    print(f"local energy, sigma 0.1, {reps} repeats")
    print(f"  repeats batched (vmap) {t_vmap:6.2f} s, one at a time in place {t_loop:6.2f} s "
          f"-> batched is {t_loop / t_vmap:.2f}x the speed")


if __name__ == "__main__":
    main()
