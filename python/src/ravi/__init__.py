"""ravi: a polyglot agent runtime.

Agents addressed by `AgentId(type, key)` talk by request/response
(`send_message`) and by topic publish/subscribe (`publish_message`); the same
agent code runs in-process (`ravi.runtime.LocalRuntime`), across a gRPC mesh of
Python, Go and Node nodes, and durably on Restate.
"""

from ravi import errors
from ravi._agent import BaseAgent, message_handler
from ravi._cancellation import CancellationToken
from ravi._context import MessageContext
from ravi._ids import AgentId, AgentType, TopicId
from ravi._interceptors import ForwardInput, HandleInput, Interceptor, PublishInput, SendInput
from ravi._serialization import MessageRegistry, message_type, registry
from ravi._subscriptions import (
    Subscription,
    TypePrefixSubscription,
    TypeSubscription,
    default_subscription,
    type_subscription,
)
from ravi._version import __version__
from ravi.errors import RaviError

__all__ = [
    "AgentId",
    "AgentType",
    "BaseAgent",
    "CancellationToken",
    "ForwardInput",
    "HandleInput",
    "Interceptor",
    "MessageContext",
    "MessageRegistry",
    "PublishInput",
    "RaviError",
    "SendInput",
    "Subscription",
    "TopicId",
    "TypePrefixSubscription",
    "TypeSubscription",
    "__version__",
    "default_subscription",
    "errors",
    "message_handler",
    "message_type",
    "registry",
    "type_subscription",
]
