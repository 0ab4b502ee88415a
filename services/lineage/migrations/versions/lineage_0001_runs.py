"""Raw OpenLineage events, run-level inputs/outputs, model flags.

Revision ID: lineage_0001
Revises:
Create Date: 2026-11-25
"""

from services.runtime.migrate import execute_script

revision = "lineage_0001"
down_revision = None
branch_labels = ("lineage",)
depends_on = "runtime_0001"


def upgrade() -> None:
    execute_script("""
    CREATE TABLE openlineage_events (
        event_digest text PRIMARY KEY,
        run_id       uuid        NOT NULL,
        event_type   text,
        event_time   timestamptz NOT NULL,
        received_at  timestamptz NOT NULL DEFAULT now(),
        raw          jsonb       NOT NULL
    );
    CREATE INDEX openlineage_events_run ON openlineage_events (run_id);

    CREATE TABLE runs (
        run_id        uuid PRIMARY KEY,
        job_namespace text        NOT NULL,
        job_name      text        NOT NULL,
        first_seen    timestamptz NOT NULL DEFAULT now()
    );

    -- One row per (run, direction, dataset version): the graph at version level.
    CREATE TABLE run_io (
        run_id    uuid    NOT NULL REFERENCES runs,
        direction text    NOT NULL CHECK (direction IN ('input', 'output')),
        namespace text    NOT NULL,
        name      text    NOT NULL,
        version   text    NOT NULL,
        is_model  boolean NOT NULL,
        PRIMARY KEY (run_id, direction, namespace, name, version)
    );
    CREATE INDEX run_io_by_dataset ON run_io (namespace, name, version, direction);

    CREATE TABLE model_flags (
        flag_id    uuid PRIMARY KEY,
        namespace  text        NOT NULL,
        name       text        NOT NULL,
        version    text        NOT NULL,
        finding_id uuid        NOT NULL,
        severity   text        NOT NULL,
        status     text        NOT NULL,
        body       jsonb       NOT NULL,
        trace_id   text,
        recorded_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX model_flags_model ON model_flags (namespace, name, version);
    """)


def downgrade() -> None:
    execute_script(
        "DROP TABLE model_flags; DROP TABLE run_io; DROP TABLE runs; DROP TABLE openlineage_events;"
    )
