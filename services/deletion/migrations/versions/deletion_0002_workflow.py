"""The case workflow: state-machine fields, deadline extensions, evidence log, tasks.

- ``cases``: what the state machine needs (``held_from``, ``failed_step``,
  ``irreversible_started``, ``approved_by``), the deadline's extension (one per regime, with
  its reason), the frozen scope's resolution (``targets``) and a version for optimistic
  concurrency (two people acting at once: the second gets 409, not a lost update).
- ``case_evidence``: the hash-chained log (``services.deletion.domain.evidence``), append-only
  (a trigger refuses UPDATE and DELETE).
- ``tasks``: one per (case, target system, action); its state follows acknowledgements.

Revision ID: deletion_0002
Revises: deletion_0001
Create Date: 2026-11-26
"""

from services.runtime.migrate import execute_script

revision = "deletion_0002"
down_revision = "deletion_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("""
    ALTER TABLE cases
        ADD COLUMN held_from            text,
        ADD COLUMN failed_step          text,
        ADD COLUMN irreversible_started boolean     NOT NULL DEFAULT false,
        ADD COLUMN approved_by          text,
        ADD COLUMN original_deadline    timestamptz,
        ADD COLUMN extension_reason     text,
        ADD COLUMN targets              jsonb,
        ADD COLUMN version              integer     NOT NULL DEFAULT 1,
        ADD COLUMN updated_at           timestamptz NOT NULL DEFAULT now();
    UPDATE cases SET original_deadline = deadline;
    ALTER TABLE cases ALTER COLUMN original_deadline SET NOT NULL;

    CREATE TABLE case_evidence (
        case_id uuid    NOT NULL REFERENCES cases,
        seq     integer NOT NULL,
        hash    text    NOT NULL,
        entry   jsonb   NOT NULL,
        PRIMARY KEY (case_id, seq)
    );
    CREATE FUNCTION case_evidence_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'case_evidence is append-only (% refused)', TG_OP;
    END $$;
    CREATE TRIGGER case_evidence_append_only BEFORE UPDATE OR DELETE ON case_evidence
        FOR EACH ROW EXECUTE FUNCTION case_evidence_append_only();

    CREATE TABLE tasks (
        task_id       uuid PRIMARY KEY,
        case_id       uuid        NOT NULL REFERENCES cases,
        target_system text        NOT NULL,
        action        text        NOT NULL,
        targets       jsonb       NOT NULL,
        parameters    jsonb       NOT NULL,
        state         text        NOT NULL,
        attempt       integer     NOT NULL DEFAULT 1,
        issued_at     timestamptz NOT NULL,
        acknowledged_at timestamptz,
        result        jsonb,
        UNIQUE (case_id, target_system, action)
    );
    CREATE INDEX tasks_case ON tasks (case_id);
    """)


def downgrade() -> None:
    execute_script("""
    DROP TABLE tasks;
    DROP TRIGGER case_evidence_append_only ON case_evidence;
    DROP FUNCTION case_evidence_append_only();
    DROP TABLE case_evidence;
    ALTER TABLE cases
        DROP COLUMN held_from, DROP COLUMN failed_step, DROP COLUMN irreversible_started,
        DROP COLUMN approved_by, DROP COLUMN original_deadline, DROP COLUMN extension_reason,
        DROP COLUMN targets, DROP COLUMN version, DROP COLUMN updated_at;
    """)
