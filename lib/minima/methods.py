"""The registry of pretraining methods: each method is one class here, declaring its config keys.

A method plugs into the one training loop (`train.fit`) through the hooks of `Method` and
declares its settings as `knobs`; the config accepts, validates and caches by those keys, and
runs, tables and notebooks pick the method up by name. Adding a method is one class with the
`@register` decorator: nothing else changes.

torch is imported inside the hooks that use it: the config imports this module to validate the
methods' keys, and the command line rejects a bad key in a fraction of a second, before torch loads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

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
    clean_train_metrics = True
    noise_sigma: float

    @classmethod
    def problem(cls, study: "Study") -> str | None:
        """With no noise, noisy_adam repeats adam step for step (and the landscape plane collapses)."""
        if study.noise_sigma == 0:
            return ("noise_sigma=0.0 makes noisy_adam train exactly like adam; valid with noisy_adam "
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
        if self.start_epoch is None and row["train_acc"] >= self.swa_threshold:
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
