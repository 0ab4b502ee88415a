"""HTTP building blocks shared by the services' APIs."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException

from contracts.base import DatasetRef

__all__ = ["VersionFilter", "optional_version"]


def optional_version(
    namespace: str | None = None, name: str | None = None, version: str | None = None
) -> DatasetRef | None:
    """An OpenLineage dataset/model version named in the query string, or none at all."""
    if namespace is None and name is None and version is None:
        return None
    if namespace is None or name is None or version is None:
        raise HTTPException(422, "give namespace, name and version together, or none of them")
    return DatasetRef(namespace=namespace, name=name, version=version)


VersionFilter = Annotated[DatasetRef | None, Depends(optional_version)]
"""Query parameters ``namespace``, ``name``, ``version``: all three or none."""
