"""Who may call what: API keys, the five roles, and each service's access table.

Every service runs the same check, in the runtime, before any router sees a request:

- **Authentication.** ``Authorization: Bearer <key>`` (what the ``openlineage-python``
  client sends for its ``api_key``) or ``X-API-Key: <key>``. Keys are configured as SHA-256
  hashes with a principal name and roles (``API_KEYS_FILE`` and/or ``API_KEYS``, see
  :func:`parse_keys`); a presented key is hashed and compared with every stored hash in
  constant time. No key, or an unknown one: **401** with ``WWW-Authenticate: Bearer``.
- **Authorization.** Each service declares an access table (``ServiceSpec.access``): for
  every ``(method, path template)`` of its routes, the roles allowed. The request is matched
  to its route as Starlette's routing matches it (the template, never the raw URL), and a
  known key whose roles are not among the route's gets **403** naming the roles allowed. A
  route with no entry is refused (deny by default), and a service whose routes are not all
  in its table refuses to start while auth is on.
- **Open:** ``/health/live``, ``/health/ready``, ``/metrics`` (probes and scrapers) and the
  API description (``/openapi.json``, ``/docs``, ``/redoc``): it holds no data, and Swagger
  UI loads it without credentials before its *Authorize* button can send any.

``AUTH_MODE=off`` turns all of it off (every caller is anonymous and trusted, as the tests
and the embedded dev stack run by default); the OpenAPI document still states each
endpoint's roles (``x-roles``).

Make a key: ``python -m services.runtime.auth new-key --principal NAME --role ROLE``.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import os
import secrets
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

import yaml
from fastapi import FastAPI, HTTPException, Request
from opentelemetry import trace
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from services.runtime.http import amend_openapi
from services.runtime.settings import ServiceSettings

__all__ = [
    "ALL_ROLES",
    "AccessGuard",
    "AccessTable",
    "AccessTableError",
    "AuthConfigError",
    "AuthMiddleware",
    "DevKeys",
    "KeyEntry",
    "KeyStore",
    "Principal",
    "Role",
    "RouteKey",
    "Rule",
    "actor_of",
    "allow",
    "hash_key",
    "install_access_control",
    "load_key_store",
    "new_key",
    "parse_keys",
    "principal_of",
    "require_roles",
    "service_headers",
    "write_dev_keys",
]

log = logging.getLogger(__name__)


class Role(StrEnum):
    """The five roles. A key may hold several; none implies another."""

    LEGAL_REQUESTER = "legal_requester"
    """Opens deletion cases and moves them through scoping and execution."""
    LEGAL_APPROVER = "legal_approver"
    """Approves or rejects deletion cases (four eyes: never the requester's own)."""
    ML_READER = "ml_reader"
    """Reads lineage, the registry and findings."""
    ML_WRITER = "ml_writer"
    """Registers training snapshots, posts OpenLineage events, sets model status."""
    PLATFORM_ADMIN = "platform_admin"
    """Reads everything, feeds consent from the settings system, publishes policies,
    runs operations. Never approves or rejects a deletion case."""


ALL_ROLES: Final = frozenset(Role)

RouteKey = tuple[str, str]
"""``(method, path template)``, e.g. ``("POST", "/api/v1/cases/{case_id}/actions")``."""


@dataclass(frozen=True, slots=True)
class Rule:
    """The roles allowed on one route, and an optional note for its OpenAPI description."""

    roles: frozenset[Role]
    note: str = ""


def allow(*roles: Role | Iterable[Role], note: str = "") -> Rule:
    """``allow(Role.ML_WRITER, Role.PLATFORM_ADMIN)``; groups of roles may be passed as sets."""
    flat: set[Role] = set()
    for item in roles:
        flat.update([item] if isinstance(item, Role) else item)
    if not flat:
        raise ValueError(
            "an access rule needs at least one role (a route no one may call"
            " needs no rule: it is refused by default)"
        )
    return Rule(frozenset(Role(r) for r in flat), note)


AccessTable = Mapping[RouteKey, Rule]
"""A service's access table: every route it serves, with the roles allowed."""


class AuthConfigError(RuntimeError):
    """The keys or the auth settings cannot be used; the message says how to fix them."""


class AccessTableError(RuntimeError):
    """A service's routes and its access table disagree (auth on: the service won't start)."""


# ---------------------------------------------------------------------------------- keys

KEY_PREFIX: Final = "ct_"
MAX_KEY_BYTES: Final = 512
"""Longer credentials are refused without hashing them."""
_PRINCIPAL_PATTERN = r"^\S(.*\S)?$"


def new_key() -> str:
    """A fresh API key: ``ct_`` and 256 random bits, URL-safe (the prefix helps secret
    scanners find a leaked key)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str | bytes) -> str:
    """The SHA-256 of a key, hex: what a key file stores instead of the key.

    A fast hash is the right one here: keys are 256 random bits, nothing to brute-force.
    """
    raw = key.encode() if isinstance(key, str) else key
    return hashlib.sha256(raw).hexdigest()


class KeyEntry(BaseModel):
    """One key in ``API_KEYS_FILE`` / ``API_KEYS``. Never the key itself: its SHA-256."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    principal: str = Field(
        min_length=1,
        max_length=200,
        pattern=_PRINCIPAL_PATTERN,
        description="Who holds the key: the actor recorded for what they do (e.g. legal:ann)",
    )
    roles: frozenset[Role] = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the key")
    description: str = ""

    @field_validator("sha256", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value


class _KeyDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[KeyEntry]


def parse_keys(text: str, source: str) -> list[KeyEntry]:
    """Key entries from JSON or YAML: ``{"keys": [{"principal", "roles", "sha256"}, …]}``
    or the bare list. ``source`` names where the text came from in error messages."""
    try:
        data: Any = json.loads(text)
    except ValueError:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise AuthConfigError(f"{source}: neither JSON nor YAML ({exc})") from None
    if isinstance(data, list):
        data = {"keys": data}
    try:
        return _KeyDocument.model_validate(data).keys
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'document'}: {e['msg']}" for e in exc.errors()
        )
        raise AuthConfigError(
            f"{source}: not a key list ({problems}); expected"
            ' {"keys": [{"principal": "...", "roles": ["ml_writer"], "sha256": "<64 hex>"}]}'
        ) from None


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    name: str
    roles: frozenset[Role]
    key_id: str
    """The first 12 hex digits of the key's SHA-256: names the key in logs, reveals nothing."""


class KeyStore:
    """The configured keys; :meth:`authenticate` compares in constant time."""

    def __init__(self, entries: Iterable[KeyEntry]) -> None:
        self._entries: list[tuple[bytes, Principal]] = []
        seen: dict[str, str] = {}
        for entry in entries:
            if entry.sha256 in seen:
                raise AuthConfigError(
                    f"the same key is configured twice (for {seen[entry.sha256]!r} and"
                    f" {entry.principal!r}): one key, one principal"
                )
            seen[entry.sha256] = entry.principal
            principal = Principal(entry.principal, entry.roles, entry.sha256[:12])
            self._entries.append((bytes.fromhex(entry.sha256), principal))

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def principals(self) -> list[Principal]:
        return [p for _, p in self._entries]

    def authenticate(self, key: str | bytes) -> Principal | None:
        """The principal of ``key``, or None. Every stored hash is compared, whatever matches."""
        raw = key.encode() if isinstance(key, str) else key
        if not raw or len(raw) > MAX_KEY_BYTES:
            return None
        digest = hashlib.sha256(raw).digest()
        found: Principal | None = None
        for stored, principal in self._entries:
            if hmac.compare_digest(stored, digest) and found is None:
                found = principal
        return found


def load_key_store(settings: ServiceSettings) -> KeyStore | None:
    """The keys of ``API_KEYS_FILE`` and ``API_KEYS`` together; None with ``AUTH_MODE=off``."""
    if settings.auth_mode == "off":
        return None
    if not settings.api_keys_file and not settings.api_keys:
        raise AuthConfigError(
            "AUTH_MODE=api_keys needs keys: set API_KEYS_FILE (a JSON or YAML key list) or"
            " API_KEYS (the same, inline); make one with `python -m services.runtime.auth"
            " new-key --principal NAME --role ROLE`. Or set AUTH_MODE=off to run without"
            " authentication (development only)."
        )
    entries: list[KeyEntry] = []
    if settings.api_keys_file:
        path = Path(settings.api_keys_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise AuthConfigError(f"API_KEYS_FILE={path}: cannot be read ({exc})") from None
        entries += parse_keys(text, f"API_KEYS_FILE={path}")
    if settings.api_keys:
        entries += parse_keys(settings.api_keys, "API_KEYS")
    return KeyStore(entries)


def service_headers(settings: ServiceSettings) -> dict[str, str]:
    """Headers for a call to another service's API: ``SERVICE_API_KEY`` as a bearer key,
    or nothing when it is unset."""
    key = settings.service_api_key.get_secret_value() if settings.service_api_key else ""
    return {"Authorization": f"Bearer {key}"} if key else {}


# ------------------------------------------------------------------------ access guard


@dataclass(frozen=True, slots=True)
class _Decision:
    open: bool = False
    key: RouteKey | None = None
    """The matched route's ``(method, template)``; None when no route matches (404/405)."""
    rule: Rule | None = None
    """None with a key: the route has no entry (refused)."""


_OPEN = _Decision(open=True)
_UNMATCHED = _Decision()


class AccessGuard:
    """A service's routes with their rules, matched in the order the router matches them."""

    def __init__(
        self,
        service: str,
        *,
        open_routes: Sequence[BaseRoute],
        routes: Sequence[BaseRoute],
        table: AccessTable | None,
    ) -> None:
        self.service = service
        self.table: AccessTable = table or {}
        self.declared = table is not None
        self._routes: list[tuple[BaseRoute, bool]] = [(r, True) for r in open_routes]
        self._routes += [(r, False) for r in routes]
        self.unsupported = [r for r in routes if not _is_plain(r)]

    @property
    def route_keys(self) -> list[RouteKey]:
        """Every ``(method, template)`` the service's own routers serve."""
        return [
            (method, route.path_format)  # type: ignore[attr-defined]
            for route, is_open in self._routes
            if not is_open and _is_plain(route)
            for method in sorted(_methods(route))
        ]

    def problems(self) -> tuple[list[str], list[str]]:
        """(errors, warnings): routes without an entry are errors, entries without a route
        warnings (a router another change has not wired yet, or a typo)."""
        errors: list[str] = []
        if not self.declared:
            errors.append(
                f"the {self.service} service declares no access table (ServiceSpec.access):"
                " every route would be refused"
            )
        errors += [
            f"{type(r).__name__} {r!r} in ServiceSpec.routers is not a plain route: list"
            " routers flat in ServiceSpec.routers so the access check can see each route"
            for r in self.unsupported
        ]
        keys = self.route_keys
        errors += [
            f"{method} {path} has no entry in the {self.service} access table (refused)"
            for method, path in keys
            if self.declared and (method, path) not in self.table
        ]
        warnings = [
            f"the {self.service} access table names {method} {path}, which no route serves"
            for method, path in self.table
            if (method, path) not in keys
        ]
        return errors, warnings

    def check(self, *, enforced: bool) -> None:
        """Raise (auth on) or log (auth off) what :meth:`problems` finds."""
        errors, warnings = self.problems()
        for warning in warnings:
            log.warning("%s", warning)
        if errors and enforced:
            raise AccessTableError("; ".join(errors))
        for error in errors if self.declared else ():
            log.warning("%s", error)

    def decide(self, scope: Scope) -> _Decision:
        """What the route this request goes to requires (first full match, as Starlette)."""
        for route, is_open in self._routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                if is_open:
                    return _OPEN
                method = "GET" if scope["method"] == "HEAD" else scope["method"]
                key = (method, route.path_format)  # type: ignore[attr-defined]
                return _Decision(key=key, rule=self.table.get(key))
        return _UNMATCHED


def _is_plain(route: BaseRoute) -> bool:
    return isinstance(getattr(route, "path_format", None), str) and hasattr(route, "methods")


def _methods(route: BaseRoute) -> set[str]:
    methods: set[str] = set(getattr(route, "methods", None) or ())
    if "GET" in methods:
        methods.discard("HEAD")  # Starlette adds HEAD to GET routes: it is checked as GET
    return methods


# ---------------------------------------------------------------------------- middleware

PRINCIPAL_SCOPE_KEY: Final = "consenttrace.principal"
_REALM = 'Bearer realm="consenttrace"'


class AuthMiddleware:
    """Authenticates and authorizes every HTTP request before routing (plain ASGI)."""

    def __init__(self, app: ASGIApp, guard: AccessGuard, keys: KeyStore) -> None:
        self.app = app
        self.guard = guard
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        decision = self.guard.decide(scope)
        if decision.open:
            await self.app(scope, receive, send)
            return
        what = f"{scope['method']} {decision.key[1] if decision.key else scope['path']}"
        key, problem = _credentials(scope)
        principal = self.keys.authenticate(key) if key is not None else None
        if principal is None:
            if problem is None:
                problem = "unknown API key" if key is not None else "no API key"
            log.info("401 %s: %s", what, problem)
            challenge = _REALM + (', error="invalid_token"' if key is not None else "")
            await _send_json(
                send,
                401,
                {
                    "detail": f"{problem}: send 'Authorization: Bearer <API key>'"
                    " or 'X-API-Key: <API key>'"
                },
                [(b"www-authenticate", challenge.encode())],
            )
            return
        scope[PRINCIPAL_SCOPE_KEY] = principal
        span = trace.get_current_span()
        span.set_attribute("enduser.id", principal.name)
        span.set_attribute("enduser.role", ",".join(sorted(principal.roles)))
        if decision.key is None:  # no such route: the router answers 404 / 405
            await self.app(scope, receive, send)
            return
        rule = decision.rule
        if rule is None or principal.roles.isdisjoint(rule.roles):
            allowed = sorted(rule.roles) if rule else []
            if rule is None:
                detail = f"{what} has no access entry: refused (deny by default)"
            else:
                detail = (
                    f"{what} needs one of the roles {', '.join(allowed)};"
                    f" {principal.name} has {', '.join(sorted(principal.roles))}"
                )
            log.info("403 %s for %s (key %s)", what, principal.name, principal.key_id)
            await _send_json(send, 403, {"detail": detail, "roles_allowed": allowed})
            return
        await self.app(scope, receive, send)


def _credentials(scope: Scope) -> tuple[bytes | None, str | None]:
    """(the key presented, or None with why it could not be read)."""
    authorization = api_key = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value.strip()
        elif name == b"x-api-key":
            api_key = value.strip()
    bearer = None
    if authorization:
        scheme, _, token = authorization.partition(b" ")
        if scheme.lower() == b"bearer" and token.strip():
            bearer = token.strip()
        elif not api_key:
            return None, "the Authorization header is not 'Bearer <API key>'"
    if bearer is not None and api_key and not hmac.compare_digest(bearer, api_key):
        return None, "Authorization and X-API-Key carry different keys"
    if bearer is not None:
        return bearer, None
    return (api_key, None) if api_key else (None, None)


async def _send_json(
    send: Send,
    status: int,
    body: Mapping[str, Any],
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


# ------------------------------------------------------------------- helpers for routes


def principal_of(request: Request) -> Principal | None:
    """The authenticated caller; None when ``AUTH_MODE=off`` (nobody is authenticated)."""
    principal = request.scope.get(PRINCIPAL_SCOPE_KEY)
    if isinstance(principal, Principal):
        return principal
    if getattr(request.app.state, "auth_mode", "off") == "off":
        return None
    raise HTTPException(401, "not authenticated", headers={"WWW-Authenticate": _REALM})


def actor_of(request: Request, claimed: str | None, *, field: str = "actor") -> str:
    """Who acts: the authenticated principal, whose name a body may repeat but never
    replace (or four eyes would mean nothing); with auth off, the body's ``field``."""
    principal = principal_of(request)
    if principal is None:
        if claimed is None:
            raise HTTPException(
                422, f"{field} is required: with AUTH_MODE=off the body names who acts"
            )
        return claimed
    if claimed is not None and claimed != principal.name:
        raise HTTPException(
            403,
            f"{field} {claimed!r} is not you: this API key belongs to {principal.name!r},"
            f" and nobody acts in someone else's name (omit {field})",
        )
    return principal.name


def require_roles(request: Request, roles: Iterable[Role], what: str) -> None:
    """403 unless the caller holds one of ``roles`` (for a rule finer than the route's,
    e.g. one command of several on one endpoint). Nothing with auth off."""
    principal = principal_of(request)
    allowed = frozenset(roles)
    if principal is not None and principal.roles.isdisjoint(allowed):
        raise HTTPException(
            403,
            f"{what} needs one of the roles {', '.join(sorted(allowed))};"
            f" {principal.name} has {', '.join(sorted(principal.roles))}",
        )


# ---------------------------------------------------------------------- composition


BEARER_SCHEME: Final = "apiKeyBearer"
HEADER_SCHEME: Final = "apiKeyHeader"
_SECURITY_SCHEMES = {
    BEARER_SCHEME: {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key as a bearer token: `Authorization: Bearer <key>`",
    },
    HEADER_SCHEME: {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "The same API key in the `X-API-Key` header",
    },
}


def annotate_openapi(schema: dict[str, Any], table: AccessTable, *, enforced: bool) -> None:
    """State each operation's roles (``x-roles`` and its description); with auth on, also
    its security requirement and the 401/403 answers."""
    paths = schema.get("paths", {})
    for (method, path), rule in table.items():
        operation = paths.get(path, {}).get(method.lower())
        if operation is None:
            continue
        roles = sorted(rule.roles)
        operation["x-roles"] = roles
        text = "**Roles:** " + ", ".join(f"`{r}`" for r in roles) + "."
        if rule.note:
            text += f" {rule.note}"
        description = operation.get("description", "").rstrip()
        operation["description"] = f"{description}\n\n{text}" if description else text
        if enforced:
            operation["security"] = [{BEARER_SCHEME: []}, {HEADER_SCHEME: []}]
            responses = operation.setdefault("responses", {})
            responses.setdefault("401", {"description": "No API key, or an unknown one"})
            responses.setdefault(
                "403", {"description": f"The key holds none of the roles {', '.join(roles)}"}
            )
    if enforced:
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {}).update(_SECURITY_SCHEMES)


def install_access_control(
    app: FastAPI,
    settings: ServiceSettings,
    *,
    service: str,
    routers: Sequence[Any],
    open_routers: Sequence[Any],
    table: AccessTable | None,
) -> None:
    """Wire auth into a service's app: load the keys, check the table against the routes,
    add the middleware (call before the tracing middleware, so tracing stays outermost),
    and state the roles in the OpenAPI document.

    ``routers`` are the service's own; ``open_routers`` (health, metrics) and FastAPI's
    documentation routes stay open.
    """
    keys = load_key_store(settings)
    enforced = keys is not None
    docs = {app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}
    open_routes: list[BaseRoute] = [r for router in open_routers for r in router.routes]
    open_routes += [r for r in app.routes if isinstance(r, Route) and r.path in docs]
    guard = AccessGuard(
        service,
        open_routes=open_routes,
        routes=[r for router in routers for r in router.routes],
        table=table,
    )
    guard.check(enforced=enforced)
    app.state.auth_mode = settings.auth_mode
    app.state.access_guard = guard
    if keys is None:
        log.warning(
            "AUTH_MODE=off: the %s API accepts every caller, unauthenticated (development"
            " only; set AUTH_MODE=api_keys and API_KEYS_FILE)",
            service,
        )
    else:
        if not len(keys):
            log.warning("AUTH_MODE=api_keys with no keys configured: every API call gets 401")
        else:
            log.info(
                "%s: %d API key(s) for %d principal(s)",
                service,
                len(keys),
                len({p.name for p in keys.principals}),
            )
        app.add_middleware(AuthMiddleware, guard=guard, keys=keys)
    if table is not None:
        _install_openapi(app, table, enforced=enforced)


def _install_openapi(app: FastAPI, table: AccessTable, *, enforced: bool) -> None:
    amend_openapi(app, lambda schema: annotate_openapi(schema, table, enforced=enforced))


# ------------------------------------------------------------------------ dev keys, CLI


DEV_PRINCIPALS: Final[Mapping[Role, str]] = {
    role: f"dev-{role.value.replace('_', '-')}" for role in Role
}
SERVICE_PRINCIPAL: Final = "service:lineage"
"""The dev key lineage presents to the registry (``SERVICE_API_KEY``), role ml_reader."""


@dataclass(frozen=True)
class DevKeys:
    """One key per role (and one for lineage's calls to the registry), for development."""

    keys_file: Path
    """Hashes only: what ``API_KEYS_FILE`` points at."""
    plain_file: Path
    """The keys themselves (mode 0600): ``{"legal_requester": {"principal", "key"}, …}``."""
    keys: Mapping[str, str]
    """Role value (or ``service``) → key."""

    def headers(self, role: Role | str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[str(role)]}"}

    @property
    def service_key(self) -> str:
        return self.keys["service"]


def write_dev_keys(directory: Path, *, reuse: bool = True) -> DevKeys:
    """Write ``api-keys.json`` (hashes) and ``api-keys.plain.json`` (keys, 0600) into
    ``directory``; with ``reuse``, keep the keys already there when both files are valid."""
    directory.mkdir(parents=True, exist_ok=True)
    keys_file, plain_file = directory / "api-keys.json", directory / "api-keys.plain.json"
    if reuse and keys_file.exists() and plain_file.exists():
        try:
            plain = json.loads(plain_file.read_text(encoding="utf-8"))
            store = KeyStore(parse_keys(keys_file.read_text(encoding="utf-8"), str(keys_file)))
            keys = {name: str(entry["key"]) for name, entry in plain.items()}
            if set(keys) == {*(r.value for r in Role), "service"} and all(
                store.authenticate(k) for k in keys.values()
            ):
                return DevKeys(keys_file, plain_file, keys)
        except (ValueError, KeyError, TypeError, AuthConfigError):
            pass  # unusable: make new ones
    holders: dict[str, tuple[str, frozenset[Role]]] = {
        role.value: (DEV_PRINCIPALS[role], frozenset({role})) for role in Role
    }
    holders["service"] = (SERVICE_PRINCIPAL, frozenset({Role.ML_READER}))
    keys = {name: new_key() for name in holders}
    entries = [
        {
            "principal": principal,
            "roles": sorted(roles),
            "sha256": hash_key(keys[name]),
            "description": "development key (services.runtime.auth dev-keys)",
        }
        for name, (principal, roles) in holders.items()
    ]
    plain = {name: {"principal": holders[name][0], "key": key} for name, key in keys.items()}
    _write(keys_file, json.dumps({"keys": entries}, indent=2) + "\n", 0o644)
    _write(plain_file, json.dumps(plain, indent=2) + "\n", 0o600)
    return DevKeys(keys_file, plain_file, keys)


def _write(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    tmp.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m services.runtime.auth {new-key,hash,check,dev-keys}``."""
    parser = argparse.ArgumentParser(
        prog="python -m services.runtime.auth", description="API keys for ConsentTrace"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_new = sub.add_parser(
        "new-key", help="make a key: prints the key, then its entry for API_KEYS_FILE"
    )
    p_new.add_argument("--principal", required=True, help="who holds it, e.g. legal:ann")
    p_new.add_argument("--role", action="append", required=True, choices=[r.value for r in Role])
    sub.add_parser("hash", help="the SHA-256 entry value of a key read from stdin")
    p_check = sub.add_parser("check", help="validate a key file; list principals and roles")
    p_check.add_argument("file", type=Path)
    p_dev = sub.add_parser("dev-keys", help="one development key per role, into a directory")
    p_dev.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    out = sys.stdout
    try:
        if args.command == "new-key":
            key = new_key()
            entry = KeyEntry(
                principal=args.principal, roles=frozenset(args.role), sha256=hash_key(key)
            )
            out.write(
                f"{key}\n{json.dumps(entry.model_dump(mode='json', exclude={'description'}))}\n"
            )
            sys.stderr.write(
                "line 1: the key (give it to its holder; it is not stored anywhere);"
                ' line 2: its entry for the "keys" list of API_KEYS_FILE\n'
            )
        elif args.command == "hash":
            out.write(hash_key(sys.stdin.readline().strip()) + "\n")
        elif args.command == "check":
            store = KeyStore(parse_keys(args.file.read_text(encoding="utf-8"), str(args.file)))
            for p in store.principals:
                out.write(f"{p.key_id}  {p.name}  {', '.join(sorted(p.roles))}\n")
            out.write(f"{len(store)} key(s)\n")
        else:
            dev = write_dev_keys(args.directory, reuse=False)
            out.write(f"API_KEYS_FILE={dev.keys_file}\nkeys (0600): {dev.plain_file}\n")
    except (AuthConfigError, OSError, ValidationError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
