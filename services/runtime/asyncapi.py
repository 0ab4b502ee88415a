"""AsyncAPI documents generated from each service's real subscriptions and publishers.

``faststream docs gen services.<name>.app:asyncapi_app --factory`` renders them; the
committed copies live in ``contracts/asyncapi/``. Subscribers receive raw records (the
runtime validates them itself so that bad ones can be dead-lettered), so their payload
is described by pointing at the contract's JSON Schema; publishers carry the schema.
"""

from __future__ import annotations

from faststream import FastStream
from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI

from services.runtime.consumer import EventConsumer
from services.runtime.db import Pool
from services.runtime.host import ServiceSpec
from services.runtime.settings import ServiceSettings

__all__ = ["describe"]


def describe(spec: ServiceSpec, broker: KafkaBroker) -> FastStream:
    """An unstarted FastStream app holding the service's channels, for documentation."""
    settings = ServiceSettings(service_name=spec.name)
    consumer = EventConsumer(settings, _no_pool, f"/consenttrace/{spec.name}")
    for subscription in spec.subscriptions:
        consumer.register(broker, subscription)
    for topic in spec.publishes:
        broker.publisher(
            topic.name,
            title=f"{spec.name}:{topic.name}",
            description=(
                f"CloudEvents binary mode (ce_type={topic.event_type}); key: {topic.key}."
                f" Body schema: contracts/schemas/{topic.name}.schema.json"
            ),
            schema=topic.model,
        )
    return FastStream(
        broker,
        specification=AsyncAPI(title=spec.title, description=spec.description, version="0.1.0"),
    )


def _no_pool() -> Pool:
    raise RuntimeError("documentation-only app has no database")
