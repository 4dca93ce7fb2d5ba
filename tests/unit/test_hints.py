"""Errors that teach: the nearest name, the same rule in Python, Go and Node."""

from __future__ import annotations

import json

import pytest

from ravi import AgentId, BaseAgent, MessageContext, message_handler
from ravi._hints import closest, did_you_mean
from ravi.errors import AgentTypeNotFound, NoHandler
from ravi.runtime import LocalRuntime
from tests.paths import REPO_ROOT

CASES = json.loads((REPO_ROOT / "tests" / "vectors" / "hints.json").read_text())["cases"]


@pytest.mark.parametrize("case", CASES, ids=[c["word"] for c in CASES])
def test_the_nearest_name_is_the_shared_rule(case: dict[str, object]) -> None:
    assert closest(str(case["word"]), case["choices"]) == case["closest"]  # type: ignore[arg-type]


def test_did_you_mean_is_empty_without_a_near_name() -> None:
    assert did_you_mean("writter", ["writer"]) == ' (did you mean "writer"?)'
    assert did_you_mean("zzz", ["writer"]) == ""


class Echo(BaseAgent):
    @message_handler
    async def on_text(self, text: str, ctx: MessageContext) -> str:
        return text


async def test_local_runtime_errors_list_what_there_is() -> None:
    runtime = LocalRuntime()
    await Echo.register(runtime, "echo")
    async with runtime:
        with pytest.raises(AgentTypeNotFound) as missing:
            await runtime.send_message("hi", AgentId("ecoh", "k"))
        assert str(missing.value) == (
            'no agent type "ecoh" is registered (did you mean "echo"?); registered: echo'
        )
        with pytest.raises(NoHandler) as unhandled:
            await runtime.send_message(3, AgentId("echo", "k"))
        assert str(unhandled.value).endswith("has no handler for int (it handles str)")
