"""The committed AsyncAPI documents are what the services' FastStream apps generate."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

ASYNCAPI_DIR = Path(__file__).resolve().parents[3] / "contracts" / "asyncapi"
SERVICES = ("consent", "registry", "lineage", "deletion")


@pytest.mark.parametrize("service", SERVICES)
def test_committed_asyncapi_matches_the_service(service: str) -> None:
    app = importlib.import_module(f"services.{service}.app").asyncapi_app()
    generated = yaml.safe_load(app.schema.to_specification().to_yaml())
    committed = yaml.safe_load((ASYNCAPI_DIR / f"{service}.yaml").read_text())
    assert generated == committed, f"contracts/asyncapi/{service}.yaml is stale: run `make schemas`"


@pytest.mark.parametrize("service", SERVICES)
def test_every_channel_names_a_contract_schema_that_exists(service: str) -> None:
    document = yaml.safe_load((ASYNCAPI_DIR / f"{service}.yaml").read_text())
    schemas = ASYNCAPI_DIR.parent / "schemas"
    for channel in document["channels"].values():
        assert (schemas / f"{channel['address']}.schema.json").exists(), channel["address"]
