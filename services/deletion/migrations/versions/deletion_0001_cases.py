"""Deletion cases and their audited state history.

Revision ID: deletion_0001
Revises:
Create Date: 2026-11-25
"""

from services.runtime.migrate import execute_script

revision = "deletion_0001"
down_revision = None
branch_labels = ("deletion",)
depends_on = "runtime_0001"


def upgrade() -> None:
    execute_script("""
    CREATE TABLE cases (
        case_id     uuid PRIMARY KEY,
        kind        text        NOT NULL,
        state       text        NOT NULL,
        cause_key   text        NOT NULL UNIQUE,
        legal_basis text        NOT NULL,
        regime      text        NOT NULL,
        requester   text        NOT NULL,
        received_at timestamptz NOT NULL,
        deadline    timestamptz NOT NULL,
        scope       jsonb       NOT NULL,
        trace_id    text,
        created_at  timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX cases_open_by_deadline ON cases (deadline)
        WHERE state NOT IN ('completed', 'rejected', 'canceled');

    CREATE TABLE case_history (
        case_id    uuid        NOT NULL REFERENCES cases,
        seq        integer     NOT NULL,
        from_state text,
        to_state   text        NOT NULL,
        actor      text        NOT NULL,
        reason     text        NOT NULL,
        at         timestamptz NOT NULL,
        PRIMARY KEY (case_id, seq)
    );
    """)


def downgrade() -> None:
    execute_script("DROP TABLE case_history; DROP TABLE cases;")
