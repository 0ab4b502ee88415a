"""Runtime tables: the inbox is pruned by age, so it needs an index on it.

Revision ID: runtime_0002
Revises: runtime_0001
Create Date: 2026-11-26
"""

from services.runtime.migrate import execute_script

revision = "runtime_0002"
down_revision = "runtime_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("CREATE INDEX inbox_processed_at ON inbox (processed_at);")


def downgrade() -> None:
    execute_script("DROP INDEX inbox_processed_at;")
