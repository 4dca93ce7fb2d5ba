"""Ready-made agents: ReActAgent, with the messages it takes, returns and publishes."""

from ravi.agents._react import (
    DEFAULT_SYSTEM_PROMPT,
    EVENTS_TOPIC,
    ReActAgent,
    approval_answer,
)
from ravi.react.v1.react_pb2 import (
    ApprovalAnswer,
    ApprovalDecision,
    ApprovalRequest,
    ModelStep,
    Result,
    RunEvent,
    RunFailed,
    RunStarted,
    Task,
    ToolResult,
)

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "EVENTS_TOPIC",
    "ApprovalAnswer",
    "ApprovalDecision",
    "ApprovalRequest",
    "ModelStep",
    "ReActAgent",
    "Result",
    "RunEvent",
    "RunFailed",
    "RunStarted",
    "Task",
    "ToolResult",
    "approval_answer",
]
