"""Chunked uploads left idle expire: their staging table is dropped and their name freed.

- ``touched_at`` on ``dataset_uploads`` and ``dataset_upload_chunks``: the registry's own
  clock when the upload was opened and when each chunk was last staged (at the end of
  its transaction: a chunk that streamed for an hour is fresh); the upload is idle since
  the latest of them. Not ``opened_at`` or a chunk's
  ``received_at``: for a registration over Kafka those are the log's time, which a replay
  puts in the past. (On the chunk rows, not the upload row: chunks in flight together
  hold the upload row shared, and one writing it would wait for the others.) Uploads
  open at the upgrade count as touched then: they expire a timeout after it, not at once.
- ``dataset_uploads.expires``: false for registrations over Kafka. Their messages wait in
  the topic while the registry is behind or down, so the registry's idle time says nothing
  of the producer; an expiry there could drop an upload whose next batch is already
  written (``DELETE`` still abandons one).
- A partial index on the idle candidates: the expiry looks only at open uploads.
- ``expired_uploads``: what expired and when, so that a client coming back gets 410 with
  the reason instead of a bare 404.

Revision ID: registry_0007
Revises: registry_0006
Create Date: 2026-11-26
"""

from services.runtime.migrate import execute_script

revision = "registry_0007"
down_revision = "registry_0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("""
    ALTER TABLE dataset_uploads
        ADD COLUMN touched_at timestamptz NOT NULL DEFAULT now(),
        ADD COLUMN expires boolean NOT NULL DEFAULT true;
    ALTER TABLE dataset_upload_chunks ADD COLUMN touched_at timestamptz NOT NULL DEFAULT now();
    CREATE INDEX dataset_uploads_idle ON dataset_uploads (touched_at)
        WHERE sealed_at IS NULL AND expires;

    CREATE TABLE expired_uploads (
        upload_id  uuid PRIMARY KEY,
        namespace  text        NOT NULL,
        name       text        NOT NULL,
        version    text        NOT NULL,
        opened_at  timestamptz NOT NULL,
        touched_at timestamptz NOT NULL,
        expired_at timestamptz NOT NULL,
        chunks     integer     NOT NULL,
        records    bigint      NOT NULL
    );
    """)


def downgrade() -> None:
    execute_script("""
    DROP TABLE expired_uploads;
    DROP INDEX dataset_uploads_idle;
    ALTER TABLE dataset_upload_chunks DROP COLUMN touched_at;
    ALTER TABLE dataset_uploads DROP COLUMN touched_at, DROP COLUMN expires;
    """)
