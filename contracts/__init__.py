"""ConsentTrace contracts: the only code services share about each other.

Event models (pydantic v2, frozen, extra fields forbidden), topic names with their
keys, the CloudEvents 1.0 binary-mode envelope used on Kafka, and the OpenLineage
2-0-2 core models. Nothing here performs I/O.
"""
