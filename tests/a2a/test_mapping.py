"""The A2A mapping without a network: cards, data parts naming types, errors both ways."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest
from a2a.client import A2AClientError, A2AClientTimeoutError, AgentCardResolutionError
from a2a.helpers import get_data_parts, new_text_part
from a2a.types import (
    Message,
    Part,
    Role,
    TaskNotFoundError,
    TaskState,
    UnsupportedOperationError,
)
from a2a.utils.proto_utils import validate_proto_required_fields

from ravi import BaseAgent, MessageContext, message_handler, message_type
from ravi._mesh_cli import UsageError
from ravi.a2a.v1 import a2a_pb2 as rpb
from ravi.agents import ReActAgent
from ravi.errors import (
    BadId,
    BadPayload,
    Code,
    DeadlineExceeded,
    FailedPrecondition,
    HandlerFailed,
    NoHandler,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from ravi.examples.v1 import examples_pb2 as ex
from ravi.integrations.a2a import A2AGateway, ExposedAgent
from ravi.integrations.a2a._agent import _ravi_error, _task_failure
from ravi.integrations.a2a._cards import Bindings, agent_card
from ravi.integrations.a2a._parts import (
    decode_message,
    encode_message,
    failure,
    from_ravi_parts,
    text_and_data,
    to_ravi_parts,
    value,
)
from ravi.integrations.a2a._runs import RunTasks
from ravi.integrations.a2a._serve import exposed_agent
from ravi.runtime import LocalRuntime
from ravi.server import RaviServer, RuntimeThreads, ThreadStore
from ravi.server import _model as thread_model
from ravi.server._demo import look_up, send_report

pytestmark = pytest.mark.a2a

BINDINGS = Bindings("http://example.test:8000", "example.test:50051")


@message_type("a2a_tests.Greeting")
@dataclass
class Greeting:
    name: str
    times: int = 1


class Greeter(BaseAgent):
    """Greeter greets people.

    More about greeting, not on the card.
    """

    @message_handler
    async def on_greeting(self, greeting: Greeting, ctx: MessageContext) -> str:
        """Greet someone, as many times as asked."""
        return f"hello {greeting.name}" * greeting.times


class Quiet(Greeter):
    pass


def test_cards_are_complete_and_describe_the_agent() -> None:
    react = agent_card(
        ExposedAgent("assistant", ReActAgent, tools=[look_up, send_report]), BINDINGS
    )
    plain = agent_card(ExposedAgent("greeter", Greeter), BINDINGS)
    for card in (react, plain):
        validate_proto_required_fields(card)  # the SDK's own check of REQUIRED fields
        jsonrpc, rest, grpc_binding = card.supported_interfaces
        assert jsonrpc.url == f"http://example.test:8000/a2a/{card.name}"
        assert rest.url == f"http://example.test:8000/a2a/{card.name}/rest"
        assert (grpc_binding.url, grpc_binding.tenant) == ("example.test:50051", card.name)
        assert card.security_requirements[0].schemes.keys() == {"bearer"}
    assert [s.id for s in react.skills] == ["look_up", "send_report"]
    assert react.default_input_modes == ["text/plain"]
    assert plain.description == "Greeter greets people."
    (skill,) = plain.skills
    assert (skill.id, skill.name) == ("a2a_tests.Greeting", "on_greeting")
    assert skill.description == "Greet someone, as many times as asked."
    # A subclass without a docstring of its own is described by its type name.
    assert agent_card(ExposedAgent("quiet", Quiet), BINDINGS).description == "quiet"
    no_grpc = agent_card(ExposedAgent("greeter", Greeter), Bindings("http://h", None))
    assert len(no_grpc.supported_interfaces) == 2


def test_an_exposed_agent_is_react_by_class_or_tools() -> None:
    assert ExposedAgent("a", ReActAgent).is_react
    assert ExposedAgent("a", tools=[look_up]).is_react
    assert not ExposedAgent("a", Greeter).is_react
    assert not ExposedAgent("a").is_react
    with pytest.raises(BadId):
        ExposedAgent("not a type")


def test_data_parts_name_their_type_as_protobuf_any_does() -> None:
    query = decode_message({"@type": "ravi.examples.v1.SearchQuery", "query": "q", "limit": 3.0})
    assert query == ex.SearchQuery(query="q", limit=3)
    assert decode_message({"@type": "a2a_tests.Greeting", "name": "Ada"}) == Greeting("Ada")
    assert decode_message({"@type": "google.protobuf.Value", "value": [1, "x"]}) == [1, "x"]
    assert encode_message(Greeting("Ada", 2)) == {
        "@type": "a2a_tests.Greeting",
        "name": "Ada",
        "times": 2,
    }
    assert encode_message("plain") == {"@type": "google.protobuf.Value", "value": "plain"}
    result = ex.SearchResult(query="q", hits=[ex.SearchHit(source="s")])
    assert decode_message(encode_message(result)) == result
    for bad in [{"query": "q"}, ["@type"], {"@type": 5}]:
        with pytest.raises(BadPayload, match="naming its type"):
            decode_message(bad)
    with pytest.raises(BadPayload, match="unknown message type"):
        decode_message({"@type": "nope.Nope"})
    with pytest.raises(BadPayload, match="cannot decode"):
        decode_message({"@type": "a2a_tests.Greeting", "times": "many"})


def test_parts_convert_both_ways() -> None:
    ours = [
        rpb.Part(text="hi"),
        rpb.Part(data=value({"a": [1, 2]})),
        rpb.Part(raw=b"\x00\x01", media_type="application/octet-stream", filename="x.bin"),
        rpb.Part(url="https://example.test/f.pdf", media_type="application/pdf"),
    ]
    theirs = from_ravi_parts(ours)
    assert [p.WhichOneof("content") for p in theirs] == ["text", "data", "raw", "url"]
    assert theirs[2].filename == "x.bin"
    assert to_ravi_parts(theirs) == ours
    with pytest.raises(BadPayload, match="no content"):
        from_ravi_parts([rpb.Part(media_type="text/plain")])


def test_a_failed_task_carries_the_ravi_error_back() -> None:
    original = NoHandler("no handler for x")
    message = Message(parts=text_and_data(str(original), failure(original)))
    back = _task_failure(message, "the remote task t failed", "no handler for x")
    assert isinstance(back, NoHandler)
    assert back.remote
    assert back.message == "no handler for x"
    plain = _task_failure(Message(parts=[new_text_part("broke")]), "the task t failed", "broke")
    assert isinstance(plain, HandlerFailed)
    assert str(plain) == "the task t failed: broke"


def _rpc_error(code: grpc.StatusCode) -> A2AClientError:
    error = A2AClientError(f"gRPC Error {code.name}")
    error.__cause__ = grpc.aio.AioRpcError(code, None, None, "details")
    return error


def _http_error(status: int) -> A2AClientError:
    request = httpx.Request("POST", "http://example.test/")
    error = A2AClientError(f"HTTP Error {status}")
    error.__cause__ = httpx.HTTPStatusError(
        "status", request=request, response=httpx.Response(status, request=request)
    )
    return error


def _connect_error() -> A2AClientError:
    error = A2AClientError("Network communication error")
    error.__cause__ = httpx.ConnectError("refused")
    return error


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (TaskNotFoundError(), NotFound),
        (UnsupportedOperationError(), FailedPrecondition),
        (A2AClientTimeoutError("timed out"), DeadlineExceeded),
        (AgentCardResolutionError("forbidden", status_code=403), PermissionDenied),
        (AgentCardResolutionError("unreachable"), Unavailable),
        (_rpc_error(grpc.StatusCode.UNAVAILABLE), Unavailable),
        (_rpc_error(grpc.StatusCode.UNAUTHENTICATED), Unauthenticated),
        (_http_error(401), Unauthenticated),
        (_http_error(503), Unavailable),
        (_connect_error(), Unavailable),
        (A2AClientError("SSE stream error"), Unavailable),
    ],
)
def test_client_errors_map_to_ravi_errors(raised: Exception, expected: type) -> None:
    mapped = _ravi_error(raised, "http://example.test/card.json")
    assert type(mapped) is expected
    assert mapped.remote
    assert "http://example.test/card.json" in str(mapped)


def test_a_non_a2a_error_is_unknown() -> None:
    assert _ravi_error(ValueError("odd"), "u").code == Code.UNKNOWN


def test_a2a_agent_flags_name_a_type_a_class_or_an_exposed_agent() -> None:
    assert exposed_agent("echo") == ExposedAgent("echo")
    greeter = exposed_agent("greet=tests.a2a.test_mapping:Greeter")
    assert (greeter.agent_type, greeter.agent_class) == ("greet", Greeter)
    assert exposed_agent("tests.a2a.agents:librarian").agent_type == "librarian"
    for bad, problem in [
        ("bad type", "agent type"),
        ("x=tests.a2a.test_mapping:Greeting", "not a BaseAgent"),
        ("tests.a2a.test_mapping:Greeter", "not an ExposedAgent"),
        ("x=nowhere:Thing", "cannot import"),
    ]:
        with pytest.raises(UsageError, match=problem):
            exposed_agent(bad)


def test_a_part_of_the_sdk_type_is_what_the_gateway_sends() -> None:
    (text, data) = text_and_data("hello", {"k": 1})
    assert isinstance(text, Part)
    assert text.text == "hello"
    assert data.data.struct_value.fields["k"].number_value == 1


def test_the_gateway_writes_its_public_addresses_in_the_cards() -> None:
    server = RaviServer(RuntimeThreads(LocalRuntime(), store=ThreadStore.memory()), token="t")
    gateway = A2AGateway(
        server,
        ["echo", ExposedAgent("greeter", Greeter)],
        url="https://agents.example.test/",
        grpc_address="grpc.agents.example.test:443",
    )
    card = gateway.card("greeter")
    assert [i.url for i in card.supported_interfaces] == [
        "https://agents.example.test/a2a/greeter",
        "https://agents.example.test/a2a/greeter/rest",
        "grpc.agents.example.test:443",
    ]
    assert gateway.grpc_address is None  # not started
    unbound = A2AGateway(server, ["echo"], grpc_listen=None).card("echo", "http://h:1")
    assert [i.url for i in unbound.supported_interfaces] == [
        "http://h:1/a2a/echo",
        "http://h:1/a2a/echo/rest",
    ]
    with pytest.raises(KeyError, match="does not serve"):
        gateway.card("nobody")
    with pytest.raises(ValueError, match="at least one"):
        A2AGateway(server, [])
    with pytest.raises(ValueError, match="twice"):
        A2AGateway(server, ["echo", "echo"])


def _run_events() -> list[dict[str, Any]]:
    call = {"tool": "send_report", "arguments_json": '{"to": "a@example.test"}'}
    return [
        {"kind": "started", "started": {"content": "report"}},
        {"kind": "approval_request", "approval_request": {"request_id": "q", "call": call}},
        {
            "kind": "approval_decision",
            "approval_decision": {
                "request_id": "q",
                "answer": {"action": "APPROVAL_ACTION_REJECT", "reason": "not now"},
            },
        },
        {"kind": "failed", "failed": {"code": "CANCELLED", "message": "cancelled"}},
    ]


def test_a_task_is_its_runs_events_and_its_summary_has_the_last_word() -> None:
    store = ThreadStore.memory()
    record = thread_model.new_thread("t", 0.0)
    thread_model.start_run(
        record, run_id="r", agent_type="assistant", content="report", max_iterations=0, now=1
    )
    events = [
        {**e, "run_id": "r", "thread_id": "t", "seq": seq}
        for seq, e in enumerate(_run_events(), start=1)
    ]
    for event in events[:2]:
        thread_model.apply_event(record, event, 2.0)
    exposed = ExposedAgent("assistant", ReActAgent, tools=[look_up, send_report])
    tasks = RunTasks(RuntimeThreads(LocalRuntime(), store=store), exposed)

    waiting = thread_model.run_of(record)
    assert waiting is not None
    task, seq = tasks.task_of(waiting)  # from the summary alone, as tasks/list shows it
    assert (task.status.state, seq) == (TaskState.TASK_STATE_INPUT_REQUIRED, 2)
    asked = get_data_parts(task.status.message.parts)[0]
    assert (asked["request_id"], asked["arguments"]) == ("q", {"to": "a@example.test"})
    assert asked["parameters"]["required"] == ["to", "summary"]

    # The server stopped: the run is interrupted, though its agent said CANCELLED.
    thread_model.apply_event(record, events[2], 3.0)
    thread_model.finish_run(
        record, "r", error={"code": "ABORTED", "message": "stopped"}, state="interrupted", now=4
    )
    ended = thread_model.run_of(record)
    assert ended is not None
    task, seq = tasks.task_of(ended, events)
    assert (task.status.state, seq) == (TaskState.TASK_STATE_FAILED, 4)
    assert get_data_parts(task.status.message.parts) == [{"code": "ABORTED", "message": "stopped"}]
    users = [m for m in task.history if m.role == Role.ROLE_USER]
    assert [m.message_id for m in users] == ["r/task", "r/3/answer"]
    assert get_data_parts(users[1].parts) == [
        {"action": "reject", "request_id": "q", "reason": "not now"}
    ]
    # Every status message is the event's, by id: a stream and tasks/get agree.
    shown = [m.message_id for m in task.history if m.role == Role.ROLE_AGENT]
    assert shown == ["r/1", "r/2", "r/3"]
