"""The answer rules, with no web and no runtime in them: what a view's or a study's
prediction becomes as an answer, and when the model must refuse.

One class, :class:`AnswerRules`, used by every door through the triage use cases
(:mod:`service.triage.predictor`) and by ``bonexr predict`` (:mod:`service.doors.batch`):
the single-image rule's refusals and warnings, the content gate under the eligibility
policy (:mod:`service.domain.policy`), the study rule (:mod:`bonexr.study`) with its checks
and warnings, and the operating point decision. It takes the engine's
:class:`~service.domain.answers.Prediction` values and returns answer values; a refused
view is a :class:`~service.domain.answers.Refusal` value in the study's answer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from bonexr.calibration import Level, calibrate
from bonexr.errors import ConfigError
from bonexr.labels import display_name, normalize_body_part, result_name
from bonexr.manifest import INSUFFICIENT_DATA, Manifest, OperatingPoint
from bonexr.study import route_study, study_probability
from service.domain.answers import ImageAnswer, Prediction, Refusal, StudyAnswer
from service.domain.errors import (
    InvalidStudyError,
    NoPartModelError,
    NotEligibleError,
    NotReadyError,
    UnknownOperatingPointError,
)
from service.domain.policy import under_policy
from service.settings import Settings

#: What an API client can do about a study of mixed parts (a DICOM report leaves it out).
MIXED_PARTS_ADVICE = ' Send "body_part" to score them all with one part\'s model.'


@dataclass(frozen=True)
class StudyPlan:
    """What a study's first pass decided: the views kept (``names``, their ``keep``
    positions in the request), the study's ``part``, which kept views to score again with
    it (``rescore``), and the refusals and gate warnings."""

    names: list[str]
    keep: list[int]
    part: str
    rescore: list[int]
    refused: tuple[Refusal, ...]
    content_warnings: tuple[str, ...]


class LoadedModel(Protocol):
    """What the rules need of the loaded bundle (the engine is one)."""

    @property
    def manifest(self) -> Manifest | None: ...

    @property
    def model_name(self) -> str: ...

    @property
    def bundle_warnings(self) -> list[str]: ...

    def not_ready_reason(self) -> str: ...


class AnswerRules:
    """The answer rules shared by the service and ``bonexr predict``: refusals, warnings
    and the study rule, for a loaded engine and the service settings."""

    def __init__(self, engine: LoadedModel, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings

    # ------------------------------------------------------------------ single image

    def no_model_error(self, part: str, confidence: float) -> NoPartModelError:
        """422 for a body part the router knows but the bundle has no abnormality model
        for: the router's answer, never another part's verdict."""
        floor = self.settings.router_confidence_floor
        unsure = (
            f" (router confidence {confidence:.2f} is below the floor {floor:.2f}: check the image)"
            if confidence < floor
            else ""
        )
        return NoPartModelError(
            f"no abnormality model for {part} in bundle '{self.engine.model_name}'{unsure}",
            bone_type=part,
        )

    def operating_point(self, requested: str | None) -> str:
        """The operating point to answer at: the request's, or the bundle's default; a
        422 naming the ones the bundle has when it lacks the one asked for."""
        manifest = self.engine.manifest
        if manifest is None:
            raise NotReadyError(self.engine.not_ready_reason())
        if requested is None:
            return manifest.default_point
        names = manifest.operating_point_names
        if requested not in names:
            raise UnknownOperatingPointError(
                f"bundle '{manifest.name}' has no operating point '{requested[:40]}'; "
                f"it has {', '.join(names)}",
                names,
            )
        return requested

    def point_spec(self, part: str, point: str, level: Level) -> OperatingPoint:
        manifest = self.engine.manifest
        assert manifest is not None
        return manifest.parts[part].points()[point][level]

    def at_point(self, prediction: Prediction, point: str) -> Prediction:
        """``prediction`` decided at ``point``'s image threshold (the engine decides at the
        bundle's default)."""
        if not prediction.has_verdict or prediction.operating_point == point:
            return prediction
        threshold = self.point_spec(prediction.scored_by, point, "image").threshold
        return dataclasses.replace(
            prediction,
            threshold=threshold,
            abnormal=prediction.abnormality_probability >= threshold,
            operating_point=point,
        )

    def screen_content(
        self, views: Sequence[tuple[str, Prediction]]
    ) -> tuple[list[Refusal], list[str]]:
        """The content gate: views whose router features lie beyond the bundle's limit were
        never the kind of image the model learned to judge. Returns the refusals
        (``enforce``) or the warnings (``warn``) as :func:`~service.domain.policy.under_policy`
        decides; both empty when every view passes (or there is no gate)."""
        manifest = self.engine.manifest
        gate = manifest.router.ood if manifest is not None else None
        if gate is None or manifest is None:
            return [], []
        parts = ", ".join(part.lower() for part in manifest.router.classes)
        why = (
            f"it does not look like the radiographs this model was trained on ({parts}; "
            f"content score above the limit {gate.limit:.1f}, which accepts "
            f"{gate.acceptance:.0%} of the validation views)"
        )
        if manifest.synthetic:
            why += (
                "; this demo model was trained on synthetic drawings, so a real radiograph "
                "is outside what it knows too"
            )
        found = [
            Refusal(name, "content", why, p.content_score, gate.limit)
            for name, p in views
            if p.content_score is not None and p.content_score > gate.limit
        ]
        return under_policy(found, self.settings.eligibility)

    @staticmethod
    def refusal_error(refused: Sequence[Refusal], total: int) -> NotEligibleError:
        """The one error for refused views where a door answers all or nothing: the
        single view's refusal, or every refused view of a study, each named."""
        first = refused[0]
        if total == 1 and first.reason == "content":
            return NotEligibleError(
                f"not eligible: {first.detail}",
                "content",
                {"score": first.score, "limit": first.limit},
            )
        if first.reason != "content":  # a header refusal: the value that decided
            return NotEligibleError(first.detail, first.reason, {first.reason: first.value})
        details = [f"{r.view} (score {r.score:.1f})" for r in refused if r.score is not None]
        return NotEligibleError(
            f"not eligible: {len(refused)} of {total} views: {'; '.join(details)}: "
            f"{first.detail}. Send the study without them.",
            "content",
            {
                "views": [{"filename": r.view, "score": r.score} for r in refused],
                "limit": first.limit,
            },
        )

    def image(
        self,
        name: str,
        prediction: Prediction,
        body_part: str | None,
        point: str | None = None,
    ) -> ImageAnswer:
        """The single-image answer at ``point`` (default: the bundle's), or the error to
        refuse with: not eligible (content gate), or no model for the routed part."""
        refused, content = self.screen_content([(name, prediction)])
        if refused:
            raise self.refusal_error(refused, 1)
        if not prediction.has_verdict:
            raise self.no_model_error(prediction.bone_type, prediction.router_confidence)
        point = self.operating_point(point)
        decided = self.at_point(prediction, point)
        chosen = self.point_spec(decided.scored_by, point, "image")
        warnings = [
            *content,
            *self.model_warnings(prediction),
            *self.point_warnings(decided.scored_by, chosen, "image"),
            *body_part_warnings([(name, body_part)], prediction.bone_type),
        ]
        return ImageAnswer(name, decided, warnings, point=chosen)

    def point_warnings(self, part: str, chosen: OperatingPoint, level: Level) -> list[str]:
        """What this answer's operating point and calibration cannot promise: a triage
        point chosen on too few abnormal cases, a probability served uncalibrated."""
        manifest = self.engine.manifest
        assert manifest is not None
        found = []
        if chosen.guarantee == INSUFFICIENT_DATA:
            found.append(
                f"{part} {level}-level operating point: {chosen.guarantee_sentence(level)}"
            )
        calibration = manifest.parts[part].calibration.get(level)
        if calibration is not None and not calibration.calibrated:
            found.append(
                f"{part} {level}-level probability is the model's raw score, not calibrated: "
                f"{calibration.selection.get('reason', 'too few validation cases')}"
            )
        return found

    def model_warnings(self, prediction: Prediction) -> list[str]:
        """What a reader must know about this answer (unsure router, demo model)."""
        engine = self.engine
        found: list[str] = []
        floor = self.settings.router_confidence_floor
        if prediction.router_confidence < floor:
            parts = ", ".join(prediction.bone_type_probabilities)
            found.append(
                f"router is unsure of the body part: {prediction.router_confidence:.2f} for "
                f"{prediction.bone_type} is below the confidence floor {floor:.2f}. Check "
                f"that the image is a radiograph of one of: {parts}."
            )
        found.extend(engine.bundle_warnings)
        if engine.manifest is not None and engine.manifest.synthetic:
            found.append(
                f"model '{engine.model_name}' is a demo trained on synthetic images: "
                "not for clinical use."
            )
        return found

    # ------------------------------------------------------------------ study

    def client_part(self, bone_type: str | None) -> str | None:
        """The client's body part in the bundle's spelling (None: let the router decide)."""
        if bone_type is None:
            return None
        parts = list(self.engine.manifest.parts) if self.engine.manifest else []
        for part in parts:
            if part.lower() == bone_type.strip().lower():
                return part
        raise InvalidStudyError(
            f"no abnormality model for '{bone_type[:40]}' in this bundle; it has {', '.join(parts)}"
        )

    def plan_study(
        self,
        names: Sequence[str],
        first: Sequence[Prediction],
        forced: str | None,
        *,
        set_aside_refused: bool,
    ) -> StudyPlan:
        """The one study orchestration, from each view's first (and only) pass: the content
        gate over every view, the refused ones set aside (or, for a door that answers all
        or nothing, the error naming each), the study's part from the rest, and which of
        them the part's model must score again. A study with no eligible view is refused."""
        refused, content = self.screen_content(list(zip(names, first, strict=True)))
        if refused and (not set_aside_refused or len(refused) == len(names)):
            raise self.refusal_error(refused, len(names))
        out = {r.view for r in refused}
        keep = [i for i, name in enumerate(names) if name not in out]
        kept_names = [names[i] for i in keep]
        kept = [first[i] for i in keep]
        part = self.study_part(kept_names, kept, forced)
        return StudyPlan(
            kept_names, keep, part, self.to_rescore(kept, part), tuple(refused), tuple(content)
        )

    def study_part(
        self, names: Sequence[str], first: Sequence[Prediction], forced: str | None
    ) -> str:
        """The study's body part: the client's, or routed by the summed router
        probabilities; refused (422) for a part without a model or confidently mixed views."""
        manifest = self.engine.manifest
        if manifest is None:
            raise NotReadyError(self.engine.not_ready_reason())
        part = forced or route_study([p.bone_type_probabilities for p in first])
        if part not in manifest.parts:
            mean_confidence = float(np.mean([p.bone_type_probabilities[part] for p in first]))
            raise self.no_model_error(part, mean_confidence)
        if forced is None:
            floor = self.settings.router_confidence_floor
            mixed = [
                f"{name} -> {p.bone_type} ({p.router_confidence:.2f})"
                for name, p in zip(names, first, strict=True)
                if p.bone_type != part and p.router_confidence >= floor
            ]
            if mixed:
                raise InvalidStudyError(
                    f"the views route to different body parts (study: {part}): "
                    f"{'; '.join(mixed)}.{MIXED_PARTS_ADVICE}"
                )
        return part

    @staticmethod
    def to_rescore(first: Sequence[Prediction], part: str) -> list[int]:
        """Views the router placed elsewhere: scored again by the study part's model."""
        return [i for i, p in enumerate(first) if p.scored_by != part]

    def study_answer(
        self,
        names: Sequence[str],
        views: Sequence[Prediction],
        body_parts: Sequence[str | None],
        *,
        part: str,
        forced: str | None,
        duplicates: bool = False,
        point: str | None = None,
        content_warnings: Sequence[str] = (),
        refused: Sequence[Refusal] = (),
    ) -> StudyAnswer:
        """MURA's rule: ``views`` (every one scored by ``part``'s model: :meth:`study_part`,
        then :meth:`to_rescore`): their raw probabilities averaged, the mean calibrated by
        the part's study map and decided at ``point``'s study threshold."""
        manifest = self.engine.manifest
        assert manifest is not None
        point = self.operating_point(point)
        spec = manifest.parts[part]
        mean = study_probability([v.raw_probability for v in views])
        probability = calibrate(mean, spec.calibration.get("study"))
        chosen = self.point_spec(part, point, "study")
        threshold = float(chosen.threshold)
        views = [self.at_point(v, point) for v in views]
        classes = list(manifest.router.classes)
        return StudyAnswer(
            bone_type=part,
            bone_type_source="client" if forced else "router",
            bone_type_probabilities={
                c: float(np.mean([v.bone_type_probabilities[c] for v in views])) for c in classes
            },
            abnormality_probability=probability,
            threshold=threshold,
            result=result_name(probability >= threshold),
            views=list(zip(names, views, strict=True)),
            warnings=[
                *content_warnings,
                *self._study_warnings(names, views, body_parts, part, forced, duplicates),
                *self.point_warnings(part, chosen, "study"),
            ],
            operating_point=point,
            point=chosen,
            refused=tuple(refused),
        )

    def _study_warnings(
        self,
        names: Sequence[str],
        views: Sequence[Prediction],
        body_parts: Sequence[str | None],
        study_part: str,
        forced: str | None,
        duplicates: bool,
    ) -> list[str]:
        found: list[str] = []
        if duplicates:
            found.append("duplicate filenames were counted once")
        if forced:
            found.append(f"every view was scored by the {forced} model, as the request asked")
        unsure = [
            f"{name} ({v.bone_type} {v.router_confidence:.2f})"
            for name, v in zip(names, views, strict=True)
            if v.bone_type != study_part
        ]
        if unsure and not forced:
            found.append(
                f"router placed some views elsewhere without confidence; they were scored "
                f"as {study_part}: {', '.join(unsure)}"
            )
        for message in self.model_warnings(views[0]):
            if "router is unsure" not in message:  # per-view unsureness is reported above
                found.append(message)
        found.extend(body_part_warnings(list(zip(names, body_parts, strict=True)), study_part))
        return found


def body_part_warnings(views: Sequence[tuple[str, str | None]], bone_type: str) -> list[str]:
    """A warning per view whose DICOM BodyPartExamined disagrees with the router."""
    found = []
    for name, examined in views:
        if not examined:
            continue
        try:
            named = display_name(normalize_body_part(examined))
        except ConfigError:
            named = None
        if named != bone_type:
            found.append(
                f"{name}: the DICOM header says BodyPartExamined {examined}; "
                f"the router says {bone_type}"
            )
    return found
