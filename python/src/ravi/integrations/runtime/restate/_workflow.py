"""The durable agent workflow, and the client that starts, queries and answers it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

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
    NotFound,
    Unavailable,
    code_of,
    handler_error,
)
from ravi.integrations.runtime.restate._context import (
    BYTES,
    CANCELLED_STATUS,
    RestateContext,
    _terminal,
    durable_wait,
)
from ravi.mesh.v1 import types_pb2
from ravi.models import ChatModel
from ravi.tools import Tool

if TYPE_CHECKING:
    from ravi.integrations.runtime.restate._runtime import RestateRuntime

WORKFLOW = "ravi.AgentWorkflow"
WORKFLOW_AGENT_TYPE = "ravi.agent-workflow"

_BYTES_IO: dict[str, Any] = {
    "accept": "*/*",
    "content_type": "application/json",
    "input_serde": BYTES,
    "output_serde": BYTES,
}


class _WorkflowContext(RestateContext):
    """A RestateContext whose waits are the workflow's own durable promises.

    While a promise is awaited its name is in the workflow's state, so
    `query_workflow` can say what the run waits for.
    """

    __slots__ = ()

    async def wait_for(self, name: str, *, timeout: float | None = None) -> Any:
        ctx = cast("restate.WorkflowContext", self.restate)
        ctx.set("waiting_for", name.encode(), serde=BYTES)
        promise = ctx.promise(name, serde=BYTES)
        try:
            data = await durable_wait(ctx, promise.value(), name, timeout)
        except restate.TerminalError as error:
            raise _terminal(error) from None
        finally:
            ctx.clear("waiting_for")
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
                raise restate.TerminalError(f"no workflow {ctx.key()!r} has run", 404)
            status = json.loads(saved)
            waiting = await ctx.get("waiting_for", serde=BYTES)
            status["waiting_for"] = [waiting.decode()] if waiting else []
            if waiting and status["status"] == "running":
                status["status"] = "waiting_for_approval"
            return json.dumps(status).encode()

        @workflow.handler("resolve", **_BYTES_IO)
        async def resolve(ctx: restate.WorkflowSharedContext, data: bytes) -> bytes:
            request = json.loads(data)
            promise = ctx.promise(str(request["name"]), serde=BYTES)
            if await promise.peek() is not None:
                raise restate.TerminalError(
                    f"promise {request['name']!r} is resolved already", CANCELLED_STATUS
                )
            await promise.resolve(bytes.fromhex(request["value"]))
            return b"{}"

        return workflow


@dataclass(frozen=True)
class RestateSettings:
    """Where a Restate server is: its ingress and its admin API."""

    ingress_url: str = "http://127.0.0.1:8080"
    admin_url: str = "http://127.0.0.1:9070"
    timeout: float = 30.0


class RestateWorkflowClient:
    """RestateWorkflowClient drives durable agent runs (AgentWorkflow) from outside.

        client = RestateWorkflowClient(RestateSettings(ingress_url=...))
        await client.connect()
        wf_id = await client.start_agent_workflow(thread_id="conv-abc", user_content="...",
                                                  model="gpt-4o", max_iterations=10)
        state = await client.query_workflow(wf_id)
        await client.resolve_promise(workflow_id=wf_id, promise_name=f"approval-{rid}",
                                     value={"action": "approve"})

    Args:
        settings: where the Restate server is.
        message_registry: encodes promise values (the same registry as the workers').
    """

    def __init__(
        self, settings: RestateSettings, *, message_registry: MessageRegistry = registry
    ) -> None:
        self._settings = settings
        self._registry = message_registry
        self._http: aiohttp.ClientSession | None = None

    async def connect(self) -> None:
        """Open the connection pool and check that the ingress answers."""
        if self._http is None:
            self._http = aiohttp.ClientSession()
        try:
            async with self._http.get(
                f"{self._settings.ingress_url}/restate/health",
                timeout=aiohttp.ClientTimeout(total=self._settings.timeout),
            ) as response:
                if response.status != 200:
                    raise Unavailable(f"Restate's ingress answered {response.status} to /health")
        except aiohttp.ClientError as error:
            raise Unavailable(
                f"cannot reach Restate's ingress at {self._settings.ingress_url}: {error}"
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
        """Start a durable run and return its workflow id (at once: the run goes on durably).

        Starting again with the same `workflow_id` does not start a second run.
        """
        workflow_id = workflow_id or f"{thread_id}-{uuid.uuid4().hex[:12]}"
        body = {
            "thread_id": thread_id,
            "user_content": user_content,
            "model": model,
            "max_iterations": max_iterations,
        }
        status, data = await self._post(f"{WORKFLOW}/{workflow_id}/run/send", body)
        if status not in (200, 202):
            raise Unavailable(f"Restate did not start workflow {workflow_id!r}: {status} {data!r}")
        return workflow_id

    async def query_workflow(self, workflow_id: str) -> dict[str, Any]:
        """The run's status, as a dict.

        `status` is running, waiting_for_approval (with `waiting_for`),
        completed (with `result`) or failed (with `error`).

        Raises:
            NotFound: no such workflow has started.
        """
        status, data = await self._post(f"{WORKFLOW}/{workflow_id}/status", {})
        if status == 200:
            state: dict[str, Any] = json.loads(data)
            return state
        if status in (404, 500) and b"has run" in data:
            raise NotFound(f"no workflow {workflow_id!r} has started")
        raise Unavailable(f"cannot query workflow {workflow_id!r}: {status} {data!r}")

    async def resolve_promise(self, *, workflow_id: str, promise_name: str, value: Any) -> None:
        """Resolve a promise the run waits (or will wait) for.

        Raises:
            AlreadyExists: it was resolved already.
        """
        payload = codec.encode(self._registry, value).SerializeToString().hex()
        status, data = await self._post(
            f"{WORKFLOW}/{workflow_id}/resolve", {"name": promise_name, "value": payload}
        )
        if status == CANCELLED_STATUS:
            raise AlreadyExists(f"promise {promise_name!r} of {workflow_id!r} is resolved already")
        if status != 200:
            raise FailedPrecondition(
                f"cannot resolve {promise_name!r} of {workflow_id!r}: {status} {data!r}"
            )

    async def wait_for_result(self, workflow_id: str, *, timeout: float) -> dict[str, Any]:
        """Wait for the run to end and return its final status."""
        url = f"{self._settings.ingress_url}/restate/workflow/{WORKFLOW}/{workflow_id}/attach"
        try:
            async with self._client().get(
                url, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                data = await response.read()
        except TimeoutError:
            raise DeadlineExceeded(
                f"workflow {workflow_id!r} did not end within {timeout} s"
            ) from None
        if response.status != 200:
            raise Unavailable(
                f"cannot attach to workflow {workflow_id!r}: {response.status} {data!r}"
            )
        result: dict[str, Any] = json.loads(data)
        return result

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise Unavailable("the client is not connected: call connect() first")
        return self._http

    async def _post(self, path: str, body: Mapping[str, Any]) -> tuple[int, bytes]:
        url = f"{self._settings.ingress_url}/{path}"
        try:
            async with self._client().post(
                url, json=body, timeout=aiohttp.ClientTimeout(total=self._settings.timeout)
            ) as response:
                return response.status, await response.read()
        except aiohttp.ClientError as error:
            raise Unavailable(f"cannot reach Restate at {url}: {error}") from None
        except TimeoutError:
            raise DeadlineExceeded(f"Restate did not answer {url} in time") from None
