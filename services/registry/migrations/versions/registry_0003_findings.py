"""Findings at time of use: full consent events, contributions, finding history, evaluation jobs.

- ``consent_projection.event``: the whole consent event (the engine needs mechanism,
  jurisdiction and all), looked up by subject. Rows projected before this revision lack
  it and cannot be evaluated; they are dropped, with the topic's inbox entries, so
  that replaying ``consent.events.v1`` (reset the registry's consumer group) restores
  them. Nothing was released with the old shape.
- ``finding_contributions``: what each (subject, dataset version, category) contributes
  to a finding (records and a sample of their ids). A finding's counts are the sum of its
  contributions, so a consent event re-evaluates one subject and updates the findings it
  touches without reading anybody else's records; a finding left with no contribution is
  retracted. Keyed by subject first (the consent path), indexed by finding and version.
- ``finding_events``: every state a finding was published in, for "as of" queries.
- ``evaluation_jobs``: dataset versions to re-evaluate whole (after a seal, after a new
  policy version), one pending job per version, worked off outside the event path.

Revision ID: registry_0003
Revises: registry_0002
Create Date: 2026-11-26
"""

from services.runtime.migrate import execute_script

revision = "registry_0003"
down_revision = "registry_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("""
    ALTER TABLE consent_projection ADD COLUMN event jsonb;
    DELETE FROM inbox WHERE topic = 'consent.events.v1'
        AND EXISTS (SELECT 1 FROM consent_projection WHERE event IS NULL);
    DELETE FROM consent_projection WHERE event IS NULL;
    ALTER TABLE consent_projection
        ALTER COLUMN event SET NOT NULL,
        ALTER COLUMN subject_id TYPE text COLLATE "C";

    ALTER TABLE findings
        ADD COLUMN dataset_version_id bigint,
        ADD COLUMN policy_id text,
        ADD COLUMN policy_version text,
        ADD COLUMN affected_records integer NOT NULL DEFAULT 0,
        ADD COLUMN affected_subjects integer NOT NULL DEFAULT 0,
        ADD COLUMN detected_at timestamptz,
        ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();
    UPDATE findings f SET dataset_version_id = dv.dataset_version_id,
                          policy_id = f.body->>'policy_id',
                          policy_version = f.body->>'policy_version',
                          affected_records = (f.body->>'affected_records')::integer,
                          affected_subjects = (f.body->>'affected_subjects')::integer,
                          detected_at = (f.body->>'detected_at')::timestamptz
        FROM dataset_versions dv
        WHERE (dv.namespace, dv.name, dv.version) = (f.namespace, f.name, f.version);
    CREATE INDEX findings_severity ON findings (severity, status, detected_at);
    CREATE INDEX findings_version ON findings (dataset_version_id);

    CREATE TABLE finding_contributions (
        subject_id         text COLLATE "C" NOT NULL,
        dataset_version_id bigint  NOT NULL,
        finding_id         uuid    NOT NULL,
        category           text COLLATE "C" NOT NULL,
        records            integer NOT NULL,
        sample             text[] COLLATE "C" NOT NULL,
        events             uuid[]  NOT NULL,
        PRIMARY KEY (subject_id, dataset_version_id, finding_id, category)
    );
    CREATE INDEX finding_contributions_finding ON finding_contributions (finding_id);
    CREATE INDEX finding_contributions_version ON finding_contributions (dataset_version_id);

    CREATE TABLE finding_events (
        seq         bigserial PRIMARY KEY,
        finding_id  uuid        NOT NULL,
        status      text        NOT NULL,
        body        jsonb       NOT NULL,
        recorded_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX finding_events_finding ON finding_events (finding_id, recorded_at);

    CREATE TABLE evaluation_jobs (
        dataset_version_id bigint PRIMARY KEY,
        cause       text        NOT NULL,
        enqueued_at timestamptz NOT NULL DEFAULT now(),
        attempts    integer     NOT NULL DEFAULT 0,
        last_error  text
    );
    ALTER TABLE dataset_versions ADD COLUMN evaluated_at timestamptz;
    """)


def downgrade() -> None:
    execute_script("""
    ALTER TABLE dataset_versions DROP COLUMN evaluated_at;
    DROP TABLE evaluation_jobs;
    DROP TABLE finding_events;
    DROP TABLE finding_contributions;
    DROP INDEX findings_version;
    DROP INDEX findings_severity;
    ALTER TABLE findings
        DROP COLUMN dataset_version_id, DROP COLUMN policy_id, DROP COLUMN policy_version,
        DROP COLUMN affected_records, DROP COLUMN affected_subjects, DROP COLUMN detected_at,
        DROP COLUMN updated_at;
    ALTER TABLE consent_projection
        DROP COLUMN event,
        ALTER COLUMN subject_id TYPE text COLLATE "default";
    """)
