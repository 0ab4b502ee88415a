"""The deletion service's own projection of policy versions (``consent.policies.v1``): a
withdrawal whose governing rule says ``withdrawal.erasure`` opens an erasure case.

Revision ID: deletion_0004
Revises: deletion_0003
Create Date: 2026-11-26
"""

from services.runtime.migrate import execute_script

revision = "deletion_0004"
down_revision = "deletion_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("""
    CREATE TABLE policy_versions (
        policy_id    text        NOT NULL,
        version      text        NOT NULL,
        published_at timestamptz NOT NULL,
        document     jsonb       NOT NULL,
        PRIMARY KEY (policy_id, version)
    );
    """)


def downgrade() -> None:
    execute_script("DROP TABLE policy_versions;")
