"""Records, sealed dataset versions, memberships, consent/policy projections, findings.

Revision ID: registry_0001
Revises:
Create Date: 2026-11-25
"""

from services.runtime.migrate import execute_script

revision = "registry_0001"
down_revision = None
branch_labels = ("registry",)
depends_on = "runtime_0001"


def upgrade() -> None:
    execute_script("""
    CREATE TABLE records (
        record_pk      bigserial PRIMARY KEY,
        source_system  text        NOT NULL,
        record_id      text        NOT NULL,
        subject_id     text        NOT NULL,
        category       text        NOT NULL,
        jurisdiction   text        NOT NULL,
        collected_at   timestamptz NOT NULL,
        content_digest text        NOT NULL,
        UNIQUE (source_system, record_id)
    );
    CREATE INDEX records_subject_category ON records (subject_id, category);

    CREATE TABLE dataset_versions (
        dataset_version_id bigserial PRIMARY KEY,
        namespace    text        NOT NULL,
        name         text        NOT NULL,
        version      text        NOT NULL,
        purpose      text        NOT NULL,
        created_at   timestamptz NOT NULL,
        sealed_at    timestamptz,
        used_at      timestamptz,
        record_count integer     NOT NULL DEFAULT 0,
        UNIQUE (namespace, name, version)
    );

    CREATE TABLE memberships (
        dataset_version_id bigint NOT NULL REFERENCES dataset_versions,
        record_pk          bigint NOT NULL REFERENCES records,
        PRIMARY KEY (record_pk, dataset_version_id)
    );

    CREATE TABLE policy_versions (
        policy_id    text        NOT NULL,
        version      text        NOT NULL,
        valid_from   timestamptz NOT NULL,
        published_at timestamptz NOT NULL,
        document     jsonb       NOT NULL,
        PRIMARY KEY (policy_id, version)
    );

    CREATE TABLE consent_projection (
        consent_event_id uuid PRIMARY KEY,
        subject_id       text        NOT NULL,
        purpose          text        NOT NULL,
        data_categories  text[]      NOT NULL,
        state            text        NOT NULL,
        effective_at     timestamptz NOT NULL,
        recorded_at      timestamptz NOT NULL
    );
    CREATE INDEX consent_projection_subject ON consent_projection (subject_id, effective_at);

    CREATE TABLE findings (
        finding_id  uuid PRIMARY KEY,
        namespace   text        NOT NULL,
        name        text        NOT NULL,
        version     text        NOT NULL,
        status      text        NOT NULL,
        severity    text        NOT NULL,
        reason      text        NOT NULL,
        body        jsonb       NOT NULL,
        trace_id    text,
        recorded_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX findings_dataset ON findings (namespace, name, version);
    """)


def downgrade() -> None:
    execute_script("""
    DROP TABLE findings; DROP TABLE consent_projection; DROP TABLE policy_versions;
    DROP TABLE memberships; DROP TABLE dataset_versions; DROP TABLE records;
    """)
