"""Who may call each route of the lineage API (enforced by the runtime: services.runtime.auth).

- ``POST /api/v1/lineage`` is where ML pipelines send OpenLineage RunEvents: ``ml_writer``
  (the ``openlineage-python`` client's ``api_key`` is sent as ``Authorization: Bearer``).
- Setting a model's status (quarantined, superseded, destroyed) is the model owners' call:
  ``ml_writer``, and ``platform_admin``.
- Every read (flags, status, inputs, the graph, raw events, what-if) is open to every
  role: "is this model clean?" and "what went into it?" are asked by ML teams, legal
  (scoping a case) and the platform alike.
"""

from __future__ import annotations

from services.runtime.auth import AccessTable, Role, allow

__all__ = ["ACCESS"]

ADMIN = Role.PLATFORM_ADMIN
EVERYONE = set(Role)

_WRITE = allow(Role.ML_WRITER, ADMIN)
_READ = allow(EVERYONE)

ACCESS: AccessTable = {
    # ingestion (http.py, events_http.py)
    ("POST", "/api/v1/lineage"): _WRITE,
    ("GET", "/api/v1/lineage/events"): _READ,
    ("GET", "/api/v1/model-flags"): _READ,
    # the graph, upstream/downstream (graph_http.py)
    ("GET", "/api/v1/lineage/graph"): _READ,
    ("GET", "/api/v1/lineage/graph.svg"): _READ,
    ("GET", "/api/v1/lineage/graph.png"): _READ,
    # models (models_http.py)
    ("GET", "/api/v1/model-status"): _READ,
    ("PUT", "/api/v1/model-status"): _WRITE,
    ("GET", "/api/v1/model-inputs"): _READ,
    ("GET", "/api/v1/what-if"): _READ,
}
