"""The public API, pinned: a change to these names shows up in review."""

import ravi
import ravi.errors
import ravi.runtime
import ravi.testing


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
        "conformance_setup",
        "eventually",
        "ravi_command",
        "running_jaeger",
        "running_node",
        "start_node",
    ]
    assert sorted(ravi.errors.__all__) == ravi.errors.__all__
    for module in (ravi, ravi.runtime, ravi.testing, ravi.errors):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"
