"""The latest time of use of any sealed version, one index probe away.

A consent batch skips the subjects whose new events are all grants effective after it
(``domain.findings.grant_changes_nothing``): it asks ``max(used_at)`` of the sealed
versions once per batch, which this partial index answers from its last entry.

Revision ID: registry_0005
Revises: registry_0004
Create Date: 2026-11-26
"""

from services.runtime.migrate import execute_script

revision = "registry_0005"
down_revision = "registry_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("""
    CREATE INDEX dataset_versions_sealed_used_at ON dataset_versions (used_at)
        WHERE sealed_at IS NOT NULL;
    """)


def downgrade() -> None:
    execute_script("DROP INDEX dataset_versions_sealed_used_at;")
