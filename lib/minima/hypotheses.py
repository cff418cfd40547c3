"""The primary hypotheses a preset can declare before its runs: each one claim, one test, one id.

Data only: the config checks a preset's `primary` ids against `HYPOTHESES`, `minima.confirmatory` tests them
as one family. Three kinds:
- a *control*: a method's signature from the literature (SAM flatter, SWA a lower trace, adversarial training
  more PGD-robust, noisy Adam more noise-robust), a method against Adam on one run-level property. It checks the
  instrument: a study whose Hessian cannot see SAM's flatter minimum cannot read its flatness verdicts.
- a *claim*: the report's question, a rank correlation of a run-level property with a finetuning outcome over
  every pretraining run. `gate` names the control whose instrument it reads the property through.
- a *knob*: the causal arm, along the first swept knob: turning it moves robustness and the outcome.
"""
from __future__ import annotations

from dataclasses import dataclass

KINDS = ("control", "claim", "knob")


@dataclass(frozen=True)
class Hypothesis:
    """One primary hypothesis: `x` is `expected` (+1 higher, -1 lower) for `method` than for Adam (a control),
    goes with `y` (+1 the same way, -1 the other; a claim), or moves with the knob together with `y` (a knob)."""

    id: str
    claim: str
    kind: str
    x: str
    expected: int
    y: str = ""
    method: str = ""
    gate: str = ""
    source: str = ""


HYPOTHESES = {h.id: h for h in (
    Hypothesis("sam_flatter", "SAM finds a lower top Hessian eigenvalue than Adam", "control", "hessian_top", -1,
               method="sam", source="Foret et al. 2021"),
    Hypothesis("swa_lower_trace", "SWA finds a lower Hessian trace than Adam", "control", "hessian_trace", -1,
               method="swa", source="Izmailov et al. 2018"),
    Hypothesis("adversarial_pgd", "adversarial training is more accurate under PGD than Adam", "control", "pgd_auc",
               1, method="adversarial", source="Madry et al. 2018"),
    Hypothesis("noisy_gaussian", "noisy Adam is more accurate under Gaussian noise than Adam", "control",
               "gaussian_auc", 1, method="noisy_adam", source="the study report"),
    Hypothesis("robust_travels_less", "the more robust a pretraining run, the less it travels while finetuning",
               "claim", "robustness", -1, y="distance_all", source="the study report"),
    Hypothesis("robust_finetunes_better", "the more robust a pretraining run, the higher its finetuned accuracy",
               "claim", "robustness", 1, y="test_accuracy", source="the study report"),
    Hypothesis("flat_finetunes_better",
               "the flatter a pretraining run (lower top Hessian eigenvalue), the higher its finetuned accuracy",
               "claim", "hessian_top", -1, y="test_accuracy", gate="sam_flatter", source="the study's question"),
    Hypothesis("knob_causes", "turning the first swept knob towards more robustness raises finetuned accuracy",
               "knob", "robustness", 1, y="test_accuracy", source="the study's causal arm"),
)}
VALID = f"a list of primary hypothesis ids, each one of {', '.join(HYPOTHESES)}"
