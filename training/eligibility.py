"""The content gate fitted and measured at export: what it accepts and what it refuses.

* fitted: class means and covariance of the router's pooled features on the *train*
  split, the limit on the *validation* split (:mod:`training.ood`);
* measured: the share of *test* views accepted (with a study-bootstrap interval), and
  the share of the out-of-distribution evaluation set (:mod:`training.ood_set`) refused,
  by kind and by gate: the DICOM metadata gate (:mod:`bonexr.eligibility`, the same rule
  the service applies) and the content gate;
* compared: the separation (AUROC, test views against the OOD set) of the Mahalanobis
  score and of the simplest alternative, one minus the router's maximum softmax
  probability, so the report shows why the score is the one served.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold

from bonexr.eligibility import metadata_refusal
from bonexr.imaging import model_input, prepare_pixels
from bonexr.manifest import ContentGate
from training.bootstrap import bootstrap_ci, rate_interval
from training.config import TrainConfig
from training.metrics import patients_of
from training.ood import MahalanobisFit, feature_model, fit_limit, fit_mahalanobis, gate_spec
from training.ood_set import OodImage, ood_evaluation_set
from training.pipeline import BadImageLog, predict_frame


@dataclass(frozen=True)
class FittedGate:
    fit: MahalanobisFit
    spec: ContentGate
    #: The share of validation views accepted by a limit fitted on the other folds of
    #: validation patients (5-fold cross-fitting): the limit's out-of-sample acceptance.
    cross_fitted_acceptance: float | None = None


def cross_fitted_acceptance(
    scores: np.ndarray, patients: np.ndarray, acceptance: float, folds: int = 5
) -> float | None:
    """Pooled out-of-fold acceptance of the quantile limit over whole patients."""
    usable = ~np.isnan(scores)
    scores, patients = scores[usable], patients[usable]
    k = min(folds, len(np.unique(patients)))
    if k < 2:
        return None
    accepted = np.zeros(len(scores), bool)
    for kept, held in GroupKFold(n_splits=k).split(scores, groups=patients):
        accepted[held] = scores[held] <= fit_limit(scores[kept], acceptance)
    return float(accepted.mean())


def _features(
    router: keras.Model, frame: pd.DataFrame, config: TrainConfig, bad_images: BadImageLog
) -> np.ndarray:
    return predict_frame(
        feature_model(router),
        frame,
        size=config.input_size,
        batch_size=config.batch_size,
        bad_images=bad_images,
    )


def fit_content_gate(
    router: keras.Model, split: pd.DataFrame, config: TrainConfig, bad_images: BadImageLog
) -> FittedGate:
    """Means and covariance on the train split's views, the limit on validation's."""
    classes = list(config.router_parts or config.body_parts)
    train = split[(split["split"] == "train") & split["body_part"].isin(classes)]
    labels = train["body_part"].map({p: i for i, p in enumerate(classes)}).to_numpy()
    fit = fit_mahalanobis(
        _features(router, train, config, bad_images), labels, len(classes), config.gate_dimensions
    )
    validation = split[(split["split"] == "validation") & split["body_part"].isin(classes)]
    scores = fit.scores(_features(router, validation, config, bad_images))
    scored = int((~np.isnan(scores)).sum())
    limit = fit_limit(scores, config.ood_acceptance)
    patients = patients_of(validation)
    return FittedGate(
        fit,
        gate_spec(limit, config.ood_acceptance, scored),
        cross_fitted_acceptance(scores, patients, config.ood_acceptance),
    )


def _max_softmax(router: keras.Model, pixels: np.ndarray) -> np.ndarray:
    return np.asarray(router.predict(pixels, verbose=0, batch_size=32)).max(axis=1)


def _prepared(images: list[OodImage], size: int) -> np.ndarray:
    if not images:
        return np.zeros((0, size, size, 1), np.float32)
    return np.concatenate([model_input(prepare_pixels(o.image, size)) for o in images])


def evaluate_content_gate(
    router: keras.Model,
    gate: FittedGate,
    test: pd.DataFrame,
    config: TrainConfig,
    bad_images: BadImageLog,
    ood: list[OodImage] | None = None,
) -> dict[str, Any]:
    """The report's ``eligibility`` block (see the module docstring); ``test`` is the
    test split's predictions (:func:`training.evaluate.predict_split`)."""
    classes = list(config.router_parts or config.body_parts)
    rows = test[test["body_part"].isin(classes)].reset_index(drop=True)
    features = _features(router, rows, config, bad_images)
    usable = ~np.isnan(features).any(axis=1)
    test_scores = gate.fit.scores(features[usable])
    studies = patients_of(rows)[usable]
    accepted = test_scores <= gate.spec.limit
    ood = ood_evaluation_set() if ood is None else ood
    pixels = _prepared(ood, config.input_size)
    ood_scores = gate.fit.scores(
        np.asarray(feature_model(router).predict(pixels, verbose=0, batch_size=32))
    )
    by_kind: dict[str, dict[str, int]] = defaultdict(
        lambda: {"n": 0, "metadata": 0, "content": 0, "refused": 0}
    )
    refused_any = []
    for item, score in zip(ood, ood_scores, strict=True):
        counts = by_kind[item.kind]
        by_metadata = metadata_refusal(item.modality, item.body_part, classes) is not None
        by_content = bool(score > gate.spec.limit)
        counts["n"] += 1
        counts["metadata"] += by_metadata
        counts["content"] += by_content
        counts["refused"] += by_metadata or by_content
        refused_any.append(by_metadata or by_content)
    kinds = {
        kind: {**c, "refused_rate": c["refused"] / c["n"], "content_rate": c["content"] / c["n"]}
        for kind, c in sorted(by_kind.items())
    }
    is_ood = np.r_[np.zeros(len(test_scores)), np.ones(len(ood_scores))]
    # the test views' router probabilities are already in the predictions (predict_split)
    test_msp = rows[[f"router_{p}" for p in classes]].to_numpy()[usable].max(axis=1)
    msp = np.r_[test_msp, _max_softmax(router, pixels)]
    separable = len(ood_scores) > 0 and len(test_scores) > 0
    return {
        "method": gate.spec.method,
        "limit": gate.spec.limit,
        "acceptance_target": gate.spec.acceptance,
        "validation_views": gate.spec.validation_views,
        "validation_cross_fitted_acceptance": gate.cross_fitted_acceptance,
        "fitted_on": gate.spec.fitted_on,
        "test": {
            "n": len(test_scores),
            "accepted": float(accepted.mean()) if len(accepted) else None,
            "accepted_ci": rate_interval(
                float(accepted.mean()) if len(accepted) else None,
                bootstrap_ci(studies, lambda r: float(accepted[r].mean())),
                int(accepted.sum()),
                len(accepted),
            ),
            "refused": int((~accepted).sum()),
        },
        "ood": {
            "kinds": kinds,
            "n": len(ood),
            "refused": int(sum(refused_any)),
            "refused_rate": float(np.mean(refused_any)) if ood else None,
        },
        "separation_auroc": {
            "mahalanobis": (
                float(roc_auc_score(is_ood, np.r_[test_scores, ood_scores])) if separable else None
            ),
            "max_softmax": float(roc_auc_score(is_ood, 1.0 - msp)) if separable else None,
        },
    }
