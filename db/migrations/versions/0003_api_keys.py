"""API keys with roles

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

Why: every API call except /health and /ready authenticates with a key, and the rate limit is counted per
key. Keys are stored as a SHA-256 hash (never the plaintext, which is shown once when the key is created)
with a short prefix for display; a role (device ingest, read, admin), an optional binding of a device key
to one device id, and a revocation time (a revoked row is kept so its prefix stays explainable in logs).

Cost: one new, empty, small table (a few rows per device at most); no existing table is touched, so no
lock is taken on live tables. Runs in well under a second on both editions.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

ROLES = ("device", "read", "admin")
# Same values as db.schema (migrations import no app code).
DEVICE_ID_MAX_LENGTH = 64
NAME_MAX_LENGTH = 200


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("key_prefix", sa.Text, nullable=False),
        # SHA-256 hex of the whole key. Keys are 32 random bytes (secrets.token_urlsafe), so a fast hash is
        # appropriate: nothing can guess 256 bits, and a slow KDF would cost every ingest request a lot of CPU.
        sa.Column("key_hash", sa.Text, nullable=False),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("device_id", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="api_keys_pkey"),
        sa.UniqueConstraint("key_hash", name="api_keys_key_hash_key"),
        sa.CheckConstraint(f"role IN {ROLES!r}", name=op.f("api_keys_role_check")),
        # Only a device key can be bound to a device; read and admin keys see the whole fleet.
        sa.CheckConstraint("device_id IS NULL OR role = 'device'", name=op.f("api_keys_device_binding_check")),
        sa.CheckConstraint(
            f"device_id IS NULL OR char_length(device_id) BETWEEN 1 AND {DEVICE_ID_MAX_LENGTH}",
            name=op.f("api_keys_device_id_length_check"),
        ),
        sa.CheckConstraint(
            f"char_length(name) BETWEEN 1 AND {NAME_MAX_LENGTH}", name=op.f("api_keys_name_length_check")
        ),
    )


def downgrade() -> None:
    op.drop_table("api_keys")
