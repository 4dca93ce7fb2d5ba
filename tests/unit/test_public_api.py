"""The public API, pinned: a change to these names shows up in review."""

import dataclasses

import ravi
import ravi.agents
import ravi.errors
import ravi.integrations.a2a
import ravi.integrations.runtime.grpc
import ravi.integrations.runtime.restate
import ravi.models
import ravi.runtime
import ravi.server
import ravi.state
import ravi.telemetry
import ravi.testing
import ravi.tools


def test_exported_names() -> None:
    assert ravi.__all__ == [
        "ActivateInput",
        "AgentId",
        "AgentType",
        "BaseAgent",
        "CancellationToken",
        "ForwardInput",
        "HandleInput",
        "Interceptor",
        "MessageContext",
        "MessageRegistry",
        "PassivateInput",
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
    assert ravi.state.__all__ == [
        "MemoryStore",
        "PostgresStore",
        "SqliteStore",
        "StateStore",
        "StoredState",
        "open_store",
    ]
    assert ravi.testing.__all__ == [
        "ConformanceAgent",
        "CounterAgent",
        "Jaeger",
        "NodeProcess",
        "PostgresServer",
        "RestateServer",
        "conformance_setup",
        "counter_setup",
        "eventually",
        "ravi_command",
        "running_jaeger",
        "running_node",
        "running_postgres",
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
        "Answered",
        "RaviServer",
        "RestateThreads",
        "RunSummary",
        "RuntimeThreads",
        "ThreadService",
        "ThreadStore",
        "ThreadSummary",
        "demo_model",
        "demo_setup",
        "demo_workflow_setup",
        "event_json",
        "restate_setup",
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
    for module in (
        *modules,
        ravi.tools,
        ravi.server,
        ravi.telemetry,
        ravi.state,
        ravi.integrations.a2a,
    ):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def _public(cls: type) -> list[str]:
    return sorted(name for name in dir(cls) if not name.startswith("_"))


BASE_RUNTIME = [
    "add_subscription",
    "agent_load_state",
    "agent_save_state",
    "load_state",
    "publish_message",
    "register_factory",
    "remove_subscription",
    "resolve_promise",
    "save_state",
    "send_message",
    "start",
    "stop",
    "stop_when_idle",
    "wait_until_ready",
]


def test_base_runtime_methods() -> None:
    assert _public(ravi.runtime.BaseRuntime) == BASE_RUNTIME


def test_grpc_runtime_is_a_facade() -> None:
    grpc = ravi.integrations.runtime.grpc
    assert grpc.__all__ == ["GrpcRuntime", "GrpcRuntimeOptions", "PeerDiscovery"]
    # BaseRuntime's methods, plus the node's identity, its peers and readiness:
    # whatever the gRPC server calls goes through the mesh node's NodeHandler.
    extra = [
        "active_agents",
        "address",
        "mailbox_depths",
        "node_id",
        "peers",
        "port",
        "wait_for_peers",
    ]
    assert _public(grpc.GrpcRuntime) == sorted(BASE_RUNTIME + extra)
    assert not [name for name in dir(grpc.GrpcRuntime) if name.startswith("serve")]
    assert [f.name for f in dataclasses.fields(grpc.GrpcRuntimeOptions)] == [
        "node_id",
        "advertise",
        "token",
        "peer_token",
        "health_without_auth",
        "tls_cert",
        "tls_key",
        "tls_client_ca",
        "peer_tls_ca",
        "peer_tls_cert",
        "peer_tls_key",
        "peer_tls_server_name",
        "default_timeout",
        "mailbox_capacity",
        "max_message_bytes",
        "grace_period",
        "keepalive_time",
        "keepalive_timeout",
        "idle_timeout",
        "max_active_agents",
        "checkpoint",
        "state_store",
        "data_dir",
    ]


def test_restate_package() -> None:
    restate = ravi.integrations.runtime.restate
    assert restate.__all__ == [
        "AgentWorkflow",
        "RestateRuntime",
        "RestateSettings",
        "RestateWorkflowClient",
    ]
    extra = ["add_service", "message_registry", "running"]
    assert _public(restate.RestateRuntime) == sorted(BASE_RUNTIME + extra)
    assert not [name for name in dir(restate.RestateRuntime) if name.startswith("serve")]
