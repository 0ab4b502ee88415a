"""Graph change log: what the in-memory lineage graph must re-read, in commit order.

Each service process keeps a copy of the lineage graph "now" in memory for fast answers
(``domain/graph_index.py``). To stay current it asks, before each answer, which version
nodes and runs changed in transactions committed since its last look. Triggers on every
table the answer reads log those keys here, stamped with the writing transaction's id.

Why transaction ids rather than a sequence: a sequence number is taken before commit, so a
reader can see number 11 committed while 10 is still in flight, and skip it for good. A
reader instead keeps the database snapshot of its last look and asks for rows whose
transaction is visible in the current snapshot but was not in that one
(``pg_visible_in_snapshot``): exact whatever the commit order. Rows older than the
retention are pruned; ``graph_changes_pruned_txids`` remembers for a day which transactions
lost rows, so a reader whose last look did not see one of them re-reads the whole graph
instead of missing a change (``graph_changes_pruned`` keeps the newest of those forgotten
since). Not a bound on the snapshot's ``xmin`` alone: that is the oldest transaction running
anywhere on the server, other databases included, and can lag for long.

Revision ID: lineage_0005
Revises: lineage_0004
Create Date: 2026-11-26
"""

from services.runtime.migrate import execute_script

revision = "lineage_0005"
down_revision = "lineage_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("""
    CREATE TABLE graph_changes (
        txid      xid8        NOT NULL DEFAULT pg_current_xact_id(),
        logged_at timestamptz NOT NULL DEFAULT now(),
        node_id   integer,
        run_id    uuid,
        CHECK (node_id IS NOT NULL OR run_id IS NOT NULL)
    );
    CREATE INDEX graph_changes_txid ON graph_changes (txid);
    CREATE INDEX graph_changes_logged_at ON graph_changes (logged_at);

    -- The transactions whose change rows were pruned (kept a day), then only the newest
    -- of those forgotten in turn.
    CREATE TABLE graph_changes_pruned_txids (
        txid      xid8        PRIMARY KEY,
        pruned_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX graph_changes_pruned_txids_at ON graph_changes_pruned_txids (pruned_at);
    CREATE TABLE graph_changes_pruned (
        only_row    boolean PRIMARY KEY DEFAULT true CHECK (only_row),
        pruned_upto xid8    NOT NULL DEFAULT '0'
    );
    INSERT INTO graph_changes_pruned DEFAULT VALUES;

    -- run_io rows: the run and the version (a new version, or a new edge at either end).
    CREATE FUNCTION graph_log_run_io() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO graph_changes (node_id, run_id)
        SELECT DISTINCT node_id, run_id FROM changed;
        RETURN NULL;
    END $$;
    CREATE TRIGGER run_io_graph_log AFTER INSERT ON run_io
        REFERENCING NEW TABLE AS changed
        FOR EACH STATEMENT EXECUTE FUNCTION graph_log_run_io();

    -- runs: job, times, state.
    CREATE FUNCTION graph_log_runs() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO graph_changes (run_id) SELECT DISTINCT run_id FROM changed;
        RETURN NULL;
    END $$;
    CREATE TRIGGER runs_graph_log_insert AFTER INSERT ON runs
        REFERENCING NEW TABLE AS changed
        FOR EACH STATEMENT EXECUTE FUNCTION graph_log_runs();
    CREATE TRIGGER runs_graph_log_update AFTER UPDATE ON runs
        REFERENCING NEW TABLE AS changed
        FOR EACH STATEMENT EXECUTE FUNCTION graph_log_runs();

    -- lineage_nodes: a dataset version becoming a model (its id changes).
    CREATE FUNCTION graph_log_nodes() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO graph_changes (node_id) SELECT DISTINCT node_id FROM changed;
        RETURN NULL;
    END $$;
    CREATE TRIGGER lineage_nodes_graph_log AFTER UPDATE ON lineage_nodes
        REFERENCING NEW TABLE AS changed
        FOR EACH STATEMENT EXECUTE FUNCTION graph_log_nodes();

    -- model_flags, findings, model_status: what a version's data says (flags, findings,
    -- status), logged by the version's node id when the graph has it.
    CREATE FUNCTION graph_log_marks() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO graph_changes (node_id)
        SELECT DISTINCT n.node_id FROM changed c
        JOIN lineage_nodes n
          ON n.namespace = c.namespace AND n.name = c.name AND n.version = c.version;
        RETURN NULL;
    END $$;
    CREATE TRIGGER model_flags_graph_log_insert AFTER INSERT ON model_flags
        REFERENCING NEW TABLE AS changed
        FOR EACH STATEMENT EXECUTE FUNCTION graph_log_marks();
    CREATE TRIGGER model_flags_graph_log_update AFTER UPDATE ON model_flags
        REFERENCING NEW TABLE AS changed
        FOR EACH STATEMENT EXECUTE FUNCTION graph_log_marks();
    CREATE TRIGGER findings_graph_log_insert AFTER INSERT ON findings
        REFERENCING NEW TABLE AS changed
        FOR EACH STATEMENT EXECUTE FUNCTION graph_log_marks();
    CREATE TRIGGER findings_graph_log_update AFTER UPDATE ON findings
        REFERENCING NEW TABLE AS changed
        FOR EACH STATEMENT EXECUTE FUNCTION graph_log_marks();
    CREATE TRIGGER model_status_graph_log_insert AFTER INSERT ON model_status
        REFERENCING NEW TABLE AS changed
        FOR EACH STATEMENT EXECUTE FUNCTION graph_log_marks();
    CREATE TRIGGER model_status_graph_log_update AFTER UPDATE ON model_status
        REFERENCING NEW TABLE AS changed
        FOR EACH STATEMENT EXECUTE FUNCTION graph_log_marks();
    """)


def downgrade() -> None:
    execute_script("""
    DROP TRIGGER model_status_graph_log_update ON model_status;
    DROP TRIGGER model_status_graph_log_insert ON model_status;
    DROP TRIGGER findings_graph_log_update ON findings;
    DROP TRIGGER findings_graph_log_insert ON findings;
    DROP TRIGGER model_flags_graph_log_update ON model_flags;
    DROP TRIGGER model_flags_graph_log_insert ON model_flags;
    DROP TRIGGER lineage_nodes_graph_log ON lineage_nodes;
    DROP TRIGGER runs_graph_log_update ON runs;
    DROP TRIGGER runs_graph_log_insert ON runs;
    DROP TRIGGER run_io_graph_log ON run_io;
    DROP FUNCTION graph_log_marks();
    DROP FUNCTION graph_log_nodes();
    DROP FUNCTION graph_log_runs();
    DROP FUNCTION graph_log_run_io();
    DROP TABLE graph_changes_pruned;
    DROP TABLE graph_changes_pruned_txids;
    DROP TABLE graph_changes;
    """)
