"""Chat models for agents: one small interface, an OpenAI-compatible client, a scripted model.

`OpenAIChatModel` needs the `openai` extra: `pip install "ravi[openai]"`.
"""

from typing import TYPE_CHECKING, Any

from ravi.models._messages import ChatMessage, Role, ToolCall, ToolSpec
from ravi.models._model import ChatModel, ScriptedModel, ScriptStep, call, say

if TYPE_CHECKING:
    from ravi.models._openai import OpenAIChatModel

__all__ = [
    "ChatMessage",
    "ChatModel",
    "OpenAIChatModel",
    "Role",
    "ScriptStep",
    "ScriptedModel",
    "ToolCall",
    "ToolSpec",
    "call",
    "say",
]


def __getattr__(name: str) -> Any:
    # The openai SDK is an extra: import it only for the class that needs it.
    if name == "OpenAIChatModel":
        try:
            from ravi.models._openai import OpenAIChatModel  # noqa: PLC0415
        except ImportError as missing:  # pragma: no cover - depends on the installed extras
            raise ImportError(
                f"OpenAIChatModel needs the openai SDK ({missing.name} is missing): "
                'install the extra with `pip install "ravi[openai]"`'
            ) from missing
        return OpenAIChatModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
