"""The projected consent event as ``json`` (its text, syntax-checked), not ``jsonb``.

The registry only ever reads the whole event back as text (``histories``), never a path
inside it, so decomposing it into ``jsonb`` on every insert was work for nothing: a fifth
of Postgres's CPU per projected event (``bench/consent_findings.py``). Rows keep their
content; the column is rewritten once.

Revision ID: registry_0006
Revises: registry_0005
Create Date: 2026-11-26
"""

from services.runtime.migrate import execute_script

revision = "registry_0006"
down_revision = "registry_0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("ALTER TABLE consent_projection ALTER COLUMN event TYPE json USING event::json;")


def downgrade() -> None:
    execute_script(
        "ALTER TABLE consent_projection ALTER COLUMN event TYPE jsonb USING event::jsonb;"
    )
