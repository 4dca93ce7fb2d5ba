"""SQL on Restate's state and invocations, through the admin API: reads that need no worker."""

from __future__ import annotations

from typing import Any

import aiohttp

from ravi.errors import Unavailable


async def query(
    http: aiohttp.ClientSession, admin_url: str, sql: str, timeout: float | None = None
) -> list[dict[str, Any]]:
    """The rows of `sql` (Restate's query API: DataFusion SQL over `state`, `sys_invocation`, ...).

    Raises:
        Unavailable: the admin API cannot be reached, or refused the query.
    """
    try:
        async with http.post(
            f"{admin_url}/query",
            json={"query": sql},
            headers={"accept": "application/json"},
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            if response.status != 200:
                text = await response.text()
                raise Unavailable(f"Restate's query API answered {response.status}: {text}")
            rows: list[dict[str, Any]] = (await response.json())["rows"]
            return rows
    except (aiohttp.ClientError, TimeoutError) as error:
        raise Unavailable(
            f"Restate's admin API at {admin_url} is unreachable: {error or 'no answer in time'}"
        ) from None


def literal(value: str) -> str:
    """`value` as an SQL string literal (keys and ids come from users)."""
    return "'" + value.replace("'", "''") + "'"
