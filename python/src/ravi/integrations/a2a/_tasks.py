"""A2A tasks run by ravi agents: ReAct runs on threads, and request/reply calls.

The a2a-sdk request handler keeps the tasks' streams and cancellations; the
executors here turn a task into ravi work. A ReAct task is a run of the
server's ThreadService: the task id is the run id, the contextId the thread,
and the run's events become status updates, an approval request
`input-required` (`ravi.integrations.a2a._runs`). A request/reply task is one
`send_message` whose reply becomes an artifact.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any, TypeVar

import grpc.aio
from a2a.helpers import get_message_text, new_data_part
from a2a.server.agent_execution import AgentExecutor, RequestContext, RequestContextBuilder
from a2a.server.context import ServerCallContext
from a2a.server.events import Event, EventQueue
from a2a.server.request_handlers import DefaultRequestHandler, validate_request_params
from a2a.server.tasks import InMemoryTaskStore, TaskStore, TaskUpdater
from a2a.types import (
    AgentCard,
    InvalidParamsError,
    Message,
    SendMessageRequest,
    SubscribeToTaskRequest,
    Task,
    TaskNotFoundError,
    TaskState,
    TaskStatus,
    UnsupportedOperationError,
)
from pydantic import ValidationError

from ravi._ids import AgentId
from ravi.errors import BadId, FailedPrecondition, InvalidToolCall, NotFound, RaviError
from ravi.integrations.a2a._cards import ExposedAgent, type_name
from ravi.integrations.a2a._parts import (
    data_of,
    decode_message,
    encode_message,
    failure,
    text_and_data,
)
from ravi.integrations.a2a._runs import ENDS, RunTasks, Update, asked, settled, updates
from ravi.runtime import BaseRuntime
from ravi.server import ThreadService
from ravi.server._app import Respond

_TERMINAL = {
    TaskState.TASK_STATE_COMPLETED,
    TaskState.TASK_STATE_CANCELED,
    TaskState.TASK_STATE_FAILED,
    TaskState.TASK_STATE_REJECTED,
}
_ANSWERS = {"approve": "approve", "yes": "approve", "reject": "reject", "no": "reject"}
T = TypeVar("T")
DEFAULT_KEY = "default"
"""The agent key of a request/reply call whose message names no contextId."""
PARKED_RELEASE = 60.0
"""Seconds an executor's in-memory task waits in input-required before it is let go.

Nothing is lost: the task is its run's, and the next message builds it again.
"""


def task_handler(executor: RaviExecutor, card: AgentCard) -> DefaultRequestHandler:
    """a2a-sdk's request handler for one agent type, admitting each message first.

    A message the agent cannot take (a bad approval answer, a request that
    does not decode, a thread that is busy) is refused with an A2A error and
    changes no task: a task waiting for an approval stays `input-required`.
    """
    store = executor.store
    builder = _Admission(executor, store)
    if isinstance(executor, ThreadExecutor):
        return _RunHandler(
            executor,
            agent_executor=executor,
            task_store=store,
            agent_card=card,
            request_context_builder=builder,
            interrupted_task_timeout=PARKED_RELEASE,
        )
    return DefaultRequestHandler(
        agent_executor=executor,
        task_store=store,
        agent_card=card,
        request_context_builder=builder,
    )


class _RunHandler(DefaultRequestHandler):
    """The request handler of a ReAct type: a resubscribed task follows its run.

    The SDK's own resubscription taps the executor of this process, which a
    restarted gateway has not, and which hears of nothing done elsewhere (an
    approval answered on the web page); following the run has it all.
    """

    def __init__(self, executor: ThreadExecutor, **options: Any) -> None:
        super().__init__(**options)
        self._runs = executor

    @validate_request_params
    async def on_subscribe_to_task(
        self, params: SubscribeToTaskRequest, context: ServerCallContext
    ) -> AsyncIterator[Event]:
        async with contextlib.aclosing(self._runs.subscribe(params.id)) as following:
            async for event in following:
                yield event


class Admitted(RequestContext):
    """A request context carrying what admission made of the message (a decoded request)."""

    prepared: Any = None


class _Admission(RequestContextBuilder):
    """Builds each request's context once the executor admitted the message.

    The SDK builds the context before it makes or touches a task, so an error
    raised here refuses the message and nothing else happens.
    """

    def __init__(self, executor: RaviExecutor, store: TaskStore) -> None:
        self._executor = executor
        self._store = store

    async def build(
        self,
        context: ServerCallContext,
        params: SendMessageRequest | None = None,
        task_id: str | None = None,
        context_id: str | None = None,
        task: Task | None = None,
    ) -> RequestContext:
        prepared = None
        if params is not None:
            prepared = await self._executor.admit(params, context, self._store)
        admitted = Admitted(
            call_context=context,
            request=params,
            task_id=task_id,
            context_id=context_id,
            task=task,
        )
        admitted.prepared = prepared
        return admitted


class RaviExecutor(AgentExecutor):
    """An executor that checks a message before the SDK makes it a task."""

    store: TaskStore
    """Where the SDK keeps this agent type's tasks."""

    def __init__(self, exposed: ExposedAgent) -> None:
        self.exposed = exposed
        self._executing: set[str] = set()
        self._cancelled: set[str] = set()
        self._closing = asyncio.Event()

    def close(self) -> None:
        """End the streams that only follow a task (`SubscribeToTask`): the gateway stops."""
        self._closing.set()

    @abstractmethod
    async def admit(
        self, params: SendMessageRequest, context: ServerCallContext, store: TaskStore
    ) -> Any:
        """Refuse a message this agent cannot take (an A2A error), before it touches a task.

        Returns what the execution may use of the work done (a decoded request).
        """

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        task_id = _required(context.task_id)
        self._executing.add(task_id)
        try:
            await self._execute(context, event_queue)
        finally:
            self._executing.discard(task_id)
            self._cancelled.discard(task_id)

    @abstractmethod
    async def _execute(self, context: RequestContext, event_queue: EventQueue) -> None: ...

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        task_id = _required(context.task_id)
        self._cancelled.add(task_id)
        try:
            await self._stop(task_id)
            await _updater(context, event_queue).cancel()
        finally:
            if task_id not in self._executing:
                self._cancelled.discard(task_id)

    async def _stop(self, task_id: str) -> None:
        """Stop the ravi work of a task being cancelled (the SDK cancels `execute` after)."""


class ThreadExecutor(RaviExecutor):
    """ThreadExecutor runs A2A tasks as ReAct runs of the server's ThreadService.

    The contextId is the thread id (and the agent key), the task id the run
    id. Each run event becomes a status update carrying the event as a data
    part; an approval request makes the task `input-required`, and the
    client's next message in the task answers it as `POST /respond` would.
    The tasks are the runs (`RunTasks`): nothing about them is kept here.
    """

    def __init__(self, exposed: ExposedAgent, threads: ThreadService) -> None:
        super().__init__(exposed)
        self._threads = threads
        self.store: RunTasks = RunTasks(threads, exposed)

    async def admit(
        self, params: SendMessageRequest, context: ServerCallContext, store: TaskStore
    ) -> None:
        message = params.message
        if message.task_id:
            task = await store.get(message.task_id, context)
            if task is None:
                return  # the SDK answers: no such task
            if task.status.state != TaskState.TASK_STATE_INPUT_REQUIRED:
                raise UnsupportedOperationError(
                    f"task {task.id} is {TaskState.Name(task.status.state)}: it takes a "
                    "message only while it waits for an approval (input-required)"
                )
            await self._answer(message, task)
            return
        if not get_message_text(message).strip():
            raise InvalidParamsError(
                message=f"{self.exposed.agent_type} takes its task as a text part"
            )
        if message.context_id:
            _check_key(self.exposed.agent_type, message.context_id)
            await self._check_thread(message.context_id)

    async def _check_thread(self, thread_id: str) -> None:
        """Refuse a context whose thread is busy or another agent type's."""
        try:
            thread = await self._threads.thread(thread_id)
            run = await self._threads.run_status(thread["run_id"]) if thread["run_id"] else None
        except NotFound:
            return
        agent_type = self.exposed.agent_type
        if run is not None and run["agent_type"] != agent_type:
            raise InvalidParamsError(
                message=f"context {thread_id!r} is a conversation with agent "
                f"{run['agent_type']!r}, not {agent_type!r}"
            )
        if thread["status"] in ("running", "waiting_for_approval", "submitted"):
            raise UnsupportedOperationError(
                f"context {thread_id!r} has a task in progress ({thread['run_id']}); "
                "continue that task or wait for it to finish"
            )

    async def _execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        updater = _updater(context, event_queue)
        run_id, thread_id = updater.task_id, updater.context_id
        task = context.current_task
        if task is None:
            message = _required(context.message)
            submitted = Task(
                id=run_id,
                context_id=thread_id,
                status=TaskStatus(state=TaskState.TASK_STATE_SUBMITTED),
                history=[message],
            )
            await event_queue.enqueue_event(submitted)
            try:
                started = await self._threads.run(
                    thread_id,
                    get_message_text(message),
                    run_id=run_id,
                    agent_type=self.exposed.agent_type,
                )
            except RaviError as error:
                self.store.keep(submitted)  # no run: the failed task lives here
                await updater.failed(
                    updater.new_agent_message(text_and_data(str(error), failure(error)))
                )
                return
            if started["status"] == "submitted":
                # Restate holds the run until a worker takes it; it is the task from then on.
                self.store.keep(submitted)
                return
            after = 0
        else:
            # The task waits at the approval request its status message shows.
            waiting = asked(task)
            after = int(waiting["seq"]) if waiting else 0
            answered = await self._answer(_required(context.message), task)
            if answered is not None:
                # Answered elsewhere meanwhile (the web page), or the run
                # ended: then its events below say what became of it.
                request_id, answer = answered
                with contextlib.suppress(RaviError):
                    await self._threads.respond(request_id, answer.answer())
        async for update in self._updates(run_id, after):
            if run_id in self._cancelled:
                return  # cancel() reports the end
            await event_queue.enqueue_event(update)

    async def _updates(self, run_id: str, after: int) -> AsyncGenerator[Update, None]:
        """The task's updates from the run's events after `after`, until it waits or ends.

        An approval request already answered (on the web page, while this
        follower was reading the events before it) does not stop the task.
        """
        async for event in self._threads.run_events(run_id, after):
            kind = event["kind"]
            if kind == "approval_request" and not await self._pending(event):
                continue
            shown: Mapping[str, Any] = event
            if kind in ENDS:
                shown = settled(await self._threads.run_status(run_id), event)
            for update in updates(self.exposed, shown):
                yield update
            if kind == "approval_request" or kind in ENDS:
                return

    async def _pending(self, event: dict[str, Any]) -> bool:
        run = await self._threads.run_status(event["run_id"])
        request_id = event["approval_request"]["request_id"]
        return any(
            p["approval_request"]["request_id"] == request_id for p in run["pending_approvals"]
        )

    async def subscribe(self, task_id: str) -> AsyncGenerator[Event, None]:
        """`SubscribeToTask`: the task now, then its updates until it waits again or ends.

        Raises:
            TaskNotFoundError: no such task of this agent type.
            UnsupportedOperationError: the task has ended.
        """
        found = await self.store.snapshot(task_id)
        if found is None:
            raise TaskNotFoundError
        task, seq = found
        if task.status.state in _TERMINAL:
            raise UnsupportedOperationError(
                message=f"task {task_id} is {TaskState.Name(task.status.state)}: it has ended"
            )
        yield task
        closing = asyncio.ensure_future(self._closing.wait())
        async with contextlib.aclosing(self._updates(task_id, seq)) as following:
            try:
                while True:
                    coming = asyncio.ensure_future(anext(following))
                    await asyncio.wait({coming, closing}, return_when=asyncio.FIRST_COMPLETED)
                    if not coming.done():  # the gateway stops
                        coming.cancel()
                        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                            await coming
                        return
                    try:
                        update = coming.result()
                    except (StopAsyncIteration, NotFound):  # NotFound: Restate holds the run
                        return
                    yield update
            finally:
                closing.cancel()

    async def _answer(self, message: Message, task: Task) -> tuple[str, Respond] | None:
        """The pending approval this message answers, and the answer, checked as POST /respond.

        None when no approval of the task's run waits any more (it was
        answered elsewhere, or the run ended): the message then only resumes
        the task, which reports what became of the run.

        Raises:
            InvalidParamsError: the answer is not approve, reject or a valid edit.
        """
        try:
            run = await self._threads.run_status(task.id)
        except NotFound:
            return None
        pending = {
            e["approval_request"]["request_id"]: e
            for e in run["pending_approvals"]
            if e["run_id"] == task.id
        }
        if not pending:
            return None
        fields = _answer_fields(message)
        named = fields.pop("request_id", None)
        if named is not None and named not in pending:
            raise InvalidParamsError(
                message=f"request_id {named!r} is not waiting in task {task.id}; "
                f"waiting: {', '.join(pending)}"
            )
        request_id = named or next(iter(pending))
        fields.setdefault("answered_by", "a2a")
        try:
            answer = Respond.model_validate(fields)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'answer'}: {e['msg']}"
                for e in error.errors(include_url=False)
            )
            raise InvalidParamsError(message=f"the answer is not valid: {problems}") from None
        if answer.action == "edit":
            tool = self.exposed.tool(pending[request_id]["approval_request"]["call"]["tool"])
            if tool is not None:
                try:
                    tool.validate(answer.arguments or {})
                except InvalidToolCall as error:
                    raise InvalidParamsError(
                        message=f"the edited arguments do not validate: {error}"
                    ) from None
        return request_id, answer

    async def _stop(self, task_id: str) -> None:
        with contextlib.suppress(NotFound, FailedPrecondition):  # it ended meanwhile
            await self._threads.cancel(task_id)


class RequestExecutor(RaviExecutor):
    """RequestExecutor runs an A2A task as one `send_message` to a request/reply agent.

    The message's data part names the request type ({"@type": NAME,
    ...fields}); the reply becomes the task's artifact, an error a failed task
    carrying its code. The contextId is the agent key ("default" when the
    client names none).
    """

    def __init__(self, exposed: ExposedAgent, runtime: BaseRuntime) -> None:
        super().__init__(exposed)
        self._runtime = runtime
        # A call's task lasts as long as the call: memory is where it belongs.
        self.store = InMemoryTaskStore()

    async def admit(
        self, params: SendMessageRequest, context: ServerCallContext, store: TaskStore
    ) -> Any:
        message = params.message
        if message.task_id:
            return None  # a finished task: the SDK refuses it
        if not message.context_id:
            message.context_id = DEFAULT_KEY
        _check_key(self.exposed.agent_type, message.context_id)
        return self._request(message)

    def _request(self, message: Message) -> Any:
        data = [data_of(p) for p in message.parts if p.HasField("data")]
        try:
            if len(data) != 1:
                raise InvalidParamsError(
                    message=f"{self.exposed.agent_type} takes one data part naming its "
                    'request type: {"@type": "TYPE", ...fields}'
                )
            request = decode_message(data[0])
        except RaviError as error:
            raise InvalidParamsError(message=str(error)) from None
        cls = self.exposed.agent_class
        if cls is not None and not any(isinstance(request, t) for t in cls.handled_types()):
            names = ", ".join(sorted(type_name(t) for t in cls.handled_types()))
            raise InvalidParamsError(
                message=f"{self.exposed.agent_type} has no handler for "
                f"{data[0]['@type']}; it takes {names}"
            )
        return request

    async def _execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        updater = _updater(context, event_queue)
        message = _required(context.message)
        await event_queue.enqueue_event(
            Task(
                id=updater.task_id,
                context_id=updater.context_id,
                status=TaskStatus(state=TaskState.TASK_STATE_WORKING),
                history=[message],
            )
        )
        agent = AgentId(self.exposed.agent_type, updater.context_id)
        try:
            request = context.prepared if isinstance(context, Admitted) else None
            reply = await self._runtime.send_message(
                request if request is not None else self._request(message),
                agent,
                timeout=_time_remaining(context.call_context),
            )
            parts = [] if reply is None else [new_data_part(encode_message(reply))]
        except RaviError as error:
            if updater.task_id not in self._cancelled:
                await updater.failed(
                    updater.new_agent_message(text_and_data(str(error), failure(error)))
                )
            return
        if updater.task_id in self._cancelled:
            return
        if parts:
            await updater.add_artifact(parts, name="reply")
        await updater.complete()


def _answer_fields(message: Message) -> dict[str, Any]:
    """The answer's fields from a data part, or from the text approve / reject."""
    for part in message.parts:
        if part.HasField("data"):
            data = data_of(part)
            if not isinstance(data, dict):
                raise InvalidParamsError(message="the answer's data part must be an object")
            return dict(data)
    text = get_message_text(message).strip().lower()
    action = _ANSWERS.get(text)
    if action is None:
        raise InvalidParamsError(
            message='answer approve or reject, or send a data part {"action": "approve" | '
            '"reject" | "edit", "arguments": {...}, "reason": "..."}'
        )
    return {"action": action}


def _check_key(agent_type: str, context_id: str) -> None:
    """Refuse a contextId that cannot be an agent key."""
    try:
        AgentId(agent_type, context_id)
    except BadId as error:
        raise InvalidParamsError(message=f"contextId: {error}") from None


def _updater(context: RequestContext, event_queue: EventQueue) -> TaskUpdater:
    return TaskUpdater(event_queue, _required(context.task_id), _required(context.context_id))


def _time_remaining(call: ServerCallContext) -> float | None:
    """The client's gRPC deadline, when it set one (JSON-RPC and HTTP+JSON have none)."""
    grpc_context: grpc.aio.ServicerContext[Any, Any] | None = call.state.get("grpc_context")
    if grpc_context is None:
        return None
    remaining = grpc_context.time_remaining()
    return None if remaining is None else max(remaining, 0.0)


def _required(value: T | None) -> T:
    assert value is not None, "the SDK sets this for every execution"
    return value
