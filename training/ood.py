"""The content gate: an out-of-distribution score computed by the router, and its limit.

A router trained on seven upper-limb parts must name one of them for any input: the
cameraman photo comes back "Shoulder" with confidence 1.000, so the softmax cannot say "this
is not a radiograph". The router's pooled features can: an image unlike the training views
lands far from every part's cluster. The score is the Mahalanobis distance to the nearest
part's mean (Lee et al. 2018) under one shared covariance, shrunk by Ledoit-Wolf so that it
is well conditioned with a few hundred training views per part. It was chosen by
measurement over the maximum softmax probability (the report's ``eligibility`` block gives
both on the same evaluation set).

The score is built into the router's served graph (:func:`with_content_score`) as a
second output, so ONNX Runtime and OpenVINO at every precision compute it in the router's
own pass; its limit is the ``acceptance`` quantile of the validation split's scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import layers, ops
from sklearn.covariance import LedoitWolf

from bonexr.manifest import ContentGate
from training.models import backbone_input

#: Share of in-distribution validation views the limit accepts.
DEFAULT_ACCEPTANCE = 0.99


@dataclass(frozen=True)
class MahalanobisFit:
    """Per-part feature means ``(C, K)`` and the shared precision matrix ``(K, K)`` in the
    space of ``projection`` ``(D, K)`` (the top principal components of the class-centred
    training features; None: the features as they are, K = D)."""

    means: np.ndarray
    precision: np.ndarray
    projection: np.ndarray | None = None

    def project(self, features: np.ndarray) -> np.ndarray:
        values = np.asarray(features, dtype=np.float64)
        return values if self.projection is None else values @ self.projection.astype(np.float64)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Distance of each feature row to the nearest mean (float64, ``(N,)``)."""
        features = self.project(features)
        diff = features[:, None, :].astype(np.float64) - self.means[None].astype(np.float64)
        squared = np.einsum("ncd,de,nce->nc", diff, self.precision.astype(np.float64), diff)
        return np.sqrt(np.maximum(squared.min(axis=1), 0.0))


def fit_mahalanobis(
    features: np.ndarray, labels: np.ndarray, n_classes: int, dimensions: int = 0
) -> MahalanobisFit:
    """Class means and a Ledoit-Wolf shared covariance of the class-centred features
    (rows with NaN, images that did not decode, are left out).

    ``dimensions`` > 0 and below the feature width: the distance is measured in the span
    of the top ``dimensions`` principal components of the class-centred features (a
    ResNet50's 2048 would put a 16 MB matrix into the router's graph and be estimated
    from fewer views than it has dimensions).
    """
    features = np.asarray(features, dtype=np.float64)
    usable = ~np.isnan(features).any(axis=1)
    features, labels = features[usable], np.asarray(labels)[usable]
    projection = None
    if 0 < dimensions < features.shape[1]:
        class_means = np.stack([features[labels == c].mean(axis=0) for c in np.unique(labels)])
        centred = features - class_means[np.searchsorted(np.unique(labels), labels)]
        _, _, components = np.linalg.svd(centred - centred.mean(axis=0), full_matrices=False)
        projection = components[:dimensions].T.astype(np.float32)
        features = features @ projection.astype(np.float64)
    means = np.stack(
        [
            features[labels == c].mean(axis=0) if (labels == c).any() else features.mean(axis=0)
            for c in range(n_classes)
        ]
    )
    centred = features - means[labels]
    precision = LedoitWolf().fit(centred).precision_
    return MahalanobisFit(means.astype(np.float32), precision.astype(np.float32), projection)


def fit_limit(validation_scores: np.ndarray, acceptance: float = DEFAULT_ACCEPTANCE) -> float:
    """The smallest score at or below which ``acceptance`` of the validation views lie."""
    scores = np.asarray(validation_scores, dtype=np.float64)
    scores = scores[~np.isnan(scores)]
    if len(scores) == 0:
        raise ValueError("no validation views to fit the content gate's limit on")
    return float(np.quantile(scores, acceptance, method="higher"))


def gate_spec(limit: float, acceptance: float, validation_views: int) -> ContentGate:
    return ContentGate(limit=limit, acceptance=acceptance, validation_views=validation_views)


class MahalanobisScore(layers.Layer):
    """``min_c sqrt((f - mu_c)^T P (f - mu_c))`` over the part means ``mu_c``, as ``(N, 1)``."""

    def __init__(self, fit: MahalanobisFit, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fit = fit

    def build(self, input_shape: Any) -> None:
        means, precision = self.fit.means, self.fit.precision
        if self.fit.projection is not None:
            self.projection = self.add_weight(
                shape=self.fit.projection.shape, initializer="zeros", trainable=False,
                name="projection",
            )  # fmt: skip
            self.projection.assign(self.fit.projection)
        self.means = self.add_weight(
            shape=means.shape, initializer="zeros", trainable=False, name="means"
        )
        self.precision = self.add_weight(
            shape=precision.shape, initializer="zeros", trainable=False, name="precision"
        )
        self.means.assign(means)
        self.precision.assign(precision)

    def call(self, features: Any) -> Any:
        if self.fit.projection is not None:
            features = ops.matmul(features, self.projection)  # (N, K)
        diff = ops.expand_dims(features, 1) - self.means  # (N, C, K)
        squared = ops.sum(ops.matmul(diff, self.precision) * diff, axis=-1)  # (N, C)
        return ops.sqrt(ops.maximum(ops.min(squared, axis=-1, keepdims=True), 0.0))


def feature_model(router: keras.Model) -> keras.Model:
    """The router up to its pooled features (the backbone's output, before dropout)."""
    image = keras.Input(router.input_shape[1:], name="image")
    features = router.get_layer("backbone")(backbone_input(router, image))
    return keras.Model(image, features, name="router_features")


#: Name of the router's content-score output (its second output in the served graph).
SCORE_OUTPUT = "content_score"


def with_content_score(router: keras.Model, fit: MahalanobisFit) -> keras.Model:
    """The router with a second output: the content score of each image, ``(N, 1)``.

    Same weights, one backbone pass: the score costs a ``(C, D) x (D, D)`` product.
    """
    image = keras.Input(router.input_shape[1:], name="image")
    features = router.get_layer("backbone")(backbone_input(router, image))
    probabilities = router.get_layer("probabilities")(router.get_layer("dropout")(features))
    score = MahalanobisScore(fit, name=SCORE_OUTPUT)(features)
    return keras.Model(image, [probabilities, score], name=f"{router.name}_gated")
