"""The registry of pretraining methods: each method is one class here, declaring its config keys.

A method plugs into the one training loop (`train.fit`) through the hooks of `Method` and
declares its settings as `knobs`; the config accepts, validates and caches by those keys, and
runs, tables and notebooks pick the method up by name. Adding a method is one class with the
`@register` decorator: nothing else changes.

torch is imported inside the hooks that use it: the config imports this module to validate the
methods' keys, and the command line rejects a bad key in a fraction of a second, before torch loads.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Mapping

if TYPE_CHECKING:
    import torch
    from torch import nn

    from minima.config import Study


@dataclass(frozen=True)
class Knob:
    """A method's setting: its value when a preset leaves it out, and what values are valid."""

    default: Any
    valid: str
    check: Callable[[Any], bool] | None = None


class Method:
    """A pretraining method: plain Adam (AdamW) unless a subclass overrides the hooks it changes."""

    name: ClassVar[str] = ""
    knobs: ClassVar[dict[str, Knob]] = {}
    strength: ClassVar[str | None] = None  # the knob that sets how strongly the method departs from Adam
    clean_train_metrics: ClassVar[bool] = False  # also evaluate on clean train images each epoch
    # the robustness measures (minima.robustness) whose perturbation the method trains on: a robustness composite
    # that kept them would reward the method on its own training signal (conclusions.composite_measures)
    trains_on: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **settings: Any) -> None:
        unknown = set(settings) - set(self.knobs)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no setting {sorted(unknown)[0]!r}; "
                            f"its settings: {', '.join(self.knobs) or 'none'}")
        for key, knob in self.knobs.items():
            setattr(self, key, settings.get(key, knob.default))

    @classmethod
    def problem(cls, study: "Study") -> str | None:
        """Why the study's other keys make this method fail or measure nothing (one line), if they do."""
        return None

    def setup(self, model: "nn.Module", optimizer: "torch.optim.Optimizer", steps_per_epoch: int) -> None:
        """Called once before the first epoch (and again before resuming)."""

    def corrupt(self, x: "torch.Tensor", generator: "torch.Generator") -> "torch.Tensor":
        """The images the network is shown this step (float, 0-1 scale)."""
        return x

    def step(self, net: "nn.Module", x: "torch.Tensor", y: "torch.Tensor", optimizer: "torch.optim.Optimizer",
             generator: "torch.Generator") -> tuple["torch.Tensor", "torch.Tensor"]:
        """One optimizer step on the batch (x, y); returns the loss and logits the epoch's train metrics count."""
        loss, logits = forward_backward(net, x, y, optimizer)
        optimizer.step()
        return loss, logits

    def after_step(self, model: "nn.Module", step: int) -> None:
        """Called after every optimizer step; `step` counts from 1 over the whole run."""

    def after_epoch(self, model: "nn.Module", row: dict[str, Any]) -> None:
        """Called after every epoch with its metrics; may add columns to `row`."""

    def is_done(self, epochs_done: int, epochs: int) -> bool:
        """Whether training stops after `epochs_done` epochs of a run planned for `epochs`."""
        return epochs_done >= epochs

    def scheduler(self) -> Any | None:
        """A learning-rate scheduler that replaces the spec's schedule, if the method has one now."""
        return None

    def finish(self, model: "nn.Module", x_train: "torch.Tensor") -> "nn.Module":
        """The model this method hands over at the end of training (`x_train`: the uint8 train images)."""
        return model

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (resuming)."""


# ---------------------------------------------------------------- pieces of a step (torch imported inside)

def forward_backward(net: "nn.Module", x: "torch.Tensor", y: "torch.Tensor",
                     optimizer: "torch.optim.Optimizer") -> tuple["torch.Tensor", "torch.Tensor"]:
    """Cross-entropy of the batch (forward under autocast) and its gradient in the parameters' `.grad`."""
    import torch.nn.functional as F

    from minima.evaluation import autocast

    with autocast(x.device):
        logits = net(x).float()
    loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    return loss, logits


def trained(optimizer: "torch.optim.Optimizer") -> list["torch.Tensor"]:
    """The parameters the optimizer steps, in its order."""
    return [p for group in optimizer.param_groups for p in group["params"]]


@contextmanager
def batchnorm_stats_kept(net: "nn.Module") -> Iterator[None]:
    """Forward passes in the block leave every batchnorm layer's running statistics (and count) as they were."""
    from torch import nn

    buffers = [b for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for b in m.buffers()]
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        for b, s in zip(buffers, saved):
            b.copy_(s)


REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Add a method class to the registry under `cls.name`; its knob names must be new."""
    if not cls.name or cls.name in REGISTRY:
        raise ValueError(f"method name {cls.name!r} is empty or taken; taken: {', '.join(REGISTRY)}")
    clash = set(cls.knobs) & set(all_knobs())
    if clash:
        raise ValueError(f"method {cls.name!r}: knob {sorted(clash)[0]!r} already belongs to another method")
    REGISTRY[cls.name] = cls
    return cls


def all_knobs() -> dict[str, Knob]:
    """Every registered method's knobs, in registration order."""
    return {k: knob for cls in REGISTRY.values() for k, knob in cls.knobs.items()}


def make(name: str, settings: Mapping[str, Any] | Any) -> Method:
    """The method `name` with its knobs read from `settings` (a study, or a mapping of key to value)."""
    if name not in REGISTRY:
        raise ValueError(f"method={name!r}; registered methods: {', '.join(REGISTRY)}")
    cls = REGISTRY[name]
    get = settings.get if isinstance(settings, Mapping) else lambda k: getattr(settings, k)
    return cls(**{k: get(k) for k in cls.knobs})


def steps_per_epoch(images: int, batch_size: int) -> int:
    """What `train.fit` does: batches of min(batch_size, images), the last partial batch dropped."""
    return images // min(batch_size, images)


@register
class Adam(Method):
    """Adam with decoupled weight decay (AdamW): the baseline every other method departs from."""

    name = "adam"


@register
class NoisyAdam(Method):
    """Adam on images corrupted by fresh additive Gaussian noise every time they are shown."""

    name = "noisy_adam"
    knobs = {"noise_sigma": Knob(0.05, "a number >= 0 (pixel scale 0-1)", lambda v: v >= 0)}
    strength = "noise_sigma"
    trains_on = ("gaussian",)
    clean_train_metrics = True
    noise_sigma: float

    @classmethod
    def problem(cls, study: "Study") -> str | None:
        """With no noise, noisy_adam repeats adam (and the landscape plane collapses) when adam is in the study.

        Alone (a sweep over noise_sigma), noise 0 is the sweep's zero dose.
        """
        if study.noise_sigma == 0 and "adam" in study.methods:
            return ("noise_sigma=0.0 makes noisy_adam train exactly like adam; valid with adam and noisy_adam "
                    "in methods: a number > 0 (pixel scale 0-1)")
        return None

    def corrupt(self, x: "torch.Tensor", generator: "torch.Generator") -> "torch.Tensor":
        import torch

        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (x + self.noise_sigma * noise).clamp_(0, 1)


@register
class SWA(Method):
    """Adam until train accuracy reaches `swa_threshold`, then SWA: a linear anneal to a constant
    learning rate, weights averaged every `swa_every` steps; batchnorm recomputed at the end.

    If the threshold is not reached within the planned epochs, the SWA phase starts anyway
    (the history's `phase` column and `swa_start_epoch` say when it did).
    """

    name = "swa"
    knobs = {
        "swa_threshold": Knob(0.95, "a train accuracy in (0, 1]", lambda v: 0 < v <= 1),
        "swa_lr": Knob(1e-3, "a number > 0", lambda v: v > 0),
        "swa_anneal_epochs": Knob(1, "an integer >= 0", lambda v: v >= 0),
        "swa_epochs": Knob(4, "an integer > 0", lambda v: v > 0),
        "swa_every": Knob(5, "an integer > 0 (optimizer steps between averages)", lambda v: v > 0),
    }
    strength = "swa_lr"
    swa_threshold: float
    swa_lr: float
    swa_anneal_epochs: int
    swa_epochs: int
    swa_every: int

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.start_epoch: int | None = None  # first epoch of the SWA phase
        self.steps_in_phase = 0
        self.averaged = None
        self.swalr = None

    @classmethod
    def problem(cls, study: "Study") -> str | None:
        """SWA averages every swa_every steps once its anneal is over: with none, pretraining fails at the end."""
        per_epoch = steps_per_epoch(study.source_classes * study.source_train_per_class, study.batch_size)
        phase, anneal = study.swa_epochs * per_epoch, study.swa_anneal_epochs * per_epoch
        if phase <= anneal:
            return (f"swa_epochs={study.swa_epochs} is not longer than swa_anneal_epochs={study.swa_anneal_epochs}: "
                    "SWA would average no weights; valid: swa_epochs > swa_anneal_epochs")
        if phase // study.swa_every * study.swa_every <= anneal:
            return (f"swa_every={study.swa_every}: SWA would average no weights, no multiple of it lies in steps "
                    f"{anneal + 1} to {phase} of the SWA phase (swa_epochs={study.swa_epochs} x {per_epoch} steps "
                    f"per epoch, the first {anneal} annealing); valid: a value with a multiple in "
                    f"{anneal + 1}..{phase}, such as {phase - anneal} or {phase}")
        return None

    def setup(self, model: "nn.Module", optimizer: "torch.optim.Optimizer", steps_per_epoch: int) -> None:
        self.model, self.optimizer, self.steps_per_epoch = model, optimizer, steps_per_epoch

    def _start_phase(self) -> None:
        from torch.optim.swa_utils import SWALR, AveragedModel

        # use_buffers=False: parameters are averaged; batchnorm statistics are recomputed at the end
        self.averaged = AveragedModel(self.model, use_buffers=False)
        self.swalr = SWALR(self.optimizer, swa_lr=self.swa_lr, anneal_strategy="linear",
                           anneal_epochs=self.swa_anneal_epochs * self.steps_per_epoch)

    def scheduler(self) -> Any | None:
        return self.swalr

    def after_step(self, model: "nn.Module", step: int) -> None:
        if self.averaged is None:
            return
        self.steps_in_phase += 1
        annealed = self.steps_in_phase > self.swa_anneal_epochs * self.steps_per_epoch
        if annealed and self.steps_in_phase % self.swa_every == 0:
            self.averaged.update_parameters(model)

    def after_epoch(self, model: "nn.Module", row: dict[str, Any]) -> None:
        row["phase"] = "adam" if self.start_epoch is None else "swa"
        if self.start_epoch is None and row["train_accuracy"] >= self.swa_threshold:
            self.start_epoch = row["epoch"] + 1
            self._start_phase()

    def is_done(self, epochs_done: int, epochs: int) -> bool:
        if self.start_epoch is None and epochs_done >= epochs:
            self.start_epoch = epochs_done + 1
            self._start_phase()
        return self.start_epoch is not None and epochs_done >= self.start_epoch - 1 + self.swa_epochs

    def finish(self, model: "nn.Module", x_train: "torch.Tensor") -> "nn.Module":
        from minima.evaluation import recompute_bn

        if self.averaged is None or int(self.averaged.n_averaged) == 0:
            raise RuntimeError("SWA averaged no weights: make swa_epochs longer than swa_anneal_epochs "
                               "or swa_every smaller than the steps of an epoch")
        return recompute_bn(self.averaged.module, x_train)

    def state_dict(self) -> dict[str, Any]:
        if self.averaged is None:
            return dict(start_epoch=-1)
        return dict(start_epoch=self.start_epoch, steps_in_phase=self.steps_in_phase,
                    averaged=self.averaged.state_dict(), swalr=self.swalr.state_dict())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("start_epoch", -1) == -1:
            return
        self.start_epoch, self.steps_in_phase = state["start_epoch"], state["steps_in_phase"]
        self._start_phase()
        self.averaged.load_state_dict(state["averaged"])
        self.swalr.load_state_dict(state["swalr"])


@register
class SAM(Method):
    """Sharpness-Aware Minimization (Foret et al. 2021) over AdamW: the gradient AdamW applies at w is
    taken at w + e, e = sam_rho g / ||g|| from the batch's gradient g at w; with sam_adaptive, ASAM
    (Kwon et al. 2021): e = sam_rho T^2 g / ||T g||, T = |w| elementwise (their eta = 0).

    Two forward and backward passes per step. The epoch's train loss and accuracy are the first
    pass's (at w); batchnorm running statistics move on the first pass only, as a plain step's do.
    """

    name = "sam"
    knobs = {
        "sam_rho": Knob(0.05, "a number > 0 (radius of the weight perturbation)", lambda v: v > 0),
        "sam_adaptive": Knob(False, "true (ASAM) or false (SAM)"),
    }
    strength = "sam_rho"
    sam_rho: float
    sam_adaptive: bool

    def step(self, net: "nn.Module", x: "torch.Tensor", y: "torch.Tensor", optimizer: "torch.optim.Optimizer",
             generator: "torch.Generator") -> tuple["torch.Tensor", "torch.Tensor"]:
        import torch

        loss, logits = forward_backward(net, x, y, optimizer)
        params = [p for p in trained(optimizer) if p.grad is not None]
        with torch.no_grad():
            saved = [p.clone() for p in params]
            for p, e in zip(params, self.perturbation(params)):
                p.add_(e)
        with batchnorm_stats_kept(net):
            forward_backward(net, x, y, optimizer)
        with torch.no_grad():
            for p, w in zip(params, saved):
                p.copy_(w)  # back to w exactly (w + e - e would round)
        optimizer.step()
        return loss, logits

    def perturbation(self, params: list["torch.Tensor"]) -> list["torch.Tensor"]:
        """e for every parameter, from the gradients in `.grad` (SAM, or ASAM's scaled by |w|)."""
        import torch

        scaled = [p.grad * p.abs() if self.sam_adaptive else p.grad for p in params]
        norm = torch.linalg.vector_norm(torch.cat([s.reshape(-1) for s in scaled]))
        scale = self.sam_rho / norm.clamp_min(torch.finfo(norm.dtype).tiny)  # a zero gradient: e = 0
        return [s * p.abs() * scale if self.sam_adaptive else s * scale for s, p in zip(scaled, params)]


@register
class Adversarial(Method):
    """Adversarial training (Madry et al. 2018) on L-infinity PGD images with a uniform random start in
    the adv_eps ball, adv_steps signed-gradient steps of 2.5 adv_eps / adv_steps, each projected to the
    ball and [0, 1]; adv_steps = 1 is fast FGSM training with a random start and a step of 1.25 adv_eps
    (Wong et al. 2020).

    The attack runs on the model in train mode, as the step does (batchnorm normalises by the batch),
    but its passes leave the running statistics and the parameters' gradients alone: only the
    training pass on the adversarial images moves them. The epoch's train loss and accuracy are on
    the adversarial images; `clean_train_*` are on the clean ones.
    """

    name = "adversarial"
    knobs = {
        "adv_eps": Knob(0.002, "a number in (0, 1] (pixel scale 0-1)", lambda v: 0 < v <= 1),
        "adv_steps": Knob(1, "an integer >= 1 (1: FGSM with a random start)", lambda v: v >= 1),
    }
    strength = "adv_eps"
    trains_on = ("fgsm", "pgd")
    clean_train_metrics = True
    adv_eps: float
    adv_steps: int

    def step(self, net: "nn.Module", x: "torch.Tensor", y: "torch.Tensor", optimizer: "torch.optim.Optimizer",
             generator: "torch.Generator") -> tuple["torch.Tensor", "torch.Tensor"]:
        return super().step(net, self.attack(net, x, y, generator), y, optimizer, generator)

    def attack(self, net: "nn.Module", x: "torch.Tensor", y: "torch.Tensor",
               generator: "torch.Generator") -> "torch.Tensor":
        """The adversarial images of a batch (the model in the mode it is in; its statistics kept)."""
        from minima.evaluation import autocast
        from minima.attacks import pgd_images

        step_size = 1.25 * self.adv_eps if self.adv_steps == 1 else 2.5 * self.adv_eps / self.adv_steps
        with batchnorm_stats_kept(net), autocast(x.device):  # input gradients only: no parameter's .grad moves
            return pgd_images(net, x, y, self.adv_eps, self.adv_steps, step_size, generator)


@register
class EntropySGD(Method):
    """Entropy-SGD (Chaudhari et al. 2017) with AdamW as the inner optimiser: every batch is one inner
    Langevin step on the loss plus the coupling (entropy_gamma / 2) |w' - w|^2 to the anchor w, with
    thermal noise entropy_noise sqrt(lr) N(0, 1); mu averages the inner weights (mu <- 0.25 mu + 0.75 w').
    After entropy_steps inner steps, and at the end of every epoch, the anchor takes the outer step
    w <- w - (w - mu) (outer learning rate 1, no momentum) and the inner weights restart there, so
    every epoch ends, is evaluated and is handed over at the anchor.

    Why entropy-SGD and not replicated SGD (Pittorino et al. 2021): as in Chaudhari et al., each inner
    step draws a fresh batch, so an epoch costs what an Adam epoch costs plus a few elementwise
    operations and two copies of the weights; replicated SGD trains y replicas (y = 3 to 10 in
    Pittorino et al.), y times the compute and optimiser memory, and its centre has no batchnorm
    statistics of its own. The epoch's train loss and accuracy are those of the inner weights.
    """

    name = "entropy_sgd"
    knobs = {
        "entropy_gamma": Knob(0.03, "a number > 0 (coupling of the inner weights to the anchor)", lambda v: v > 0),
        "entropy_steps": Knob(5, "an integer >= 1 (inner steps per outer step)", lambda v: v >= 1),
        "entropy_noise": Knob(1e-4, "a number >= 0 (Langevin noise, times sqrt(lr))", lambda v: v >= 0),
    }
    strength = "entropy_gamma"
    trains_on = ("energy",)  # it descends the loss smoothed by Gaussian weight noise (local entropy)
    entropy_gamma: float
    entropy_steps: int
    entropy_noise: float
    average_weight = 0.75  # Chaudhari et al.'s beta_1: mu's exponential average of the inner weights

    @classmethod
    def problem(cls, study: "Study") -> str | None:
        """Outer steps happen at the end of every epoch too: more inner steps than an epoch has never run."""
        per_epoch = steps_per_epoch(study.source_classes * study.source_train_per_class, study.batch_size)
        if study.entropy_steps > per_epoch:
            return (f"entropy_steps={study.entropy_steps} is more than the {per_epoch} steps of an epoch (the "
                    f"anchor also steps at every epoch's end); valid: an integer in 1..{per_epoch}")
        return None

    def setup(self, model: "nn.Module", optimizer: "torch.optim.Optimizer", steps_per_epoch: int) -> None:
        self.params, self.steps_per_epoch = trained(optimizer), steps_per_epoch
        self.anchor = [p.detach().clone() for p in self.params]
        self.average = [p.detach().clone() for p in self.params]

    def step(self, net: "nn.Module", x: "torch.Tensor", y: "torch.Tensor", optimizer: "torch.optim.Optimizer",
             generator: "torch.Generator") -> tuple["torch.Tensor", "torch.Tensor"]:
        import torch

        loss, logits = forward_backward(net, x, y, optimizer)
        with torch.no_grad():
            for p, w in zip(self.params, self.anchor):
                if p.grad is not None:
                    p.grad.add_(p - w, alpha=self.entropy_gamma)
            optimizer.step()
            sd = self.entropy_noise * optimizer.param_groups[0]["lr"] ** 0.5
            for p, mu in zip(self.params, self.average):
                if sd > 0:
                    p.add_(torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype), alpha=sd)
                mu.lerp_(p, self.average_weight)
        return loss, logits

    def after_step(self, model: "nn.Module", step: int) -> None:
        in_epoch = (step - 1) % self.steps_per_epoch + 1
        if in_epoch % self.entropy_steps == 0 or in_epoch == self.steps_per_epoch:
            import torch

            with torch.no_grad():
                for p, w, mu in zip(self.params, self.anchor, self.average):
                    w.copy_(mu)  # w - 1 * (w - mu), exactly
                    p.copy_(w)

    def state_dict(self) -> dict[str, Any]:
        return dict(anchor=self.anchor, average=self.average)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for mine, saved in zip(self.anchor + self.average, state["anchor"] + state["average"]):
            mine.copy_(saved)
