"""The agent API: handler discovery and its errors, registration, binding."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ravi import AgentId, BaseAgent, MessageContext, message_handler
from ravi.errors import AlreadyExists, FailedPrecondition, NoHandler
from ravi.runtime import LocalRuntime


@dataclass
class A:
    x: int = 0


@dataclass
class B:
    y: int = 0


@dataclass
class SubA(A):
    pass


class Mixed(A, B):
    pass


def test_handler_must_be_async() -> None:
    with pytest.raises(TypeError, match=r"message handler .*on_a must be an async def"):

        class Bad(BaseAgent):
            @message_handler  # type: ignore[type-var]
            def on_a(self, message: A, ctx: MessageContext) -> None: ...


def test_handler_must_take_self_message_ctx() -> None:
    with pytest.raises(TypeError, match=r"on_a must take exactly \(self, message, ctx\); got"):

        class Bad(BaseAgent):
            @message_handler
            async def on_a(self, message: A) -> None: ...


def test_message_parameter_needs_a_type_hint() -> None:
    with pytest.raises(TypeError, match=r"Bad\.on_a: the message parameter 'message' needs"):

        class Bad(BaseAgent):
            @message_handler
            async def on_a(self, message, ctx: MessageContext) -> None:  # type: ignore[no-untyped-def]
                ...


def test_message_type_must_be_a_class() -> None:
    with pytest.raises(TypeError, match=r"Bad\.on_a: the message type must be a class"):

        class Bad(BaseAgent):
            @message_handler
            async def on_a(self, message: list[int], ctx: MessageContext) -> None: ...


def test_context_parameter_must_be_a_message_context() -> None:
    with pytest.raises(TypeError, match=r"Bad\.on_a: the context parameter must be"):

        class Bad(BaseAgent):
            @message_handler
            async def on_a(self, message: A, ctx: int) -> None: ...


def test_unresolvable_hint_names_the_method() -> None:
    with pytest.raises(TypeError, match=r"Bad\.on_a: cannot resolve its type hints"):

        class Bad(BaseAgent):
            @message_handler
            async def on_a(self, message: Missing, ctx: MessageContext) -> None: ...  # type: ignore[name-defined] # noqa: F821


def test_two_handlers_for_one_type_are_an_error() -> None:
    with pytest.raises(TypeError, match=r"Bad has two handlers for A: on_a and on_again"):

        class Bad(BaseAgent):
            @message_handler
            async def on_a(self, message: A, ctx: MessageContext) -> None: ...

            @message_handler
            async def on_again(self, message: A, ctx: MessageContext) -> None: ...


def test_subclass_must_override_not_duplicate_a_handler() -> None:
    class Parent(BaseAgent):
        @message_handler
        async def on_a(self, message: A, ctx: MessageContext) -> str:
            return "parent"

    with pytest.raises(TypeError, match=r"Child\.on_other handles A, which the inherited handler"):

        class Child(Parent):
            @message_handler
            async def on_other(self, message: A, ctx: MessageContext) -> str:
                return "child"


def test_union_hint_handles_each_member_and_overrides_route_to_the_subclass() -> None:
    class Parent(BaseAgent):
        @message_handler
        async def on_any(self, message: A | B, ctx: MessageContext) -> str:
            return "parent"

    class Child(Parent):
        async def on_any(self, message: A | B, ctx: MessageContext) -> str:  # plain override
            return "child"

    assert set(Parent.handled_types()) == {A, B}
    assert Child._ravi_lookup(A) is Child.on_any
    assert Child._ravi_lookup(SubA) is Child.on_any


def test_nearest_base_handler_wins_and_unrelated_bases_are_ambiguous() -> None:
    class Agent(BaseAgent):
        @message_handler
        async def on_a(self, message: A, ctx: MessageContext) -> str:
            return "a"

        @message_handler
        async def on_b(self, message: B, ctx: MessageContext) -> str:
            return "b"

    assert Agent._ravi_lookup(SubA) is Agent.on_a
    with pytest.raises(NoHandler, match=r"Mixed matches handlers of several unrelated base"):
        Agent._ravi_lookup(Mixed)
    with pytest.raises(NoHandler, match=r"has no handler for int"):
        Agent._ravi_lookup(int)


class NeedsArgs(BaseAgent):
    def __init__(self, name: str) -> None:
        self.name = name

    @message_handler
    async def on_a(self, message: A, ctx: MessageContext) -> str:
        return self.name


async def test_register_without_factory_needs_a_no_argument_constructor() -> None:
    runtime = LocalRuntime()
    with pytest.raises(TypeError, match=r"NeedsArgs\(\) needs arguments \(name\): pass a factory"):
        await NeedsArgs.register(runtime, "needs")


async def test_async_factory_and_duplicate_registration() -> None:
    async def make() -> NeedsArgs:
        return NeedsArgs("made")

    runtime = LocalRuntime()
    await NeedsArgs.register(runtime, "needs", make)
    with pytest.raises(AlreadyExists, match="registered already"):
        await NeedsArgs.register(runtime, "needs", make)
    async with runtime:
        assert await runtime.send_message(A(), AgentId("needs", "k")) == "made"


async def test_factory_returning_the_wrong_class_fails_the_call() -> None:
    runtime = LocalRuntime()
    await runtime.register_factory("wrong", BaseAgent, agent_class=NeedsArgs)
    async with runtime:
        with pytest.raises(TypeError, match=r"returned BaseAgent, not a NeedsArgs"):
            await runtime.send_message(A(), AgentId("wrong", "k"))


def test_unbound_agent_has_no_id_yet() -> None:
    agent = NeedsArgs("x")
    with pytest.raises(FailedPrecondition, match="not bound to a runtime yet"):
        _ = agent.id
    with pytest.raises(FailedPrecondition):
        _ = agent.runtime
