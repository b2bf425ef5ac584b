"""Who may read what: customers, their facilities and their logins, from `metadata/access/*.yaml`.

Every file may hold `customers:` and `logins:` lists; all files of the folder make one access model,
validated up front like the source metadata (errors name the file and the field). Passwords are
references to secrets (`password: {env: NAME}`), never the secrets themselves.

Roles, and what a login of each may read (`readable_schemas`, `facility_scope`):
- `operator`: everything, every facility, the audit log included;
- `customer`: bronze, silver, silver_deid, gold, quarantine and its part of `meta`, only rows of its
  customer's facilities;
- `deid`: only `silver_deid.*` and gold, limited to its customer's facilities when it names one, else
  every facility (a research login over de-identified data).

A relation a scoped login may read but that has no facility column cannot be filtered, so it is not
readable (`facility_column` returns None): a new table is never exposed to the wrong customer by default.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medlake_assets.errors import MedlakeError
from medlake_assets.spec.loader import parse_yaml

Role = Literal["operator", "customer", "deid"]
ROLES: tuple[Role, ...] = ("operator", "customer", "deid")
# Facility columns, in the order they are looked for: lineage, then the business column.
FACILITY_COLUMNS = ("_facility", "facility_id", "facility")
_READABLE: dict[Role, frozenset[str] | None] = {
    "operator": None,  # None: every schema
    "customer": frozenset({"bronze", "silver", "silver_deid", "gold", "quarantine", "meta"}),
    "deid": frozenset({"silver_deid", "gold"}),
}


class AccessError(MedlakeError, ValueError):
    """The access metadata is invalid; the message names the file and the field, never a secret."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(_Strict):
    """The name of the environment variable (a Kubernetes secret in production) holding a password.

    The value is a plain password, or a PostgreSQL SCRAM-SHA-256 verifier
    (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`) so the server need never hold it.
    """

    env: str = Field(pattern=r"^[A-Z][A-Z0-9_]*$")

    def resolve(self, environ: Mapping[str, str] | None = None) -> str | None:
        value = (os.environ if environ is None else environ).get(self.env)
        return value or None


class Customer(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$", max_length=64)
    name: str
    facilities: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_facilities(self) -> Customer:
        if len(set(self.facilities)) != len(self.facilities):
            raise ValueError("facilities: listed more than once")
        return self


class Login(_Strict):
    user: str = Field(pattern=r"^[a-z_][a-z0-9_]*$", max_length=63)
    role: Role
    password: SecretRef
    customer: str | None = None
    description: str = ""

    @model_validator(mode="after")
    def _customer_fits_role(self) -> Login:
        if self.role == "customer" and self.customer is None:
            raise ValueError("customer: a customer login must name its customer")
        if self.role == "operator" and self.customer is not None:
            raise ValueError("customer: an operator login sees every facility and names no customer")
        return self


class AccessFile(_Strict):
    customers: list[Customer] = []
    logins: list[Login] = []


@dataclass(frozen=True)
class Access:
    """The whole access model: customers and logins by id, and the owner of each facility."""

    customers: dict[str, Customer] = field(default_factory=dict)
    logins: dict[str, Login] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)
    """facility id -> customer id."""

    def login(self, user: str) -> Login | None:
        return self.logins.get(user)

    def facility_scope(self, login: Login) -> frozenset[str] | None:
        """The facilities `login` may see rows of; None means every facility."""
        if login.customer is None:
            return None
        return frozenset(self.customers[login.customer].facilities)


def readable_schemas(login: Login) -> frozenset[str] | None:
    """The schemas (namespaces) `login` may read; None means every schema."""
    return _READABLE[login.role]


def can_read_schema(login: Login, schema: str) -> bool:
    schemas = readable_schemas(login)
    return schemas is None or schema in schemas


def facility_column(columns: Iterable[str]) -> str | None:
    """The column a relation's rows are scoped by, or None when it has none."""
    present = set(columns)
    return next((name for name in FACILITY_COLUMNS if name in present), None)


def _read(path: Path) -> AccessFile:
    try:
        data = parse_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise AccessError(f"{path}: not valid YAML: {error}") from None
    try:
        return AccessFile.model_validate(data)
    except ValidationError as error:
        fields = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or '(top level)'}: {item['msg']}"
            for item in error.errors()
        )
        raise AccessError(f"{path}: {fields}") from None


def load_access(directory: Path) -> Access:
    """Every `*.yaml` of `directory` as one model; a missing folder is an empty model (no logins)."""
    customers: dict[str, Customer] = {}
    logins: dict[str, Login] = {}
    owners: dict[str, str] = {}
    where: dict[str, Path] = {}
    paths = sorted(directory.glob("*.yaml")) if directory.is_dir() else []
    for path in paths:
        content = _read(path)
        for index, customer in enumerate(content.customers):
            here = f"{path}: customers.{index}"
            if customer.id in customers:
                raise AccessError(
                    f"{here}.id: customer {customer.id} is also declared in {where[customer.id]}"
                )
            for facility in customer.facilities:
                if facility in owners:
                    raise AccessError(
                        f"{here}.facilities: {facility} already belongs to customer {owners[facility]}"
                    )
                owners[facility] = customer.id
            customers[customer.id] = customer
            where[customer.id] = path
        for index, login in enumerate(content.logins):
            here = f"{path}: logins.{index}"
            if login.user in logins:
                raise AccessError(f"{here}.user: login {login.user} is declared twice")
            logins[login.user] = login
            where[f"login:{login.user}"] = path
    for login in logins.values():
        if login.customer is not None and login.customer not in customers:
            path = where[f"login:{login.user}"]
            raise AccessError(f"{path}: login {login.user}: customer: unknown customer {login.customer}")
    return Access(customers=customers, logins=logins, owners=owners)


__all__ = [
    "FACILITY_COLUMNS",
    "ROLES",
    "Access",
    "AccessError",
    "Customer",
    "Login",
    "Role",
    "SecretRef",
    "can_read_schema",
    "facility_column",
    "load_access",
    "readable_schemas",
]
