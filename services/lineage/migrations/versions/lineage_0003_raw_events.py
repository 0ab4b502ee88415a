"""Raw OpenLineage events kept as received, for audit.

- ``openlineage_events.received``: the event's bytes exactly as they reached the service
  (the HTTP body once its ``Content-Encoding`` is undone, the Kafka record's value). ``raw``
  stays the canonical form and ``event_digest`` (a digest of the canonical form) still
  decides what is a duplicate: the first receipt of an event is the one kept. NULL when
  the service never saw the event's text (rows recorded before this revision, an event
  built in-process); readers fall back to ``raw`` for those.
- ``openlineage_events.received_via``: how it arrived: ``http``, or
  ``kafka:<topic>/<partition>@<offset>``.

Revision ID: lineage_0003
Revises: lineage_0002
Create Date: 2026-11-26
"""

from services.runtime.migrate import execute_script

revision = "lineage_0003"
down_revision = "lineage_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("""
    ALTER TABLE openlineage_events
        ADD COLUMN received     bytea,
        ADD COLUMN received_via text;
    COMMENT ON COLUMN openlineage_events.received IS
        'The event as received (HTTP body after Content-Encoding, Kafka value), byte for byte;'
        ' NULL when only the canonical form (raw) is known.';
    """)


def downgrade() -> None:
    execute_script("""
    ALTER TABLE openlineage_events DROP COLUMN received_via, DROP COLUMN received;
    """)
