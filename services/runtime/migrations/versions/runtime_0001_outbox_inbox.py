"""Runtime tables: transactional outbox and idempotent inbox.

Revision ID: runtime_0001
Revises:
Create Date: 2026-11-25
"""

from services.runtime.migrate import execute_script

revision = "runtime_0001"
down_revision = None
branch_labels = ("runtime",)
depends_on = None


def upgrade() -> None:
    execute_script("""
    CREATE TABLE outbox (
        id            bigserial PRIMARY KEY,
        topic         text        NOT NULL,
        key           bytea,
        value         bytea       NOT NULL,
        header_names  text[]      NOT NULL,
        header_values bytea[]     NOT NULL,
        created_at    timestamptz NOT NULL DEFAULT now(),
        published_at  timestamptz
    );
    CREATE INDEX outbox_pending ON outbox (id) WHERE published_at IS NULL;
    CREATE INDEX outbox_pending_by_key ON outbox (topic, key, id) WHERE published_at IS NULL;
    CREATE INDEX outbox_published_at ON outbox (published_at) WHERE published_at IS NOT NULL;

    CREATE TABLE inbox (
        event_id     text        PRIMARY KEY,
        topic        text        NOT NULL,
        trace_id     text,
        processed_at timestamptz NOT NULL DEFAULT now()
    );
    """)


def downgrade() -> None:
    execute_script("DROP TABLE inbox; DROP TABLE outbox;")
