"""Schemathesis against the app's own OpenAPI spec: generated requests for every route,
valid and invalid, must never produce a server error, and every answer must match the
status codes, content types and response schemas the spec declares."""

from typing import Any

import pytest

from polymodal.index.api import index
from polymodal.index.pipeline import IndexOptions
from polymodal.serve.app import create_app
from polymodal.serve.service import Limits, SearchService
from tests.helpers import make_shapes_dataset, save_tiny_model

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402 - only with schemathesis, which brings hypothesis

EXAMPLES = 40  # per route: enough to reach each refusal path, small enough for the suite's budget


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("fuzz")
    model = save_tiny_model(root / "model")
    captions = make_shapes_dataset(root / "shapes", per_class=1)
    index(str(captions.parent), model=str(model), options=IndexOptions(batch_size=8))
    service = SearchService(root / "shapes.pm", limits=Limits(max_upload_bytes=100_000, max_pixels=250_000))
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(service))


def test_no_request_makes_the_server_fail(api_schema: Any) -> None:
    # driven through Hypothesis directly: schemathesis' pytest plugin does not load under pytest 9
    from hypothesis import given

    # Excluded: "schema-valid data must be accepted". Any bytes fit a `format: binary` upload,
    # but only bytes that decode as an image are one; those get a 400 by design.
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    failures = {}
    labels = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
        def fuzz(case: Any) -> None:
            case.call_and_validate(excluded_checks=[positive_data_acceptance])

        try:
            fuzz()
        except (Exception, BaseExceptionGroup) as err:  # collect every route's failure, not only the first
            failures[operation.label] = f"{type(err).__name__}: {err}"[:2000]
    assert len(labels) >= 14, labels  # every route of the API was exercised
    assert not failures, "\n\n".join(f"{k}\n{v}" for k, v in failures.items())
