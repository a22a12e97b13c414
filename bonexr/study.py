"""The study rule: how views of one study become one answer. Shared by the service's
``/predict/study`` and the training evaluation, so both compute the same study probability.

MURA labels studies: a radiologist reads two or three views and calls the study normal or
abnormal. The paper's rule, kept here:

* **body part**: the router's probabilities summed over the views (the same argmax as their
  mean), so one confident view outweighs an unsure one;
* **probability**: every view scored by *that part's* model, then averaged;
* **decision**: the mean against the part's *study* operating point.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def route_study(router_probabilities: Sequence[Mapping[str, float]]) -> str:
    """The study's body part: argmax of the router probabilities summed over its views
    (ties go to the part listed first)."""
    if not router_probabilities:
        raise ValueError("a study needs at least one view")
    classes = list(router_probabilities[0])
    totals = {c: sum(float(view[c]) for view in router_probabilities) for c in classes}
    return max(classes, key=lambda c: totals[c])


def study_probability(view_probabilities: Sequence[float]) -> float:
    """P(abnormal) of the study: the mean over its views (MURA's rule)."""
    if not view_probabilities:
        raise ValueError("a study needs at least one view")
    return float(sum(view_probabilities) / len(view_probabilities))
