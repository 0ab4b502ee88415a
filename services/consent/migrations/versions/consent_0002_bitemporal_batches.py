"""Bitemporal reads (as known at a transaction time) and idempotent batches.

Revision ID: consent_0002
Revises: consent_0001
Create Date: 2026-11-26
"""

from services.runtime.migrate import execute_script

revision = "consent_0002"
down_revision = "consent_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("""
    -- "As known at T": a subject's events recorded at or before T.
    CREATE INDEX consent_events_subject_known ON consent_events (subject_id, recorded_at);

    -- A recorded batch, by its Idempotency-Key: a replay returns these events, a reuse of the
    -- key for other content is refused. Evidence of intake, so append-only like the ledger.
    CREATE TABLE consent_batches (
        idempotency_key text        PRIMARY KEY,
        request_digest  text        NOT NULL,
        event_ids       uuid[]      NOT NULL,
        recorded_at     timestamptz NOT NULL,
        trace_id        text
    );
    CREATE FUNCTION consent_batches_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'consent_batches is append-only';
    END $$;
    CREATE TRIGGER consent_batches_no_update BEFORE UPDATE OR DELETE ON consent_batches
        FOR EACH ROW EXECUTE FUNCTION consent_batches_append_only();
    """)


def downgrade() -> None:
    execute_script("""
    DROP TABLE consent_batches;
    DROP FUNCTION consent_batches_append_only();
    DROP INDEX consent_events_subject_known;
    """)
