"""Lineage graph for traversal: integer node ids and version-to-version edges.

``run_io`` stays what the rest of the code reads and writes; two tables derived from it,
kept by triggers in the same transaction, make traversal index-only and cheap:

- ``lineage_nodes``: one integer ``node_id`` per dataset/model version
  (namespace, name, version); ``is_model`` once any run named it a model.
  ``run_io.node_id`` is set from it on insert (BEFORE INSERT trigger).
- ``lineage_edges``: one row per (input version, run, output version) of every run:
  the run read ``src`` and wrote ``dst``. ``seen_at`` is the later of the two ``run_io``
  rows' ``seen_at`` (the edge exists "as of" a time once both were reported);
  ``src_is_model``/``dst_is_model`` are those rows' own ``is_model``. Kept by AFTER
  INSERT/UPDATE triggers on ``run_io``.

Each hop of a walk is then one probe of a small covering index (``lineage_edges_pkey``
downstream, ``lineage_edges_up`` upstream) instead of two probes of ``run_io``'s wide text
keys (measured in ``bench/lineage_graph.py``). A run with *i* inputs and *o* outputs gives
*i* times *o* edges: fine for training runs (a few outputs), to be watched for runs that write
hundreds of versions at once.

Revision ID: lineage_0004
Revises: lineage_0003
Create Date: 2026-11-26
"""

from services.runtime.migrate import execute_script

revision = "lineage_0004"
down_revision = "lineage_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("""
    CREATE TABLE lineage_nodes (
        node_id   integer GENERATED ALWAYS AS IDENTITY,
        namespace text COLLATE "C" NOT NULL,
        name      text COLLATE "C" NOT NULL,
        version   text COLLATE "C" NOT NULL,
        is_model  boolean NOT NULL,
        CONSTRAINT lineage_nodes_pkey PRIMARY KEY (node_id)
            INCLUDE (namespace, name, version, is_model),
        CONSTRAINT lineage_nodes_identity UNIQUE (namespace, name, version)
            INCLUDE (node_id, is_model)
    );

    CREATE TABLE lineage_edges (
        src          integer     NOT NULL,
        run_id       uuid        NOT NULL,
        dst          integer     NOT NULL,
        seen_at      timestamptz NOT NULL,
        src_is_model boolean     NOT NULL,
        dst_is_model boolean     NOT NULL,
        CONSTRAINT lineage_edges_pkey PRIMARY KEY (src, run_id, dst)
            INCLUDE (seen_at, src_is_model, dst_is_model)
    );
    CREATE INDEX lineage_edges_up ON lineage_edges (dst, run_id, src)
        INCLUDE (seen_at, src_is_model, dst_is_model);

    -- Backfill from what run_io holds.
    INSERT INTO lineage_nodes (namespace, name, version, is_model)
    SELECT namespace, name, version, bool_or(is_model) FROM run_io
    GROUP BY namespace, name, version ORDER BY namespace, name, version;
    ALTER TABLE run_io ADD COLUMN node_id integer;
    UPDATE run_io io SET node_id = n.node_id FROM lineage_nodes n
    WHERE (n.namespace, n.name, n.version) = (io.namespace, io.name, io.version);
    ALTER TABLE run_io ALTER COLUMN node_id SET NOT NULL;
    INSERT INTO lineage_edges (src, run_id, dst, seen_at, src_is_model, dst_is_model)
    SELECT i.node_id, i.run_id, o.node_id, greatest(i.seen_at, o.seen_at), i.is_model,
           o.is_model
    FROM run_io i JOIN run_io o ON o.run_id = i.run_id AND o.direction = 'output'
    WHERE i.direction = 'input'
    ON CONFLICT DO NOTHING;

    -- A run's versions by direction with their node ids (walks starting at a run or job).
    CREATE INDEX run_io_run_nodes ON run_io (run_id, direction) INCLUDE (node_id, seen_at);
    CREATE INDEX runs_job ON runs (job_namespace, job_name) INCLUDE (run_id);

    CREATE FUNCTION lineage_node_id() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        known_model boolean;
    BEGIN
        SELECT node_id, is_model INTO NEW.node_id, known_model FROM lineage_nodes
        WHERE namespace = NEW.namespace AND name = NEW.name AND version = NEW.version;
        IF NOT FOUND THEN
            INSERT INTO lineage_nodes (namespace, name, version, is_model)
            VALUES (NEW.namespace, NEW.name, NEW.version, NEW.is_model)
            ON CONFLICT (namespace, name, version) DO UPDATE
                SET is_model = lineage_nodes.is_model OR excluded.is_model
            RETURNING node_id INTO NEW.node_id;
        ELSIF NEW.is_model AND NOT known_model THEN
            UPDATE lineage_nodes SET is_model = true WHERE node_id = NEW.node_id;
        END IF;
        RETURN NEW;
    END $$;

    CREATE FUNCTION lineage_edges_insert() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.direction = 'input' THEN
            INSERT INTO lineage_edges (src, run_id, dst, seen_at, src_is_model, dst_is_model)
            SELECT NEW.node_id, NEW.run_id, o.node_id, greatest(NEW.seen_at, o.seen_at),
                   NEW.is_model, o.is_model
            FROM run_io o WHERE o.run_id = NEW.run_id AND o.direction = 'output'
            ON CONFLICT DO NOTHING;
        ELSE
            INSERT INTO lineage_edges (src, run_id, dst, seen_at, src_is_model, dst_is_model)
            SELECT i.node_id, NEW.run_id, NEW.node_id, greatest(i.seen_at, NEW.seen_at),
                   i.is_model, NEW.is_model
            FROM run_io i WHERE i.run_id = NEW.run_id AND i.direction = 'input'
            ON CONFLICT DO NOTHING;
        END IF;
        RETURN NULL;
    END $$;

    CREATE FUNCTION lineage_edges_seen() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.direction = 'input' THEN
            UPDATE lineage_edges e SET seen_at = greatest(NEW.seen_at, o.seen_at)
            FROM run_io o
            WHERE e.src = NEW.node_id AND e.run_id = NEW.run_id
              AND o.run_id = NEW.run_id AND o.direction = 'output' AND o.node_id = e.dst;
        ELSE
            UPDATE lineage_edges e SET seen_at = greatest(i.seen_at, NEW.seen_at)
            FROM run_io i
            WHERE e.dst = NEW.node_id AND e.run_id = NEW.run_id
              AND i.run_id = NEW.run_id AND i.direction = 'input' AND i.node_id = e.src;
        END IF;
        RETURN NULL;
    END $$;

    CREATE TRIGGER run_io_node_id BEFORE INSERT ON run_io
        FOR EACH ROW EXECUTE FUNCTION lineage_node_id();
    CREATE TRIGGER run_io_edges_insert AFTER INSERT ON run_io
        FOR EACH ROW EXECUTE FUNCTION lineage_edges_insert();
    CREATE TRIGGER run_io_edges_seen AFTER UPDATE OF seen_at ON run_io
        FOR EACH ROW WHEN (OLD.seen_at IS DISTINCT FROM NEW.seen_at)
        EXECUTE FUNCTION lineage_edges_seen();
    """)


def downgrade() -> None:
    execute_script("""
    DROP TRIGGER run_io_edges_seen ON run_io;
    DROP TRIGGER run_io_edges_insert ON run_io;
    DROP TRIGGER run_io_node_id ON run_io;
    DROP FUNCTION lineage_edges_seen();
    DROP FUNCTION lineage_edges_insert();
    DROP FUNCTION lineage_node_id();
    DROP INDEX runs_job;
    DROP INDEX run_io_run_nodes;
    ALTER TABLE run_io DROP COLUMN node_id;
    DROP TABLE lineage_edges;
    DROP TABLE lineage_nodes;
    """)
