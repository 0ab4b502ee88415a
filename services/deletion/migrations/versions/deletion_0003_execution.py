"""Execution and verification: task acknowledgements, webhook systems and deliveries,
verification results, and what a case still misses.

- ``cases.execution``: the case's tasks with their states, its last verification and what
  is missing, kept in the same transactions that change them (``GET /cases/{id}`` shows it).
- ``tasks``: the executor kind (``builtin``: consumes ``deletion.tasks.v1``; ``webhook``:
  a signed HTTP callback), the acknowledgement's outcome and reason, and the webhook
  delivery state (deliveries made, when the next is due, when one was accepted, last error).
  ``state`` is ``pending``, ``done``, ``failed`` or ``not_applicable``. A re-sent task
  keeps its row with a new ``task_id`` and ``attempt``.
- ``task_deliveries``: every webhook delivery attempt (append-only), with what answered.
- ``webhook_systems``: external systems, their callback URL, their signing secret and the
  case kinds they take part in.
- ``case_verifications``: per case in verification, the next check, attempts and results.

Revision ID: deletion_0003
Revises: deletion_0002
Create Date: 2026-11-27
"""

from services.runtime.migrate import execute_script

revision = "deletion_0003"
down_revision = "deletion_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("""
    ALTER TABLE cases ADD COLUMN execution jsonb;

    ALTER TABLE tasks
        ADD COLUMN executor         text        NOT NULL DEFAULT 'builtin',
        ADD COLUMN outcome          text,
        ADD COLUMN reason           text        NOT NULL DEFAULT '',
        ADD COLUMN deliveries       integer     NOT NULL DEFAULT 0,
        ADD COLUMN next_delivery_at timestamptz,
        ADD COLUMN delivered_at     timestamptz,
        ADD COLUMN last_error       text;
    CREATE INDEX tasks_due_deliveries ON tasks (next_delivery_at)
        WHERE executor = 'webhook' AND state = 'pending' AND delivered_at IS NULL;

    CREATE TABLE task_deliveries (
        delivery_id   bigserial PRIMARY KEY,
        task_id       uuid        NOT NULL,
        case_id       uuid        NOT NULL REFERENCES cases,
        target_system text        NOT NULL,
        task_attempt  integer     NOT NULL,
        delivery      integer     NOT NULL,
        at            timestamptz NOT NULL,
        status_code   integer,
        error         text,
        answer        jsonb,
        duration_ms   integer     NOT NULL
    );
    CREATE INDEX task_deliveries_case ON task_deliveries (case_id, delivery_id);

    CREATE TABLE webhook_systems (
        system        text PRIMARY KEY,
        url           text        NOT NULL,
        secret        text        NOT NULL,
        case_kinds    text[]      NOT NULL,
        enabled       boolean     NOT NULL DEFAULT true,
        registered_by text        NOT NULL,
        registered_at timestamptz NOT NULL,
        updated_at    timestamptz NOT NULL
    );

    CREATE TABLE case_verifications (
        case_id       uuid PRIMARY KEY REFERENCES cases,
        attempts      integer     NOT NULL DEFAULT 0,
        next_check_at timestamptz NOT NULL,
        checked_at    timestamptz,
        confirmed     boolean,
        results       jsonb
    );
    CREATE INDEX case_verifications_due ON case_verifications (next_check_at);
    """)


def downgrade() -> None:
    execute_script("""
    DROP TABLE case_verifications;
    DROP TABLE webhook_systems;
    DROP TABLE task_deliveries;
    DROP INDEX tasks_due_deliveries;
    ALTER TABLE tasks
        DROP COLUMN executor, DROP COLUMN outcome, DROP COLUMN reason, DROP COLUMN deliveries,
        DROP COLUMN next_delivery_at, DROP COLUMN delivered_at, DROP COLUMN last_error;
    ALTER TABLE cases DROP COLUMN execution;
    """)
