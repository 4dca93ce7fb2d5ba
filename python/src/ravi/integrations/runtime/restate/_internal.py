"""The Restate objects ravi keeps its own durable records in: promises and subscriptions.

Every deployment a RestateRuntime serves includes them, so they work with any
one worker up.
"""

from __future__ import annotations

import json
from typing import Any

import restate

from ravi._subscriptions import Subscription, TypeSubscription
from ravi.integrations.runtime.restate._context import BYTES, CANCELLED_STATUS, PROMISES

SUBSCRIPTIONS = "ravi.Subscriptions"
SUBSCRIPTIONS_KEY = "all"

_BYTES_IO: dict[str, Any] = {
    "accept": "*/*",
    "content_type": "application/octet-stream",
    "input_serde": BYTES,
    "output_serde": BYTES,
}


def subscription_json(subscription: Subscription) -> dict[str, str]:
    """A subscription as the registry stores it."""
    if isinstance(subscription, TypeSubscription):
        kind, topic = "type", subscription.topic_type
    else:
        kind, topic = "prefix", subscription.topic_type_prefix
    return {
        "id": subscription.id,
        "kind": kind,
        "topic": topic,
        "agent_type": subscription.agent_type,
    }


def internal_services() -> list[restate.VirtualObject]:
    """The promise registry and the subscription registry."""
    promises = restate.VirtualObject(
        PROMISES, description="ravi promises by name: the awakeable a handler waits on."
    )

    @promises.handler("wait", **_BYTES_IO)
    async def wait(ctx: restate.ObjectContext, awakeable_id: bytes) -> bytes:
        """Register the awakeable waiting for this promise; return the value if resolved."""
        value = await ctx.get("value", serde=BYTES)
        if value is not None:
            return value
        ctx.set("awakeable", awakeable_id, serde=BYTES)
        return b""

    @promises.handler("resolve", **_BYTES_IO)
    async def resolve(ctx: restate.ObjectContext, value: bytes) -> bytes:
        """Resolve the promise once: wake its waiter, or keep the value for one to come."""
        if await ctx.get("resolved", serde=BYTES) is not None:
            raise restate.TerminalError(
                f"promise {ctx.key()!r} is resolved already", CANCELLED_STATUS
            )
        ctx.set("resolved", b"1", serde=BYTES)
        ctx.set("value", value, serde=BYTES)
        awakeable_id = await ctx.get("awakeable", serde=BYTES)
        if awakeable_id is not None:
            ctx.resolve_awakeable(awakeable_id.decode(), value, serde=BYTES)
        return b""

    subscriptions = restate.VirtualObject(
        SUBSCRIPTIONS, description="ravi subscriptions: which agent types get which topics."
    )

    async def stored(ctx: restate.ObjectContext | restate.ObjectSharedContext) -> list[Any]:
        data = await ctx.get("all", serde=BYTES)
        entries: list[Any] = json.loads(data) if data else []
        return entries

    @subscriptions.handler("add", **_BYTES_IO)
    async def add(ctx: restate.ObjectContext, data: bytes) -> bytes:
        """Add a subscription and answer its id.

        An equal one (same kind, topic and agent type, added by an earlier run
        of a worker) is kept, with its id.
        """
        new = json.loads(data)
        entries = await stored(ctx)
        same = ("kind", "topic", "agent_type")
        for entry in entries:
            if all(entry[k] == new[k] for k in same):
                return str(entry["id"]).encode()
        entries.append(new)
        ctx.set("all", json.dumps(entries).encode(), serde=BYTES)
        return str(new["id"]).encode()

    @subscriptions.handler("remove", **_BYTES_IO)
    async def remove(ctx: restate.ObjectContext, data: bytes) -> bytes:
        """Remove the subscription with this id; answers "removed" or "absent"."""
        subscription_id = data.decode()
        entries = await stored(ctx)
        kept = [e for e in entries if e["id"] != subscription_id]
        if len(kept) == len(entries):
            return b"absent"
        ctx.set("all", json.dumps(kept).encode(), serde=BYTES)
        return b"removed"

    @subscriptions.handler("list", kind="shared", **_BYTES_IO)
    async def listed(ctx: restate.ObjectSharedContext, _data: bytes) -> bytes:
        """Every subscription, as JSON."""
        return json.dumps(await stored(ctx)).encode()

    return [promises, subscriptions]
