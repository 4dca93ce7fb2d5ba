"""ReActAgent: a model that reasons, calls tools, and asks a human before risky ones."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from ravi._agent import BaseAgent, message_handler
from ravi._context import MessageContext
from ravi._ids import TopicId
from ravi.errors import Cancelled, DeadlineExceeded, InvalidArgument, InvalidToolCall, code_of
from ravi.models import ChatMessage, ChatModel, ToolCall
from ravi.react.v1 import react_pb2 as pb
from ravi.tools import Tool, ToolContext, render

EVENTS_TOPIC = "ravi.react.events"
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant. Call the tools you are given when they help, "
    "and answer in plain language once you know the answer."
)

_ACTIONS = {
    "approve": pb.APPROVAL_ACTION_APPROVE,
    "reject": pb.APPROVAL_ACTION_REJECT,
    "edit": pb.APPROVAL_ACTION_EDIT,
}


class _ToolOutcome(BaseModel):
    """What a tool step records: a tool that raised is an outcome too, never retried."""

    status: pb.ToolStatus.ValueType
    output: str


class ReActAgent(BaseAgent):
    """ReActAgent answers a Task by alternating model steps and tool calls.

    One instance serves one conversation thread (the agent key is the thread
    id) and keeps its history across tasks. Each model step and each tool
    execution goes through `ctx.step`, so on a durable runtime a recorded step
    is not repeated; a tool marked `requires_approval` waits on
    `ctx.wait_for(f"approval-{request_id}")` until a human approves, rejects or
    edits the call. A rejection is told to the model, which carries on. Every
    step is published as a `RunEvent` on `TopicId("ravi.react.events", thread)`.

    Args:
        model: the chat model.
        tools: the tools the model may call.
        system_prompt: the instructions that open every conversation.
        max_iterations: model steps per task at most; a Task may ask for fewer.
        model_timeout: seconds a model step may take (the model's default when None).
        approval_timeout: seconds to wait for a human at most; None waits as
            long as the task's own deadline allows.
        events_topic: the topic type the events are published on.
    """

    def __init__(
        self,
        model: ChatModel,
        tools: Sequence[Tool] = (),
        *,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        max_iterations: int = 10,
        model_timeout: float | None = None,
        approval_timeout: float | None = None,
        events_topic: str = EVENTS_TOPIC,
    ) -> None:
        if max_iterations < 1:
            raise ValueError("max_iterations must be at least 1")
        self._model = model
        self._tools = {t.name: t for t in tools}
        if len(self._tools) != len(tools):
            raise ValueError("two tools have the same name")
        self._specs = [t.spec for t in tools]
        self._system = ChatMessage.system(system_prompt)
        self._max_iterations = max_iterations
        self._model_timeout = model_timeout
        self._approval_timeout = approval_timeout
        self._events_topic = events_topic
        self._history: list[ChatMessage] = []
        self._seq = 0

    @message_handler
    async def on_task(self, task: pb.Task, ctx: MessageContext) -> pb.Result:
        """Run the task to a result; raises what the model raised, after a `failed` event."""
        thread = self.id.key
        if task.thread_id and task.thread_id != thread:
            raise InvalidArgument(
                f"Task.thread_id {task.thread_id!r} is not this agent's thread {thread!r}: "
                f"send the task to AgentId({self.id.type!r}, {task.thread_id!r})"
            )
        run = _Run(self, ctx, thread)
        limit = min(task.max_iterations or self._max_iterations, self._max_iterations)
        await run.emit(
            started=pb.RunStarted(
                content=task.content, max_iterations=limit, model=self._model.name
            )
        )
        messages = [*self._history, ChatMessage.user(task.content)]
        try:
            result = await self._loop(run, messages, limit)
        # Not BaseException: a durable runtime suspends or replays a handler by
        # raising through it, which ends no run and must journal nothing more.
        except (Exception, asyncio.CancelledError) as error:
            failure = pb.RunFailed(code=code_of(error).name, message=str(error))
            if isinstance(error, asyncio.CancelledError):
                failure = pb.RunFailed(code=Cancelled.default_code.name, message="cancelled")
                if ctx.time_remaining() == 0:
                    failure = pb.RunFailed(
                        code=DeadlineExceeded.default_code.name,
                        message="the task's deadline passed before the run ended",
                    )
            # The run ends either way; its failed event is best effort.
            with contextlib.suppress(Exception):
                await asyncio.shield(run.emit(failed=failure))
            raise
        self._history = messages
        await run.emit(final=result)
        return result

    async def _loop(self, run: _Run, messages: list[ChatMessage], limit: int) -> pb.Result:
        for iteration in range(1, limit + 1):
            reply = await run.ctx.step(f"model-{iteration}", self._complete, list(messages))
            messages.append(reply)
            await run.emit(
                model_step=pb.ModelStep(
                    iteration=iteration,
                    content=reply.content,
                    tool_calls=[_call_pb(c) for c in reply.tool_calls],
                )
            )
            if not reply.tool_calls:
                return run.result(reply.content, iteration, pb.STOP_REASON_ANSWERED)
            for index, call in enumerate(reply.tool_calls, 1):
                ran, outcome = await self._call_tool(run, iteration, index, call)
                messages.append(ChatMessage.tool(call.id, outcome.output))
                await run.emit(
                    tool_result=pb.ToolResult(
                        call=_call_pb(ran), output=outcome.output, status=outcome.status
                    )
                )
        last = next((m.content for m in reversed(messages) if m.role == "assistant"), "")
        content = last or f"Stopped after {limit} model steps without a final answer."
        return run.result(content, limit, pb.STOP_REASON_MAX_ITERATIONS)

    async def _complete(self, messages: list[ChatMessage]) -> ChatMessage:
        return await self._model.complete(
            [self._system, *messages], self._specs, timeout=self._model_timeout
        )

    async def _call_tool(
        self, run: _Run, iteration: int, index: int, call: ToolCall
    ) -> tuple[ToolCall, _ToolOutcome]:
        """Validate, ask for approval if needed, and run one tool call."""
        tool = self._tools.get(call.name)
        if tool is None:
            known = ", ".join(sorted(self._tools)) or "none"
            return call, _invalid(f"there is no tool named {call.name!r} (the tools: {known})")
        try:
            arguments = call.parsed_arguments()
            tool.validate(arguments)
        except InvalidToolCall as error:
            return call, _invalid(str(error))
        if tool.requires_approval:
            request_id = f"{run.run_id}.{iteration}.{index}"
            answer = await self._ask(run, request_id, call, tool)
            if answer.action == pb.APPROVAL_ACTION_REJECT:
                reason = f": {answer.reason}" if answer.reason else ""
                message = f"A human rejected this call; the tool did not run{reason}"
                return call, _ToolOutcome(status=pb.TOOL_STATUS_REJECTED, output=message)
            if answer.action == pb.APPROVAL_ACTION_EDIT:
                call = call.model_copy(update={"arguments": answer.arguments_json})
                try:
                    arguments = call.parsed_arguments()
                    tool.validate(arguments)
                except InvalidToolCall as error:
                    return call, _invalid(f"the arguments a human gave do not validate: {error}")
        step = f"tool-{iteration}-{index}"
        context = ToolContext(
            idempotency_key=run.ctx.idempotency_key(step), call_id=call.id, thread_id=run.thread
        )
        return call, await run.ctx.step(step, _run_tool, tool, arguments, context)

    async def _ask(
        self, run: _Run, request_id: str, call: ToolCall, tool: Tool
    ) -> pb.ApprovalAnswer:
        await run.emit(
            approval_request=pb.ApprovalRequest(
                request_id=request_id,
                call=_call_pb(call),
                description=tool.description,
                parameters_json=json.dumps(tool.spec.parameters),
            )
        )
        value = await run.ctx.wait_for(f"approval-{request_id}", timeout=self._approval_timeout)
        answer = approval_answer(value)
        await run.emit(approval_decision=pb.ApprovalDecision(request_id=request_id, answer=answer))
        return answer

    async def save_state(self) -> Mapping[str, Any]:
        return {"history": [m.model_dump(mode="json") for m in self._history], "seq": self._seq}

    async def load_state(self, state: Mapping[str, Any]) -> None:
        self._history = [ChatMessage.model_validate(m) for m in state.get("history", [])]
        self._seq = int(state.get("seq", 0))


class _Run:
    """One task's run: its context, thread and id, and how it publishes events."""

    def __init__(self, agent: ReActAgent, ctx: MessageContext, thread: str) -> None:
        self.agent, self.ctx, self.thread = agent, ctx, thread
        self.run_id = ctx.message_id

    async def emit(self, **kind: Any) -> None:
        agent = self.agent
        agent._seq += 1
        event = pb.RunEvent(
            thread_id=self.thread,
            seq=agent._seq,
            run_id=self.run_id,
            agent_type=agent.id.type,
            **kind,
        )
        await agent.publish_message(
            event,
            TopicId(agent._events_topic, self.thread),
            message_id=f"{self.run_id}.e{agent._seq}",
        )

    def result(self, content: str, iterations: int, reason: pb.StopReason.ValueType) -> pb.Result:
        return pb.Result(
            thread_id=self.thread,
            content=content,
            iterations=iterations,
            stop_reason=reason,
            run_id=self.run_id,
        )


async def _run_tool(tool: Tool, arguments: dict[str, Any], context: ToolContext) -> _ToolOutcome:
    try:
        output = render(await tool.run(arguments, context))
    except Exception as error:  # the model is told what the tool raised
        return _ToolOutcome(
            status=pb.TOOL_STATUS_ERROR,
            output=f"The tool raised {type(error).__name__}: {error}",
        )
    return _ToolOutcome(status=pb.TOOL_STATUS_OK, output=output)


def _invalid(message: str) -> _ToolOutcome:
    return _ToolOutcome(status=pb.TOOL_STATUS_INVALID, output=f"Invalid tool call: {message}")


def _call_pb(call: ToolCall) -> pb.ToolCall:
    return pb.ToolCall(call_id=call.id, tool=call.name, arguments_json=call.arguments)


def approval_answer(value: Any) -> pb.ApprovalAnswer:
    """An answer to an approval request, from an ApprovalAnswer or a mapping.

    The mapping form is `{"action": "approve" | "reject" | "edit", "arguments":
    {...} (for edit), "reason": "..." (for reject)}`. An answer that is neither
    rejects the call (the tool must not run on an answer nobody understood).
    """
    if isinstance(value, pb.ApprovalAnswer) and value.action != pb.APPROVAL_ACTION_UNSPECIFIED:
        return value
    if isinstance(value, Mapping):
        action = _ACTIONS.get(str(value.get("action", "")).lower())
        arguments = value.get("arguments")
        if action is not None:
            return pb.ApprovalAnswer(
                action=action,
                arguments_json=arguments
                if isinstance(arguments, str)
                else json.dumps(arguments or {}),
                reason=str(value.get("reason") or ""),
                answered_by=str(value.get("answered_by") or ""),
            )
    return pb.ApprovalAnswer(
        action=pb.APPROVAL_ACTION_REJECT,
        reason=f"the answer {value!r} is not approve, reject or edit",
    )
