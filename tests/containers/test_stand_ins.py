"""The stand-ins for the upstream base images: one for each, never under its name, same versions."""

from __future__ import annotations

import pytest

from tests.containers._images import STAND_INS, stand_in_name
from tests.unit.test_deploy import compose_variables


def test_every_image_variable_has_a_stand_in() -> None:
    assert sorted(s.variable for s in STAND_INS) == sorted(compose_variables())


@pytest.mark.parametrize(
    ("upstream", "stand_in"),
    [
        ("python:3.11-slim-bookworm", "ravi.local/python:3.11-slim-bookworm"),
        ("docker.io/restatedev/restate:1.7.12", "ravi.local/restatedev/restate:1.7.12"),
        ("jaegertracing/jaeger:2.13.0", "ravi.local/jaegertracing/jaeger:2.13.0"),
        ("gcr.io/distroless/cc-debian12:nonroot", "ravi.local/distroless/cc-debian12:nonroot"),
        ("localhost:5000/node:20", "ravi.local/node:20"),
    ],
)
def test_a_stand_in_is_named_after_its_upstream_image_never_as_it(
    upstream: str, stand_in: str
) -> None:
    assert stand_in_name(upstream) == stand_in


def test_each_stand_in_has_the_version_of_its_upstream_image() -> None:
    """Go 1.26, Node 20, restate-server 1.7.12: what the compose file's tags say."""
    variables = compose_variables()
    for stand_in in STAND_INS:
        stand_in.identity(variables[stand_in.variable])
    go = next(s for s in STAND_INS if s.variable == "GO_IMAGE")
    with pytest.raises(RuntimeError, match=r"cannot stand in for golang:1\.19"):
        go.identity("golang:1.19-bookworm")
