"""Deleting a user: what goes, and what stays as a billing record.

Gone: their conversations (sessions, session files, leases, idempotency keys), their files, their
sign-in tokens, their budget and rate rows. Kept: their ledger rows (user, conversation id, model,
tokens, cost, time: what was used, with no content) and their audit rows with the content removed
(arguments and reasons blanked; tool, outcome and time stay), as the records billing and security
need. Run it while the user has no turn running (revoke their tokens first).
"""

from __future__ import annotations

from helpers.store.base import SessionStore


async def delete_user(store: SessionStore, user: str) -> dict[str, int]:
    """Delete ``user``'s content and access, keep their usage; return the rows touched by kind."""
    conversations = await store.delete_user(user)
    counts = await store.transaction(
        [
            ("DELETE FROM web_idempotency WHERE user_id = ?", (user,)),
            ("DELETE FROM user_files WHERE owner = ?", (user,)),
            ("DELETE FROM web_tokens WHERE owner = ?", (user,)),
            ("DELETE FROM usage_budget WHERE owner = ?", (user,)),
            ("DELETE FROM usage_rate WHERE owner = ?", (user,)),
            ("UPDATE tool_audit SET arguments = '', reason = '' WHERE owner = ?", (user,)),
        ]
    )
    rows, _ = await store.execute("SELECT COUNT(*) FROM usage_ledger WHERE owner = ?", (user,))
    keys = ("idempotency_keys", "files", "tokens", "budgets", "rates", "audit_rows_blanked")
    return {
        "conversations": conversations,
        **dict(zip(keys, counts, strict=True)),
        "ledger_rows_kept": int(rows[0][0]),
    }
