"""Orphans: sessions a crashed request created and never deleted. Find them by age, delete them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from copilot import CopilotClient


def _keep_none(session_id: str) -> bool:
    return False


async def find_orphans(
    client: CopilotClient, older_than_s: float, keep: Callable[[str], bool] = _keep_none
) -> list[str]:
    """Ids of sessions not modified for ``older_than_s`` seconds, except those ``keep`` names."""
    now = datetime.now(UTC)
    found = []
    for meta in await client.list_sessions():
        modified = meta.modified_time
        if modified.tzinfo is None:
            modified = modified.replace(tzinfo=UTC)
        if (now - modified).total_seconds() > older_than_s and not keep(meta.session_id):
            found.append(meta.session_id)
    return found


async def sweep(
    client: CopilotClient, older_than_s: float, keep: Callable[[str], bool] = _keep_none
) -> list[str]:
    """Delete the orphans ``find_orphans`` names; return their ids."""
    orphans = await find_orphans(client, older_than_s, keep)
    for session_id in orphans:
        await client.delete_session(session_id)
    return orphans
