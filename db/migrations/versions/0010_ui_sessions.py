"""Sign-in sessions of the operator page (/ui/)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03

Why: the operator page signs a person in with a read (or admin) API key once, then keeps them signed in with an
HttpOnly cookie, so the key is never stored in the browser, a URL or a log. The cookie holds a random token; this
table holds only its SHA-256 hash, the key it was signed in with, the session's CSRF token and when it ends.
Sessions live in the database rather than in a signed cookie: every API process (several gunicorn workers,
several hosts) sees the same sessions with no shared secret to manage, signing out ends a session everywhere, and
revoking (or deleting) the key ends its sessions too (the lookup joins api_keys; ON DELETE CASCADE).

Cost: one new, empty, small table (a row per signed-in browser); no existing table is touched. Well under a
second on both editions. Downgrade drops the table: everyone is signed out.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ui_sessions",
        sa.Column("token_hash", sa.Text, nullable=False),
        sa.Column("key_id", sa.BigInteger, nullable=False),
        sa.Column("csrf_token", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("token_hash", name="ui_sessions_pkey"),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"], name="ui_sessions_key_id_fkey", ondelete="CASCADE"),
        sa.CheckConstraint("expires_at > created_at", name=op.f("ui_sessions_lifetime_check")),
    )
    # Expired sessions are deleted at each sign-in (db/ui_sessions.py): by this index, not a scan.
    op.create_index("ui_sessions_expires_at_idx", "ui_sessions", ["expires_at"])
    # The key's sessions, for the cascade when a key is deleted.
    op.create_index("ui_sessions_key_id_idx", "ui_sessions", ["key_id"])


def downgrade() -> None:
    op.drop_table("ui_sessions")
