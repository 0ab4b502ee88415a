"""Chunked uploads register their records when each chunk arrives, not at the seal.

- ``dataset_upload_chunks.registered``: the chunk's records are in ``records`` and their
  keys in the upload's key table (below), so the seal only has to add memberships. False
  for a chunk staged without that (staged before this revision, by a path that does not
  register, or one whose records conflict with registered ones: the seal then does what it
  always did for it, and refuses with the conflicting records named).
- ``registry_staging.upload_<id>_pks`` (created with each upload's staging table, UNLOGGED
  like it): ``(chunk, record_pk)`` of every registered chunk's records, which the seal
  turns into memberships. Created here for the uploads open at this revision; their
  chunks stay unregistered. The staging table gets an index on ``chunk``, so that a chunk's
  rows are read without scanning the others'.

Revision ID: registry_0004
Revises: registry_0003
Create Date: 2026-11-26
"""

from services.runtime.migrate import execute_script

revision = "registry_0004"
down_revision = "registry_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("""
    ALTER TABLE dataset_upload_chunks ADD COLUMN registered boolean NOT NULL DEFAULT false;

    DO $$
    DECLARE
        staging text;
    BEGIN
        FOR staging IN
            SELECT u.staging_table FROM dataset_uploads u
            WHERE u.sealed_at IS NULL
              AND to_regclass(format('registry_staging.%I', u.staging_table)) IS NOT NULL
        LOOP
            EXECUTE format('CREATE UNLOGGED TABLE IF NOT EXISTS registry_staging.%I'
                           ' (chunk integer NOT NULL, record_pk bigint NOT NULL)'
                           ' WITH (autovacuum_enabled = off)', staging || '_pks');
            EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON registry_staging.%I (chunk)',
                           staging || '_chunk', staging);
        END LOOP;
    END
    $$;
    """)


def downgrade() -> None:
    execute_script("""
    DO $$
    DECLARE
        pks text;
    BEGIN
        FOR pks IN
            SELECT tablename FROM pg_tables
            WHERE schemaname = 'registry_staging' AND tablename LIKE 'upload\\_%\\_pks'
        LOOP
            EXECUTE format('DROP TABLE registry_staging.%I', pks);
        END LOOP;
    END
    $$;
    ALTER TABLE dataset_upload_chunks DROP COLUMN registered;
    """)
