"""Propagation state: the findings projection, flag lifecycle, model status, as-of times.

- ``findings``: the latest state of every dataset finding received (``registry.findings.v1``):
  a run reported later finds the active findings upstream of its inputs here, and a model's
  status lists ``exclude_from_future`` findings upstream as notes.
- ``model_flags``: flags now have a lifecycle (``active`` → ``retracted`` when the finding is
  retracted), looked up by finding.
- ``run_io.seen_at``: the event time of the first event naming that input or output (the
  graph "as of" a time keeps only what had been reported by then); key columns compare
  bytewise (``COLLATE "C"``: opaque names, cheaper index comparisons).
- ``model_status`` / ``model_status_history``: what ML teams and the deletion service set
  (``quarantined``, ``destroyed``, ``superseded``, or back to ``active``), with who and why.

Revision ID: lineage_0002
Revises: lineage_0001
Create Date: 2026-11-26
"""

from services.runtime.migrate import execute_script

revision = "lineage_0002"
down_revision = "lineage_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("""
    CREATE TABLE findings (
        finding_id uuid PRIMARY KEY,
        namespace  text COLLATE "C" NOT NULL,
        name       text COLLATE "C" NOT NULL,
        version    text COLLATE "C" NOT NULL,
        severity   text        NOT NULL,
        status     text        NOT NULL,
        body       jsonb       NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX findings_dataset ON findings (namespace, name, version) WHERE status = 'active';

    ALTER TABLE model_flags
        ALTER COLUMN namespace TYPE text COLLATE "C",
        ALTER COLUMN name TYPE text COLLATE "C",
        ALTER COLUMN version TYPE text COLLATE "C",
        ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();
    CREATE INDEX model_flags_finding ON model_flags (finding_id);

    ALTER TABLE run_io
        ALTER COLUMN namespace TYPE text COLLATE "C",
        ALTER COLUMN name TYPE text COLLATE "C",
        ALTER COLUMN version TYPE text COLLATE "C",
        ADD COLUMN seen_at timestamptz;
    UPDATE run_io io SET seen_at = coalesce(
        (SELECT min(e.event_time) FROM openlineage_events e WHERE e.run_id = io.run_id), now());
    ALTER TABLE run_io ALTER COLUMN seen_at SET NOT NULL;
    DROP INDEX run_io_by_dataset;
    CREATE INDEX run_io_by_dataset ON run_io (namespace, name, version, direction)
        INCLUDE (run_id, is_model, seen_at);

    ALTER TABLE runs
        ADD COLUMN started_at timestamptz,
        ADD COLUMN ended_at   timestamptz,
        ADD COLUMN state      text;

    CREATE TABLE model_status (
        namespace  text COLLATE "C" NOT NULL,
        name       text COLLATE "C" NOT NULL,
        version    text COLLATE "C" NOT NULL,
        status     text        NOT NULL,
        actor      text        NOT NULL,
        reason     text        NOT NULL,
        changed_at timestamptz NOT NULL,
        PRIMARY KEY (namespace, name, version)
    );
    CREATE TABLE model_status_history (
        seq        bigserial PRIMARY KEY,
        namespace  text        NOT NULL,
        name       text        NOT NULL,
        version    text        NOT NULL,
        status     text        NOT NULL,
        actor      text        NOT NULL,
        reason     text        NOT NULL,
        changed_at timestamptz NOT NULL
    );
    CREATE INDEX model_status_history_model ON model_status_history (namespace, name, version);
    """)


def downgrade() -> None:
    execute_script("""
    DROP TABLE model_status_history;
    DROP TABLE model_status;
    ALTER TABLE runs DROP COLUMN started_at, DROP COLUMN ended_at, DROP COLUMN state;
    DROP INDEX run_io_by_dataset;
    ALTER TABLE run_io DROP COLUMN seen_at;
    CREATE INDEX run_io_by_dataset ON run_io (namespace, name, version, direction);
    DROP INDEX model_flags_finding;
    ALTER TABLE model_flags DROP COLUMN updated_at;
    DROP TABLE findings;
    """)
