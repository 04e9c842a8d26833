"""The 12345 / city-management category taxonomy, each subcategory an Open311 service."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Annotated

import yaml
from pydantic import Field

from schemas.base import Code, Contract


class Service(Contract):
    """One Open311 service: a subcategory of the taxonomy."""

    code: Code
    name_zh: Annotated[str, Field(min_length=1)]
    name_en: Annotated[str, Field(min_length=1)]
    urgent: bool = False
    department: str | None = Field(default=None, description="Overrides the category's.")


class Category(Contract):
    code: Code
    name_zh: Annotated[str, Field(min_length=1)]
    name_en: Annotated[str, Field(min_length=1)]
    department: str
    services: Annotated[list[Service], Field(min_length=1)]


class Taxonomy(Contract):
    categories: list[Category]

    def service(self, code: str) -> tuple[Category, Service] | None:
        """The category and service a service code names."""
        for category in self.categories:
            for service in category.services:
                if service.code == code:
                    return category, service
        return None


@cache
def taxonomy() -> Taxonomy:
    """The bundled taxonomy (read once)."""
    text = resources.files("ingest").joinpath("catalogue/categories.yaml").read_text("utf-8")
    loaded = Taxonomy.model_validate(yaml.safe_load(text))
    codes = [s.code for c in loaded.categories for s in c.services]
    if len(codes) != len(set(codes)):
        raise ValueError("categories.yaml: a service code is used twice")
    for c in loaded.categories:
        for s in c.services:
            if not s.code.startswith(c.code + "."):
                raise ValueError(f"categories.yaml: {s.code} is not under {c.code}")
    return loaded
