"""The access model: customers, facilities and logins from `metadata/access/*.yaml`."""

from __future__ import annotations

from pathlib import Path

import pytest

from medlake_assets.lake.settings import DEFAULT_ACCESS_DIR, load_settings
from medlake_assets.spec.access import (
    AccessError,
    can_read_schema,
    facility_column,
    load_access,
    readable_schemas,
)

CUSTOMERS = """
customers:
  - {id: acme, name: Acme, facilities: [F1, F2]}
  - {id: zenith, name: Zenith, facilities: [F3]}
"""
LOGINS = """
logins:
  - {user: ops, role: operator, password: {env: OPS_PW}}
  - {user: acme_bi, role: customer, customer: acme, password: {env: ACME_PW}}
  - {user: science, role: deid, password: {env: SCIENCE_PW}}
  - {user: acme_science, role: deid, customer: acme, password: {env: ACME_SCIENCE_PW}}
"""


def _folder(tmp_path: Path, **files: str) -> Path:
    for name, text in files.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    return tmp_path


def test_files_of_a_folder_make_one_model(tmp_path: Path) -> None:
    access = load_access(_folder(tmp_path, customers=CUSTOMERS, logins=LOGINS))
    assert sorted(access.customers) == ["acme", "zenith"]
    assert access.owners == {"F1": "acme", "F2": "acme", "F3": "zenith"}
    assert access.facility_scope(access.logins["acme_bi"]) == {"F1", "F2"}
    assert access.facility_scope(access.logins["acme_science"]) == {"F1", "F2"}
    assert access.facility_scope(access.logins["ops"]) is None
    assert access.facility_scope(access.logins["science"]) is None
    assert access.login("nobody") is None


def test_roles_read_their_schemas_only(tmp_path: Path) -> None:
    access = load_access(_folder(tmp_path, customers=CUSTOMERS, logins=LOGINS))
    ops, customer, deid = (access.logins[user] for user in ("ops", "acme_bi", "science"))
    assert readable_schemas(ops) is None and can_read_schema(ops, "meta")
    assert [can_read_schema(customer, s) for s in ("silver", "bronze", "gold", "meta", "audit")] == [
        True,
        True,
        True,
        True,
        False,
    ]
    assert sorted(readable_schemas(deid)) == ["gold", "silver_deid"]
    assert not can_read_schema(deid, "silver") and not can_read_schema(deid, "bronze")


def test_password_is_resolved_from_its_env_var_only(tmp_path: Path) -> None:
    access = load_access(_folder(tmp_path, customers=CUSTOMERS, logins=LOGINS))
    ref = access.logins["acme_bi"].password
    assert ref.resolve({"ACME_PW": "s3cret"}) == "s3cret"
    assert ref.resolve({"ACME_PW": ""}) is None
    assert ref.resolve({}) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "logins: [{user: x, role: customer, password: {env: X}}]",
            "a customer login must name its customer",
        ),
        (
            "customers: [{id: a, name: A, facilities: [F1]}]\n"
            "logins: [{user: x, role: operator, customer: a, password: {env: X}}]",
            "an operator login sees every facility",
        ),
        ("logins: [{user: x, role: admin, password: {env: X}}]", "logins.0.role"),
        ("logins: [{user: x, role: operator, password: hunter2}]", "logins.0.password"),
        ("logins: [{user: x, role: operator, password: {env: lower}}]", "logins.0.password.env"),
        ("logins: [{user: X-Y, role: operator, password: {env: X}}]", "logins.0.user"),
        ("customers: [{id: a, name: A, facilities: []}]", "customers.0.facilities"),
        ("customers: [{id: a, name: A, facilities: [F1, F1]}]", "listed more than once"),
        ("customers: [{id: a, name: A, facilities: [F1], region: x}]", "customers.0.region"),
        (
            "customers: [{id: a, name: A, facilities: [F1]}, {id: b, name: B, facilities: [F1]}]",
            "F1 already belongs",
        ),
        (
            "customers: [{id: a, name: A, facilities: [F1]}, {id: a, name: B, facilities: [F2]}]",
            "also declared",
        ),
        (
            "logins: [{user: x, role: customer, customer: ghost, password: {env: X}}]",
            "unknown customer ghost",
        ),
        (
            "logins:\n  - {user: x, role: deid, password: {env: X}}\n"
            "  - {user: x, role: deid, password: {env: Y}}",
            "declared twice",
        ),
        ("logins: [oops", "not valid YAML"),
    ],
)
def test_invalid_access_names_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    _folder(tmp_path, bad=text)
    with pytest.raises(AccessError) as raised:
        load_access(tmp_path)
    assert str(tmp_path / "bad.yaml") in str(raised.value)
    assert message in str(raised.value)


def test_a_secret_never_appears_in_an_error(tmp_path: Path) -> None:
    _folder(tmp_path, bad="logins: [{user: x, role: operator, password: {env: X, value: hunter2}}]")
    with pytest.raises(AccessError) as raised:
        load_access(tmp_path)
    assert "logins.0.password.value" in str(raised.value)
    assert "hunter2" not in str(raised.value)


def test_missing_folder_is_an_empty_model(tmp_path: Path) -> None:
    access = load_access(tmp_path / "absent")
    assert access.logins == {} and access.customers == {}


def test_facility_column_prefers_lineage() -> None:
    assert facility_column(["facility_id", "_facility", "x"]) == "_facility"
    assert facility_column(["facility_id", "x"]) == "facility_id"
    assert facility_column(["facility", "x"]) == "facility"
    assert facility_column(["unit", "beds"]) is None


def test_shipped_demo_access_matches_the_demo_facilities() -> None:
    assert load_settings({}).access_dir == DEFAULT_ACCESS_DIR.resolve()
    access = load_access(DEFAULT_ACCESS_DIR)
    # `make run` generates F0001-F0006: each belongs to exactly one customer.
    assert sorted(access.owners) == [f"F{n:04d}" for n in range(1, 7)]
    assert {login.role for login in access.logins.values()} == {"operator", "customer", "deid"}
    assert access.logins["medlake"].password.env == "MEDLAKE_SQL_PASSWORD"
