"""Consent ledger (append-only) and policy versions.

Revision ID: consent_0001
Revises:
Create Date: 2026-11-25
"""

from services.runtime.migrate import execute_script

revision = "consent_0001"
down_revision = None
branch_labels = ("consent",)
depends_on = "runtime_0001"


def upgrade() -> None:
    execute_script("""
    CREATE TABLE consent_events (
        consent_event_id  uuid PRIMARY KEY,
        subject_id        text        NOT NULL,
        jurisdiction      text        NOT NULL,
        purpose           text        NOT NULL,
        data_categories   text[]      NOT NULL,
        state             text        NOT NULL CHECK (state IN ('granted', 'withdrawn')),
        mechanism         text        NOT NULL,
        policy_version    text        NOT NULL,
        effective_at      timestamptz NOT NULL,
        recorded_at       timestamptz NOT NULL,
        source_system     text        NOT NULL,
        evidence          jsonb       NOT NULL,
        erasure_requested boolean     NOT NULL DEFAULT false,
        trace_id          text
    );
    CREATE INDEX consent_events_subject ON consent_events (subject_id, effective_at, recorded_at);

    -- Append-only: the ledger is evidence; corrections are new facts.
    CREATE FUNCTION consent_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'consent_events is append-only';
    END $$;
    CREATE TRIGGER consent_events_no_update BEFORE UPDATE OR DELETE ON consent_events
        FOR EACH ROW EXECUTE FUNCTION consent_events_append_only();

    CREATE TABLE policy_versions (
        policy_id    text        NOT NULL,
        version      text        NOT NULL,
        valid_from   timestamptz NOT NULL,
        published_at timestamptz NOT NULL,
        document     jsonb       NOT NULL,
        PRIMARY KEY (policy_id, version)
    );
    """)


def downgrade() -> None:
    execute_script("""
    DROP TABLE policy_versions;
    DROP TABLE consent_events;
    DROP FUNCTION consent_events_append_only();
    """)
