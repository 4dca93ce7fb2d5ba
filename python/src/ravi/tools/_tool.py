"""Tools: typed Python functions a model can call, with a JSON schema from pydantic."""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, get_type_hints, overload

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from ravi.errors import InvalidToolCall
from ravi.models import ToolSpec


@dataclass(frozen=True)
class ToolContext:
    """ToolContext tells a tool about the call it serves.

    A tool receives it by declaring a parameter annotated `ToolContext` (left
    out of the schema the model sees).

    Attributes:
        idempotency_key: the same every time this call runs, even when it runs
            again after a crash: pass it to payment or e-mail APIs so the side
            effect happens once.
        call_id: the model's id for the call.
        thread_id: the conversation the call belongs to.
    """

    idempotency_key: str
    call_id: str
    thread_id: str


class Tool:
    """Tool is a function a model can call; build one with `@tool`.

    Attributes:
        name: the name the model calls it by.
        description: what it does, for the model (and for the person approving).
        requires_approval: a human must approve each call before it runs.
        arguments: the pydantic model its arguments validate against.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        requires_approval: bool = False,
    ) -> None:
        self.fn = fn
        self.name = name or fn.__name__
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", self.name):
            raise ValueError(f"tool name {self.name!r} must be 1 to 64 letters, digits, '_' or '-'")
        summary, argument_docs = _parse_docstring(inspect.getdoc(fn) or "")
        self.description = description if description is not None else summary
        self.requires_approval = requires_approval
        hints = get_type_hints(fn, include_extras=True)
        fields: dict[str, Any] = {}
        self._context_parameter: str | None = None
        for parameter in inspect.signature(fn).parameters.values():
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                raise TypeError(f"tool {self.name!r}: *args and **kwargs have no schema")
            annotation = hints.get(parameter.name)
            if annotation is None:
                raise TypeError(f"tool {self.name!r}: parameter {parameter.name!r} has no type")
            if annotation is ToolContext:
                self._context_parameter = parameter.name
                continue
            default = ... if parameter.default is parameter.empty else parameter.default
            fields[parameter.name] = (
                annotation,
                _described(default, argument_docs, parameter.name),
            )
        self.arguments: type[BaseModel] = create_model(
            f"{self.name}_arguments",
            __config__=ConfigDict(extra="forbid"),
            **fields,
        )
        schema = self.arguments.model_json_schema()
        schema.pop("title", None)
        self.spec = ToolSpec(name=self.name, description=self.description, parameters=schema)

    def validate(self, arguments: Mapping[str, Any]) -> BaseModel:
        """Validate arguments against the schema.

        Raises:
            InvalidToolCall: they do not validate; the message lists each problem.
        """
        try:
            return self.arguments.model_validate(dict(arguments))
        except ValidationError as error:
            problems = [(tuple(e["loc"]), e["msg"]) for e in error.errors()]
            listed = "; ".join(
                f"{'.'.join(str(p) for p in where) or 'arguments'}: {what}"
                for where, what in problems
            )
            raise InvalidToolCall(
                f"invalid arguments for tool {self.name!r}: {listed}", problems=problems
            ) from None

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> Any:
        """Validate `arguments` and run the tool; a sync tool runs in a worker thread."""
        validated = self.validate(arguments)
        kwargs = {name: getattr(validated, name) for name in type(validated).model_fields}
        if self._context_parameter is not None:
            kwargs[self._context_parameter] = context
        if inspect.iscoroutinefunction(self.fn):
            return await self.fn(**kwargs)
        result = await asyncio.to_thread(self.fn, **kwargs)
        if inspect.isawaitable(result):
            return await result
        return result

    def __repr__(self) -> str:
        approval = ", requires_approval=True" if self.requires_approval else ""
        return f"Tool({self.name!r}{approval})"


def render(result: Any) -> str:
    """A tool's result as the model reads it: text as is, anything else as JSON."""
    if isinstance(result, str):
        return result
    if isinstance(result, BaseModel):
        return result.model_dump_json()
    return pydantic_core.to_json(result, fallback=str).decode()


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    requires_approval: bool = False,
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    requires_approval: bool = False,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Turn a typed function (sync or async) into a Tool.

    The parameters' type hints make the JSON schema (through pydantic); the
    docstring's first paragraph is the description and its Google-style
    arguments section describes the parameters. A parameter annotated
    `ToolContext` receives the call's context instead of a model argument:
    `async def send_email(to: str, subject: str, ctx: ToolContext) -> str`.

    Args:
        fn: the function (when used without parentheses).
        name: the tool's name; the function's name by default.
        description: overrides the docstring's summary.
        requires_approval: a human must approve each call before it runs.
    """

    def make(function: Callable[..., Any]) -> Tool:
        return Tool(
            function, name=name, description=description, requires_approval=requires_approval
        )

    return make(fn) if fn is not None else make


def _described(default: Any, docs: Mapping[str, str], parameter: str) -> Any:
    description = docs.get(parameter)
    return Field(default, description=description) if description else default


_ARGS_HEADER = re.compile(r"^(Args|Arguments|Parameters):\s*$")
_ARG_LINE = re.compile(r"^\s+(\*{0,2}\w+)(?:\s*\([^)]*\))?:\s*(.*)$")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The summary (first paragraph) and the Google-style `Args:` descriptions."""
    summary = " ".join(doc.split("\n\n", 1)[0].split())
    docs: dict[str, str] = {}
    inside, indent, current = False, -1, ""
    for line in doc.splitlines():
        if _ARGS_HEADER.match(line):
            inside = True
            continue
        if not inside or not line.strip():
            continue
        if not line[0].isspace():
            break  # the next section
        depth = len(line) - len(line.lstrip())
        match = _ARG_LINE.match(line)
        if match and indent in (-1, depth):
            indent, current = depth, match.group(1)
            docs[current] = match.group(2).strip()
        elif current:
            docs[current] = f"{docs[current]} {line.strip()}"
    return summary, docs
