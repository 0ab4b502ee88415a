"""Who may call each route of the registry API (enforced by the runtime: services.runtime.auth).

- Registering training snapshots (one request, streamed, or chunked uploads) is the ML
  pipelines' write: ``ml_writer``, and ``platform_admin`` (e.g. to abandon a stuck upload).
- Reads (dataset versions, composition, findings, explanations, what-if) are for ML teams,
  for legal scoping a case, and for the platform. The lineage service calls composition and
  what-if with its own ``ml_reader`` key (``SERVICE_API_KEY``).
- The eligibility filter is a pipeline's pre-flight before registering: ML and platform.
- The evaluation queue is operational: ML and platform.
"""

from __future__ import annotations

from services.runtime.auth import AccessTable, Role, allow

__all__ = ["ACCESS"]

ADMIN = Role.PLATFORM_ADMIN
ML = {Role.ML_READER, Role.ML_WRITER}
EVERYONE = set(Role)

_WRITE = allow(Role.ML_WRITER, ADMIN)
_READ = allow(EVERYONE)
_ML_READ = allow(ML, ADMIN)

ACCESS: AccessTable = {
    # registration (http.py)
    ("POST", "/api/v1/dataset-versions"): _WRITE,
    ("POST", "/api/v1/dataset-versions/stream"): _WRITE,
    ("POST", "/api/v1/dataset-versions/uploads"): _WRITE,
    ("PUT", "/api/v1/dataset-versions/uploads/{upload_id}/chunks/{chunk}"): _WRITE,
    ("POST", "/api/v1/dataset-versions/uploads/{upload_id}/seal"): _WRITE,
    ("DELETE", "/api/v1/dataset-versions/uploads/{upload_id}"): _WRITE,
    ("GET", "/api/v1/dataset-versions/uploads/{upload_id}"): _ML_READ,
    # reads (http.py)
    ("GET", "/api/v1/dataset-versions"): _READ,
    ("GET", "/api/v1/dataset-version"): _READ,
    ("GET", "/api/v1/findings"): _READ,
    ("GET", "/api/v1/policy-versions"): _READ,
    ("GET", "/api/v1/evaluation-jobs"): _ML_READ,
    # eligibility (eligibility_http.py)
    ("POST", "/api/v1/eligibility/filter"): _ML_READ,
    ("GET", "/api/v1/records/{source_system}/{record_id}/eligibility"): _READ,
    # composition and what-if (composition_http.py)
    ("GET", "/api/v1/dataset-version/composition"): _READ,
    ("GET", "/api/v1/dataset-version/subjects"): _READ,
    ("GET", "/api/v1/dataset-versions/holding"): _READ,
    ("POST", "/api/v1/what-if/withdrawal"): _READ,
}
