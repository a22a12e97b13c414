"""Schema-driven fuzzing: requests generated from /openapi.json never produce a 500.

Schemathesis generates valid and invalid requests for every operation (random multipart
bytes, wrong types, missing bodies, odd path values) and we assert only what must hold for
*any* input: the server answers without a server error. The byte-level bad-input cases are
covered one by one, with exact statuses, in test_body_limit.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from starlette.types import Receive, Scope, Send

from bonexr.imaging import decode_image, encode_png
from harness.service_support import error_leaks, make_settings, png_bytes
from service.doors.http.app import create_app


@pytest.fixture(scope="module")
def api_schema(untrained_bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    """The app runs its lifespan once (TestClient); schemathesis gets a lifespan-less view.

    Schemathesis starts and stops an ASGI app's lifespan around each test on its own, which
    would reload the bundle every test (and race the first requests against loading).
    """
    tmp = tmp_path_factory.mktemp("fuzz")
    app = create_app(make_settings(untrained_bundle, tmp, max_upload_bytes=1_000_000))

    async def without_lifespan(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        await app(scope, receive, send)

    with TestClient(app):
        engine = app.state.services.engine
        assert engine.wait_until_settled(60) and engine.ready
        app.state.services.store.save(encode_png(decode_image(png_bytes(seed=1))))
        yield schemathesis.openapi.from_asgi("/openapi.json", without_lifespan)


#: Every operation of the API; test_all_operations_are_fuzzed keeps this list honest.
OPERATIONS = [
    ("/upload", "POST"),
    ("/predict", "POST"),
    ("/predict/image", "POST"),
    ("/predict/study", "POST"),
    ("/heatmap/{filename}", "GET"),
    ("/uploads/{filename}", "DELETE"),
    ("/rules", "GET"),
    ("/model", "GET"),
    ("/model/card", "GET"),
    ("/health", "GET"),
    ("/ready", "GET"),
    ("/metrics", "GET"),
    ("/dicom-web/studies", "POST"),
    ("/dicom-web/studies/{study_uid}", "POST"),
    ("/worklist", "GET"),
    ("/worklist/export.csv", "GET"),
    ("/worklist/{study_id}", "GET"),
    ("/worklist/{study_id}", "DELETE"),
    ("/worklist/{study_id}/review", "POST"),
    ("/audit", "GET"),
    ("/worklist/changes", "GET"),
    ("/whoami", "GET"),
    ("/model/reload", "POST"),
    ("/shadow", "GET"),
    ("/monitoring", "GET"),
    ("/samples", "GET"),
    ("/samples/{name}", "GET"),
]


def test_all_operations_are_fuzzed(api_schema: schemathesis.BaseSchema) -> None:
    found = {(op.ok().path, op.ok().method.upper()) for op in api_schema.get_all_operations()}
    assert found == set(OPERATIONS)


# schemathesis' own pytest integration (``from_fixture``) fails on pytest 9 (it reads a
# removed private attribute), so the operations are driven through their Hypothesis
# strategies directly: same generators, same check.
#: Operations with inputs get invalid (negative) requests too; the others take none.
WITH_INPUTS = {
    ("/upload", "POST"),
    ("/predict", "POST"),
    ("/predict/image", "POST"),
    ("/predict/study", "POST"),
    ("/heatmap/{filename}", "GET"),
    ("/uploads/{filename}", "DELETE"),
    ("/worklist", "GET"),
    ("/worklist/{study_id}", "GET"),
    ("/worklist/{study_id}", "DELETE"),
    ("/worklist/{study_id}/review", "POST"),
    ("/audit", "GET"),
    ("/model/reload", "POST"),
}
CASES = [(path, method, GenerationMode.POSITIVE) for path, method in OPERATIONS] + [
    (path, method, GenerationMode.NEGATIVE)
    for path, method in OPERATIONS
    if (path, method) in WITH_INPUTS
]


@pytest.mark.parametrize(("path", "method", "mode"), CASES)
def test_no_server_errors(
    api_schema: schemathesis.BaseSchema, path: str, method: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=30,
        deadline=None,
        database=None,  # no example database written into the checkout
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: schemathesis.Case) -> None:
        response = case.call()
        assert response.status_code < 500, (case.method, case.path, response.text[:300])
        case.validate_response(response, checks=[not_a_server_error])
        if response.status_code >= 400:
            assert isinstance(response.json().get("detail"), str)
            assert not error_leaks(response.text), response.text[:300]

    fuzz()
