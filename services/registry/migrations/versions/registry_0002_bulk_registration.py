"""Snapshot registration at scale: uploads, chunk bookkeeping, staging, cheaper bulk writes.

- ``records``: the key columns compare bytewise (``COLLATE "C"``). They are opaque ids and
  dotted paths, so no linguistic order means anything; memcmp makes every index insert and
  lookup cheaper than a locale's strcoll, and a category prefix is a plain byte range.
- ``memberships``: drop the two foreign keys. Checking them costs one index probe plus a
  ``FOR KEY SHARE`` row lock *per membership*, which doubled the seal of a 1M-record
  snapshot (25 s vs 13 s here). Integrity holds by construction: memberships are written
  only by the seal, from ``record_pk`` values it reads from ``records`` in the same
  transaction; records are never deleted, and the only dataset versions ever deleted are
  abandoned uploads, which have no memberships. (A purge must delete memberships first.)
- ``memberships_dataset_version``: a BRIN index for "the records of a version" (FK-less
  deletes, re-evaluation on a policy change). A seal appends its memberships together, so
  the heap is ordered by version and a block-range index is enough, at almost no cost per
  insert (a B-tree on it cost 1.5 s per million memberships).
- The lookup "which sealed versions hold subject S's records (in category C)" stays
  ``records (subject_id, category)`` → ``memberships`` primary key ``(record_pk, …)`` →
  ``dataset_versions`` primary key: three index lookups, whatever the table sizes.
- ``dataset_uploads`` / ``dataset_upload_chunks``: chunked uploads and what each chunk
  holds. The staged rows live in one UNLOGGED table per upload in schema
  ``registry_staging`` (created by the service): no WAL for data that is copied again at
  the seal, dropped whole at the seal. A Postgres crash empties unlogged tables; the seal
  then finds fewer rows than the chunks recorded and answers 409 naming the chunks to send
  again, so a lost chunk can never be sealed away silently.

Revision ID: registry_0002
Revises: registry_0001
Create Date: 2026-11-26
"""

from services.runtime.migrate import execute_script

revision = "registry_0002"
down_revision = "registry_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("""
    ALTER TABLE records
        ALTER COLUMN source_system TYPE text COLLATE "C",
        ALTER COLUMN record_id     TYPE text COLLATE "C",
        ALTER COLUMN subject_id    TYPE text COLLATE "C",
        ALTER COLUMN category      TYPE text COLLATE "C";

    ALTER TABLE memberships
        DROP CONSTRAINT memberships_dataset_version_id_fkey,
        DROP CONSTRAINT memberships_record_pk_fkey;
    CREATE INDEX memberships_dataset_version ON memberships
        USING brin (dataset_version_id) WITH (pages_per_range = 16);

    ALTER TABLE dataset_versions ADD COLUMN training_started_at timestamptz;

    CREATE TABLE dataset_uploads (
        upload_id          uuid PRIMARY KEY,
        dataset_version_id bigint NOT NULL UNIQUE
                           REFERENCES dataset_versions ON DELETE CASCADE,
        staging_table      text        NOT NULL,
        opened_at          timestamptz NOT NULL,
        sealed_at          timestamptz
    );

    CREATE TABLE dataset_upload_chunks (
        upload_id   uuid        NOT NULL REFERENCES dataset_uploads ON DELETE CASCADE,
        chunk       integer     NOT NULL,
        records     integer     NOT NULL,
        received_at timestamptz NOT NULL,
        PRIMARY KEY (upload_id, chunk)
    );

    CREATE SCHEMA registry_staging;
    """)


def downgrade() -> None:
    execute_script("""
    DROP SCHEMA registry_staging CASCADE;
    DROP TABLE dataset_upload_chunks;
    DROP TABLE dataset_uploads;
    DELETE FROM memberships m USING dataset_versions dv
        WHERE dv.dataset_version_id = m.dataset_version_id AND dv.sealed_at IS NULL;
    DELETE FROM dataset_versions WHERE sealed_at IS NULL;
    ALTER TABLE dataset_versions DROP COLUMN training_started_at;
    DROP INDEX memberships_dataset_version;
    ALTER TABLE memberships
        ADD CONSTRAINT memberships_dataset_version_id_fkey
            FOREIGN KEY (dataset_version_id) REFERENCES dataset_versions,
        ADD CONSTRAINT memberships_record_pk_fkey
            FOREIGN KEY (record_pk) REFERENCES records;
    ALTER TABLE records
        ALTER COLUMN source_system TYPE text COLLATE "default",
        ALTER COLUMN record_id     TYPE text COLLATE "default",
        ALTER COLUMN subject_id    TYPE text COLLATE "default",
        ALTER COLUMN category      TYPE text COLLATE "default";
    """)
