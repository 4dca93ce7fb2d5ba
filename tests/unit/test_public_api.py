"""The public API, pinned: a change to these names shows up in review."""

import ravi
import ravi.agents
import ravi.errors
import ravi.integrations.a2a
import ravi.models
import ravi.runtime
import ravi.server
import ravi.telemetry
import ravi.testing
import ravi.tools


def test_exported_names() -> None:
    assert ravi.__all__ == [
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
    assert ravi.runtime.__all__ == ["BaseRuntime", "LocalRuntime"]
    assert ravi.testing.__all__ == [
        "ConformanceAgent",
        "Jaeger",
        "NodeProcess",
        "RestateServer",
        "conformance_setup",
        "eventually",
        "ravi_command",
        "running_jaeger",
        "running_node",
        "running_restate",
        "start_node",
    ]
    assert ravi.agents.__all__ == [
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
    assert ravi.models.__all__ == [
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
    assert ravi.tools.__all__ == ["Tool", "ToolContext", "render", "tool"]
    assert ravi.server.__all__ == [
        "RaviServer",
        "demo_model",
        "demo_setup",
        "demo_workflow_setup",
    ]
    assert ravi.telemetry.__all__ == [
        "MetricsInterceptor",
        "Telemetry",
        "TracingInterceptor",
        "configure",
    ]
    assert ravi.integrations.a2a.__all__ == ["A2AAgent", "A2AGateway", "ExposedAgent"]
    assert sorted(ravi.errors.__all__) == ravi.errors.__all__
    modules = (ravi, ravi.runtime, ravi.testing, ravi.errors, ravi.agents, ravi.models)
    for module in (*modules, ravi.tools, ravi.server, ravi.telemetry, ravi.integrations.a2a):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"
