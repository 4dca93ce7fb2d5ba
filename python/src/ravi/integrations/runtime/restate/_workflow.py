"""The durable agent workflow, and the client that starts, queries and answers it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast
from urllib.parse import quote

import aiohttp
import restate
from google.protobuf import json_format

from ravi._ids import AgentId
from ravi._mesh import codec
from ravi._serialization import MessageRegistry, registry
from ravi.agents import DEFAULT_SYSTEM_PROMPT, EVENTS_TOPIC, ReActAgent, Task
from ravi.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RaviError,
    Unavailable,
    code_of,
    handler_error,
)
from ravi.integrations.runtime.restate import _sql
from ravi.integrations.runtime.restate._context import (
    BYTES,
    RestateContext,
    _terminal,
    durable_wait,
)
from ravi.integrations.runtime.restate._errors import error_of_reply, terminal_of
from ravi.mesh.v1 import types_pb2
from ravi.models import ChatModel
from ravi.tools import Tool

if TYPE_CHECKING:
    from ravi.integrations.runtime.restate._runtime import RestateRuntime

WORKFLOW = "ravi.AgentWorkflow"
WORKFLOW_AGENT_TYPE = "ravi.agent-workflow"
PROMISES_STATE = "promises"
APPROVAL_PREFIX = "approval-"

_BYTES_IO: dict[str, Any] = {
    "accept": "*/*",
    "content_type": "application/json",
    "input_serde": BYTES,
    "output_serde": BYTES,
}


class _WorkflowContext(RestateContext):
    """A RestateContext whose waits are the workflow's own durable promises.

    Every promise the run asks for is kept in the workflow's state
    (`promises`: name -> pending or resolved), so `query_workflow` can list
    what the run waits for and `resolve_promise` can refuse a name it never
    asked for.
    """

    __slots__ = ()

    async def wait_for(self, name: str, *, timeout: float | None = None) -> Any:
        ctx = cast("restate.WorkflowContext", self.restate)
        saved: bytes | None = await ctx.get(PROMISES_STATE, serde=BYTES)
        asked = json.loads(saved or b"{}")
        ctx.set(PROMISES_STATE, json.dumps(asked | {name: "pending"}).encode(), serde=BYTES)
        promise = ctx.promise(name, serde=BYTES)
        try:
            data = await durable_wait(ctx, promise.value(), name, timeout)
        except (restate.TerminalError, DeadlineExceeded) as error:
            # Cancelled, or waited in vain: an answer now would reach no one.
            ctx.set(PROMISES_STATE, json.dumps(asked | {name: "ended"}).encode(), serde=BYTES)
            if isinstance(error, restate.TerminalError):
                raise _terminal(error) from None
            raise
        ctx.set(PROMISES_STATE, json.dumps(asked | {name: "resolved"}).encode(), serde=BYTES)
        return codec.decode(self._registry, types_pb2.Payload.FromString(data))


@dataclass
class AgentWorkflow:
    """AgentWorkflow runs a ReAct loop as a Restate Workflow: one run per workflow id.

    Every model call and tool execution is journaled, approvals are the
    workflow's durable promises (`approval-{request_id}`), and the run's
    events are published for the server's Server-Sent Events. Register it on a
    RestateRuntime before it starts: `AgentWorkflow(...).register(runtime)`.

    Args:
        models: the models a run may name, by name.
        tools: the tools the model may call.
        system_prompt: the instructions that open every run.
        max_iterations: model steps per run at most.
        events_topic: the topic type events are published on (source: the thread).
    """

    models: Mapping[str, ChatModel]
    tools: Sequence[Tool] = ()
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_iterations: int = 10
    events_topic: str = EVENTS_TOPIC

    def register(self, runtime: RestateRuntime) -> None:
        """Serve this workflow from `runtime` (before it starts).

        Raises:
            AlreadyExists: an agent workflow is served already, or the runtime started.
        """
        runtime.add_service(self.service(runtime))

    def service(self, runtime: RestateRuntime) -> restate.Workflow:
        """The Restate Workflow that runs it on `runtime`."""
        workflow = restate.Workflow(WORKFLOW, description=self.__doc__)

        @workflow.main(**_BYTES_IO)
        async def run(ctx: restate.WorkflowContext, data: bytes) -> bytes:
            request = json.loads(data)
            thread = str(request["thread_id"])
            status: dict[str, Any] = {"workflow_id": ctx.key(), "thread_id": thread}

            def record(**fields: Any) -> bytes:
                """Keep the run's status for `query_workflow`; also the run's result."""
                encoded = json.dumps(status | fields).encode()
                ctx.set("status", encoded, serde=BYTES)
                return encoded

            model = self.models.get(str(request.get("model", "")))
            if model is None:
                known = ", ".join(sorted(self.models))
                return record(
                    status="failed",
                    error={
                        "code": "NOT_FOUND",
                        "message": f"no model {request.get('model')!r} (the models: {known})",
                    },
                )
            record(status="running")
            agent = ReActAgent(
                model,
                self.tools,
                system_prompt=self.system_prompt,
                max_iterations=self.max_iterations,
                events_topic=self.events_topic,
            )
            agent_id = AgentId(WORKFLOW_AGENT_TYPE, thread)
            agent._ravi_bind(runtime, agent_id)
            envelope = types_pb2.Envelope(message_id=ctx.key())
            rctx = _WorkflowContext(ctx, runtime.message_registry, envelope, None, None)
            task = Task(
                thread_id=thread,
                content=str(request["user_content"]),
                max_iterations=int(request.get("max_iterations") or 0),
            )
            try:
                result = await runtime.running(rctx, agent_id, agent.on_task(task, rctx))
            except Exception as error:
                if restate.is_internal_exception(error):
                    raise
                failure = handler_error(error, str(agent_id))
                return record(
                    status="failed",
                    error={"code": code_of(failure).name, "message": str(failure)},
                )
            return record(
                status="completed",
                result=json_format.MessageToDict(result, preserving_proto_field_name=True),
            )

        @workflow.handler("status", **_BYTES_IO)
        async def query(ctx: restate.WorkflowSharedContext, _data: bytes) -> bytes:
            saved = await ctx.get("status", serde=BYTES)
            if saved is None:
                raise terminal_of(NotFound(f"workflow {ctx.key()!r} has recorded no status yet"))
            asked = await ctx.get(PROMISES_STATE, serde=BYTES)
            return json.dumps(status_view(saved, asked)).encode()

        @workflow.handler("resolve", **_BYTES_IO)
        async def resolve(ctx: restate.WorkflowSharedContext, data: bytes) -> bytes:
            request = json.loads(data)
            name = str(request["name"])
            saved = await ctx.get("status", serde=BYTES)
            asked = await ctx.get(PROMISES_STATE, serde=BYTES)
            refusal = refusal_of(ctx.key(), name, saved, asked)
            if refusal is not None:
                raise terminal_of(refusal)
            promise = ctx.promise(name, serde=BYTES)
            try:
                await promise.resolve(bytes.fromhex(request["value"]))
            except restate.TerminalError:  # answered by a concurrent resolve
                raise terminal_of(_resolved_already(ctx.key(), name)) from None
            return b"{}"

        return workflow


def status_view(saved: bytes, asked: bytes | None) -> dict[str, Any]:
    """A run's status as `query_workflow` shows it, from the workflow's state."""
    status: dict[str, Any] = json.loads(saved)
    promises: dict[str, str] = json.loads(asked) if asked else {}
    waiting = [name for name, state in promises.items() if state == "pending"]
    if status["status"] != "running":
        waiting = []
    status["waiting_for"] = waiting
    status["pending_approvals"] = [
        {"request_id": name.removeprefix(APPROVAL_PREFIX), "promise": name}
        for name in waiting
        if name.startswith(APPROVAL_PREFIX)
    ]
    if waiting:
        status["status"] = "waiting_for_approval"
    return status


def refusal_of(
    workflow_id: str, name: str, saved: bytes | None, asked: bytes | None
) -> RaviError | None:
    """Why promise `name` of the run cannot be resolved (None: it can)."""
    if saved is None:
        return NotFound(f"workflow {workflow_id!r} waits for no promise {name!r}: it has not run")
    status = json.loads(saved)["status"]
    if status in ("completed", "failed"):
        return FailedPrecondition(
            f"workflow {workflow_id!r} has ended ({status}): nothing waits for {name!r}"
        )
    state = (json.loads(asked) if asked else {}).get(name)
    if state is None:
        return NotFound(f"workflow {workflow_id!r} has not asked for a promise named {name!r}")
    if state == "resolved":
        return _resolved_already(workflow_id, name)
    if state == "ended":
        return FailedPrecondition(
            f"workflow {workflow_id!r} stopped waiting for {name!r} (its wait timed out)"
        )
    return None


def _resolved_already(workflow_id: str, name: str) -> AlreadyExists:
    return AlreadyExists(f"promise {name!r} of workflow {workflow_id!r} is resolved already")


@dataclass(frozen=True)
class RestateSettings:
    """Where a Restate server is: its ingress and its admin API.

    The ingress starts runs and resolves promises; the admin API (its SQL on
    Restate's state) answers queries, so they need no worker to be up.
    `timeout` bounds every request, in seconds.
    """

    ingress_url: str = "http://127.0.0.1:8080"
    admin_url: str = "http://127.0.0.1:9070"
    timeout: float = 30.0


Resolution = Literal["resolved", "accepted"]
"""How `resolve_promise` ended: the run has its answer, or Restate holds it until a worker is up."""


class RestateWorkflowClient:
    """RestateWorkflowClient drives durable agent runs (AgentWorkflow) from outside.

        async with RestateWorkflowClient(RestateSettings(ingress_url=..., admin_url=...)) as client:
            wf_id = await client.start_agent_workflow(
                thread_id="conv-abc", user_content="...", model="gpt-4o", max_iterations=10
            )
            state = await client.query_workflow(wf_id)
            approval = state["pending_approvals"][0]  # once it waits for one
            await client.resolve_promise(
                workflow_id=wf_id, promise_name=approval["promise"], value={"action": "approve"}
            )

    Every bad input is refused with an error of `ravi.errors`; see each method.

    Args:
        settings: where the Restate server is.
        message_registry: encodes promise values (the same registry as the workers').
    """

    def __init__(
        self, settings: RestateSettings, *, message_registry: MessageRegistry = registry
    ) -> None:
        self._settings = settings
        self._ingress = settings.ingress_url.rstrip("/")
        self._admin = settings.admin_url.rstrip("/")
        self._registry = message_registry
        self._http: aiohttp.ClientSession | None = None

    async def connect(self) -> None:
        """Open the connection pool and check that the ingress answers.

        Raises:
            Unavailable: the ingress does not answer.
        """
        if self._http is None:
            self._http = aiohttp.ClientSession()
        try:
            async with self._http.get(
                f"{self._ingress}/restate/health", timeout=self._timeout()
            ) as response:
                if response.status != 200:
                    raise Unavailable(f"Restate's ingress answered {response.status} to /health")
        except (aiohttp.ClientError, TimeoutError) as error:
            await self.close()
            raise Unavailable(
                f"cannot reach Restate's ingress at {self._ingress}: {error}"
            ) from None

    async def close(self) -> None:
        """Close the connection pool."""
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def __aenter__(self) -> RestateWorkflowClient:
        await self.connect()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def start_agent_workflow(
        self,
        *,
        thread_id: str,
        user_content: str,
        model: str,
        max_iterations: int = 0,
        workflow_id: str | None = None,
    ) -> str:
        """Start a durable run and return its workflow id, once Restate holds the run.

        From then on `query_workflow` knows it (as `pending` until a worker
        picks it up); the run goes on durably whatever happens to this client.

        Raises:
            AlreadyExists: a run with this `workflow_id` was started before
                (it goes on: query it, or `wait_for_result`).
            InvalidArgument: an empty thread id or workflow id.
        """
        if not thread_id or (workflow_id is not None and not workflow_id):
            raise InvalidArgument("thread_id and workflow_id must not be empty")
        workflow_id = workflow_id or f"{thread_id}-{uuid.uuid4().hex[:12]}"
        body = {
            "thread_id": thread_id,
            "user_content": user_content,
            "model": model,
            "max_iterations": max_iterations,
        }
        status, data = await self._post(f"{WORKFLOW}/{quote(workflow_id, safe='')}/run/send", body)
        if status not in (200, 202):
            raise error_of_reply(status, data, f"starting workflow {workflow_id!r}")
        if json.loads(data).get("status") == "PreviouslyAccepted":
            raise AlreadyExists(
                f"workflow {workflow_id!r} was started before; it goes on: query it, or wait "
                "for its result"
            )
        return workflow_id

    async def query_workflow(self, workflow_id: str) -> dict[str, Any]:
        """The run's status, read from Restate's state (no worker needs to be up).

        `status` is `pending` (Restate holds the run, no worker has started
        it), `running`, `waiting_for_approval` (with `waiting_for`, the
        promises it waits for, and `pending_approvals`: `request_id` and
        `promise` of each approval), `completed` (with `result`) or `failed`
        (with `error`).

        Raises:
            NotFound: no run has this id (or it ended longer ago than Restate
                keeps workflows: a day by default).
        """
        state = await self._state(workflow_id)
        if "status" in state:
            return status_view(state["status"], state.get(PROMISES_STATE))
        started = await self._query(
            "SELECT id FROM sys_invocation WHERE target_service_name = "
            f"'{WORKFLOW}' AND target_service_key = {_sql.literal(workflow_id)} "
            "AND target_handler_name = 'run'"
        )
        if not started:
            raise NotFound(f"no workflow {workflow_id!r} has started")
        return {
            "workflow_id": workflow_id,
            "status": "pending",
            "waiting_for": [],
            "pending_approvals": [],
        }

    async def resolve_promise(
        self, *, workflow_id: str, promise_name: str, value: Any
    ) -> Resolution:
        """Resolve a promise the run waits for.

        Returns `resolved` once the run has the value, or `accepted` when no
        worker took the request within the timeout: Restate holds it durably
        and a worker applies it when one is up (so do not send it again).

        Raises:
            NotFound: no such run, or the run never asked for this promise.
            FailedPrecondition: the run has ended, or stopped waiting for it.
            AlreadyExists: it was resolved already.
        """
        state = await self._state(workflow_id)
        if "status" not in state:
            await self.query_workflow(workflow_id)  # NotFound for an unknown id
        refusal = refusal_of(
            workflow_id, promise_name, state.get("status"), state.get(PROMISES_STATE)
        )
        if refusal is not None:
            raise refusal
        payload = codec.encode(self._registry, value).SerializeToString().hex()
        path = f"{WORKFLOW}/{quote(workflow_id, safe='')}/resolve/send"
        what = f"resolving {promise_name!r} of {workflow_id!r}"
        status, data = await self._post(
            path,
            {"name": promise_name, "value": payload},
            idempotency_key=f"resolve-{uuid.uuid4().hex}",
        )
        if status not in (200, 202):
            raise error_of_reply(status, data, what)
        invocation = json.loads(data)["invocationId"]
        try:
            async with self._client().get(
                f"{self._ingress}/restate/invocation/{invocation}/attach",
                timeout=self._timeout(),
            ) as response:
                status, data = response.status, await response.read()
        except TimeoutError:
            return "accepted"
        except aiohttp.ClientError as error:
            raise Unavailable(
                f"cannot reach Restate's ingress at {self._ingress}: {error}"
            ) from None
        if status != 200:
            raise error_of_reply(status, data, what)
        return "resolved"

    async def wait_for_result(self, workflow_id: str, *, timeout: float) -> dict[str, Any]:
        """Wait for the run to end and return its final status (completed or failed).

        Raises:
            NotFound: no run has this id.
            DeadlineExceeded: it did not end within `timeout` seconds.
        """
        url = f"{self._ingress}/restate/workflow/{WORKFLOW}/{quote(workflow_id, safe='')}/attach"
        try:
            async with self._client().get(
                url, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                data = await response.read()
        except TimeoutError:
            raise DeadlineExceeded(
                f"workflow {workflow_id!r} did not end within {timeout} s"
            ) from None
        except aiohttp.ClientError as error:
            raise Unavailable(
                f"cannot reach Restate's ingress at {self._ingress}: {error}"
            ) from None
        if response.status == 404:
            raise NotFound(f"no workflow {workflow_id!r} has started")
        if response.status != 200:
            raise error_of_reply(response.status, data, f"waiting for {workflow_id!r}")
        result: dict[str, Any] = json.loads(data)
        return result

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise Unavailable("the client is not connected: call connect() first")
        return self._http

    def _timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self._settings.timeout)

    async def _post(
        self, path: str, body: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> tuple[int, bytes]:
        url = f"{self._ingress}/{path}"
        headers = {"idempotency-key": idempotency_key} if idempotency_key else {}
        try:
            async with self._client().post(
                url, json=body, headers=headers, timeout=self._timeout()
            ) as response:
                return response.status, await response.read()
        except aiohttp.ClientError as error:
            raise Unavailable(f"cannot reach Restate at {url}: {error}") from None
        except TimeoutError:
            raise DeadlineExceeded(f"Restate did not answer {url} in time") from None

    async def _state(self, workflow_id: str) -> dict[str, bytes]:
        """The run's `status` and `promises`, as kept in the workflow's state."""
        rows = await self._query(
            f"SELECT key, value_utf8 FROM state WHERE service_name = '{WORKFLOW}' AND "
            f"service_key = {_sql.literal(workflow_id)} AND key IN ('status', '{PROMISES_STATE}')"
        )
        return {row["key"]: row["value_utf8"].encode() for row in rows}

    async def _query(self, sql: str) -> list[dict[str, Any]]:
        return await _sql.query(self._client(), self._admin, sql, self._settings.timeout)
