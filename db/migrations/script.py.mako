"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

Why: <say why this change is needed and what it costs to run (locks, rewrite time on a full fleet day)>.

Compatibility: the API of the previous release keeps running while this migration runs and after it.
Never rewrite a hypertable in place; add nullable columns, backfill in batches, then constrain.
"""

from alembic import op
import sqlalchemy as sa
${imports if imports else ""}

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on = ${repr(depends_on)}


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
