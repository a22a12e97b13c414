"""GET /model and GET /rules: what is loaded, and the rules of use derived from it;
POST /model/reload swaps it (:mod:`service.triage.swap`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field

import bonexr
from bonexr.manifest import TRIAGE, Manifest
from service.adapters.drift import PSI_ALERT
from service.adapters.records.practice import practice_table
from service.adapters.records.shadow import ShadowStore
from service.domain.errors import ForbiddenError, ModelCardMissingError
from service.domain.shadow_report import summarise
from service.doors.http.deps import ReadyEngineDep, ServicesDep
from service.doors.http.errors import error_responses
from service.doors.http.schemas import ModelInfo, OperatingPoints, Rules
from service.doors.http.security import may_administer
from service.doors.http.usage_rules import build_rules, render_rules_png
from service.triage.swap import BundleSwapper

router = APIRouter(tags=["model"])


def prefers_json(accept: str) -> bool:
    """True when the Accept header ranks application/json above image/png."""
    best: dict[str, float] = {}
    for item in accept.split(","):
        media, _, params = item.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        best[media.strip().lower()] = max(quality, best.get(media.strip().lower(), 0.0))
    json_q = best.get("application/json", 0.0)
    png_q = max(best.get("image/png", 0.0), best.get("image/*", 0.0))
    return json_q > 0 and json_q > png_q


def served_precision(manifest: Manifest, precision: str) -> dict[str, Any]:
    """What the serving precision scored on the test split, next to fp32."""
    spec = manifest.precisions.get(precision)
    test = spec.measured.get("test", {}) if spec is not None else {}
    return {
        "precision": precision,
        "test_study_auroc": {
            part: {"fp32": m["study_auroc_fp32"], precision: m["study_auroc_reduced"]}
            for part, m in test.items()
        },
    }


@router.get(
    "/rules",
    response_model=Rules,
    summary="Usage rules (PNG, or JSON with Accept: application/json)",
    responses={
        200: {
            "description": "The rules as a PNG image, or as JSON when asked for.",
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
        },
    },
)
async def rules(request: Request, services: ServicesDep) -> Response:
    """What may be uploaded, limits, body parts, what 'abnormal' means; from live config."""
    engine = services.engine
    status = "ready" if engine.ready else engine.not_ready_reason()
    data = build_rules(services.settings, engine.manifest if engine.ready else None, status)
    if prefers_json(request.headers.get("accept", "")):
        return JSONResponse(data.model_dump(mode="json"))
    png = await run_in_threadpool(render_rules_png, data)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-cache"})


@router.get(
    "/model/card",
    summary="The loaded bundle's model card (Markdown)",
    response_class=PlainTextResponse,
    responses={
        200: {"content": {"text/markdown": {}}, "description": "MODEL_CARD.md of the bundle."},
        **error_responses(404, 503),
    },
)
async def model_card(engine: ReadyEngineDep) -> Response:
    """What the bundle was trained on, what it is for, what it refuses, its figures."""
    card = engine.bundle_dir / "MODEL_CARD.md" if engine.bundle_dir is not None else None
    if card is None or not card.is_file():
        raise ModelCardMissingError("this bundle has no model card (MODEL_CARD.md)")
    text = await run_in_threadpool(card.read_text, encoding="utf-8")
    return Response(text, media_type="text/markdown; charset=utf-8")


@router.get(
    "/model",
    response_model=ModelInfo,
    summary="Loaded model bundle",
    responses=error_responses(503),
)
async def model(engine: ReadyEngineDep) -> ModelInfo:
    """Summary of the loaded bundle's manifest (503 while no bundle is loaded)."""
    manifest = engine.manifest
    assert manifest is not None  # a ready engine has its manifest
    default = manifest.default_point
    return ModelInfo(
        name=manifest.name,
        version=manifest.version,
        software_version=bonexr.__version__,
        created_at=manifest.created_at,
        synthetic=manifest.synthetic,
        body_parts=list(manifest.body_parts),
        thresholds={
            part: OperatingPoints(
                image=spec.points()[default]["image"].threshold,
                image_rule=spec.points()[default]["image"].rule,
                study=spec.points()[default]["study"].threshold,
                study_rule=spec.points()[default]["study"].rule,
            )
            for part, spec in manifest.parts.items()
        },
        default_operating_point=default,
        operating_points={
            part: {
                name: {level: p.model_dump() for level, p in levels.items()}
                for name, levels in spec.points().items()
            }
            for part, spec in manifest.parts.items()
        },
        guarantees={
            part: {
                level: sentence
                for level, point in spec.points().get(TRIAGE, {}).items()
                if (sentence := point.guarantee_sentence(level))
            }
            for part, spec in manifest.parts.items()
        },
        calibration={
            part: {level: c.model_dump() for level, c in spec.calibration.items()}
            for part, spec in manifest.parts.items()
            if spec.calibration
        },
        content_gate=manifest.router.ood.model_dump() if manifest.router.ood else None,
        input_size=manifest.input.size,
        preprocessing=manifest.input.preprocessing,
        backbones={
            "router": manifest.router.backbone,
            **{part: spec.backbone for part, spec in manifest.parts.items()},
        },
        metrics=manifest.metrics,
        intended_use=manifest.intended_use,
        providers=engine.providers,
        runtime=engine.runtime.describe(),
        precisions={k: v.model_dump() for k, v in manifest.precisions.items()},
        served_precision=served_precision(manifest, engine.runtime.precision),
        warnings=engine.bundle_warnings,
    )


class ReloadRequest(BaseModel):
    bundle: str | None = Field(
        None,
        max_length=512,
        description="A bundle name inside BONEXR_MODELS_DIR, or a path; default: as at start "
        "(BONEXR_BUNDLE, else the newest bundle in the models folder).",
    )


class ReloadResponse(BaseModel):
    previous: str = Field(description="The bundle that served before: name and version.")
    current: str = Field(description="The bundle serving now.")
    seconds: float = Field(description="Loading and verifying it (serving went on).")


@router.post(
    "/model/reload",
    response_model=ReloadResponse,
    summary="Swap the served bundle without a restart (admin keys)",
    responses=error_responses(403, 409, 422),
)
async def reload_model(
    request: Request, services: ServicesDep, body: ReloadRequest | None = None
) -> ReloadResponse:
    """Loads the bundle beside the serving one, verifies it (files, contract, version, a
    smoke answer) and switches: requests already running finish on the bundle they
    started with, new ones get the new bundle. A bundle that fails a check is a 422 with
    the reason, and the serving bundle goes on. With API keys, admin keys only."""
    settings = services.settings
    if not may_administer(request.scope, settings.admin_key_names(), bool(settings.api_keys)):
        raise ForbiddenError("POST /model/reload is for the keys named in BONEXR_ADMIN_KEYS")
    swapper: BundleSwapper = request.app.state.swapper
    outcome = await swapper.reload(body.bundle if body is not None else None)
    return ReloadResponse(
        previous=outcome.previous, current=outcome.current, seconds=round(outcome.seconds, 2)
    )


@router.get("/shadow", summary="The shadow bundle against the live one (JSON)")
async def shadow_report(services: ServicesDep, request: Request) -> dict[str, Any]:
    """Agreement and kappa of the shadow bundle's results with the live ones, each one's
    AUROC against the readers' reviews (once there are enough), the shadow's refusals and
    its time per study against the live one's; ``configured`` says whether a shadow bundle
    runs now (the figures cover every shadow answer recorded)."""
    rows = await run_in_threadpool(ShadowStore(services.database).pairs)
    runner = request.app.state.shadow
    return {
        "configured": runner is not None,
        "queued": runner.queue.qsize() if runner is not None else 0,
        **summarise(rows),
    }


#: Reviewed studies of a part before its agreement is shown (the alert waits for as many).
MIN_PRACTICE_REVIEWS = 30


@router.get("/monitoring", summary="Drift, agreement with readers, refusals, shadow (JSON)")
async def monitoring(services: ServicesDep, request: Request) -> dict[str, Any]:
    """What the page's "Model health" section shows (docs/operations.md): the drift
    statistic of each monitored signal with its threshold, model-reader agreement per part
    (once reviews exist), refusals by reason, and the shadow bundle's comparison."""
    counts = await run_in_threadpool(services.records.practice_counts)
    practice: dict[str, dict[str, Any]] = {}
    for part, cells in sorted(counts.items()):
        table = practice_table(cells)
        enough = table.n >= MIN_PRACTICE_REVIEWS
        practice[part] = {
            "reviewed": table.n,
            "status": "ready"
            if enough
            else f"not enough reviews ({table.n} of {MIN_PRACTICE_REVIEWS} needed)",
            **{
                name: value if enough else None
                for name, value in (
                    ("agreement", table.agreement),
                    ("sensitivity", table.sensitivity),
                    ("specificity", table.specificity),
                    ("kappa", table.kappa),
                )
            },
        }
    refusals = {
        sample.labels["reason"]: sample.value
        for metric in services.metrics.refusals.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    }
    shadow = request.app.state.shadow
    rows = await run_in_threadpool(ShadowStore(services.database).pairs) if shadow else []
    return {
        "model": {"name": services.engine.model_name, "version": services.engine.model_version},
        "drift": services.metrics.drift.report(),
        "psi_alert": PSI_ALERT,
        "practice": practice,
        "refusals": refusals,
        "shadow": summarise(rows) if shadow is not None else None,
    }
