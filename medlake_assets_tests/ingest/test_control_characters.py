"""Control characters inside values (NUL, ESC, DEL, ...): stripped or the record rejected, as the source's
`format.control_characters` declares (`reject` by default), in every format; never loaded as they are."""

from __future__ import annotations

import pytest

from medlake_assets.ingest.parsers.csv import parse_csv, parse_csv_arrow
from medlake_assets.ingest.parsers.hl7 import parse_hl7
from medlake_assets.ingest.parsers.xml import parse_xml
from medlake_assets.spec import SourceSpec
from medlake_assets.spec.loader import SpecError, load_sources
from medlake_assets_tests.conftest import SOURCES_DIR
from medlake_assets_tests.ingest.test_xml import Patient, document

HEADER = (
    "facility_id,patient_id,order_id,test_code,test_name,value,unit,reference_range,abnormal_flag,"
    "result_status,result_ts"
)
ROW = "F1,P{n},O{n},2345-7,{name},101,mg/dL,70-99,H,F,2026-11-20T08:00:00"


def lab_csv() -> bytes:
    names = ["Glucose", "Gluc\x00ose", "Hb"]
    rows = [HEADER] + [ROW.format(n=number, name=name) for number, name in enumerate(names, 1)]
    return ("\r\n".join(rows) + "\r\n").encode()


def as_list(values) -> list:
    """Values of `parse_csv` (lists) or `parse_csv_arrow` (Arrow arrays) as a list."""
    return values.to_pylist() if hasattr(values, "to_pylist") else list(values)


def with_policy(spec: SourceSpec, policy: str | None):
    return spec.format if policy is None else spec.format.model_copy(update={"control_characters": policy})


def test_every_source_rejects_control_characters_by_default(sources) -> None:
    assert {name: spec.format.control_characters for name, spec in sources.items()} == dict.fromkeys(
        sources, "reject"
    )


def test_an_unknown_policy_fails_the_metadata_load_naming_the_field(tmp_path) -> None:
    for path in SOURCES_DIR.glob("*.yaml"):
        text = path.read_text()
        if path.name == "lab_results.yaml":
            text = text.replace("  kind: csv\n", "  kind: csv\n  control_characters: keep\n")
        (tmp_path / path.name).write_text(text)
    with pytest.raises(SpecError, match=r"lab_results.yaml: format.csv.control_characters"):
        load_sources(tmp_path)


@pytest.mark.parametrize("parser", [parse_csv, parse_csv_arrow])
def test_csv_record_with_a_nul_is_rejected_with_rule_line_and_column_never_the_value(sources, parser) -> None:
    spec = sources["lab_results"]
    parsed = parser(
        lab_csv(), member="m.csv", columns=spec.columns, fmt=spec.format, encoding="utf-8", fallbacks=[]
    )
    assert as_list(parsed.ordinals) == [1, 3]
    [reject] = parsed.rejects
    assert (reject.record, reject.line, reject.rule, reject.raw) == (2, 3, "csv.control_character", None)
    assert reject.reason == (
        "column test_name holds control character U+0000 (format.control_characters: reject)"
    )


@pytest.mark.parametrize("parser", [parse_csv, parse_csv_arrow])
def test_csv_strip_policy_loads_the_value_without_them(sources, parser) -> None:
    spec = sources["lab_results"]
    parsed = parser(
        lab_csv(),
        member="m.csv",
        columns=spec.columns,
        fmt=with_policy(spec, "strip"),
        encoding="utf-8",
        fallbacks=[],
    )
    assert as_list(parsed.columns["test_name"]) == ["Glucose", "Glucose", "Hb"]
    assert parsed.rejects == []


def hl7_member(name: str) -> bytes:
    def message(control_id: str, family: str) -> str:
        return "\r".join(
            [
                f"MSH|^~\\&|APP|F1|LAKE|X|20261120||ADT^A01^ADT_A01|{control_id}|P|2.5",
                f"PID|1||P1^^^F1^MR||{family}^ALPHA",
            ]
        )

    # MLLP framing (0x0B before, 0x1C after a message) is not a value's control character.
    return ("\x0b" + message("C1", "Doe") + "\x1c\r" + message("C2", name) + "\r").encode()


@pytest.mark.parametrize(
    ("policy", "families", "rules"),
    [
        (None, ["Doe"], ["hl7.control_character"]),
        ("strip", ["Doe", "TESTESC"], []),
    ],
)
def test_hl7_values_with_control_characters(sources, policy, families, rules) -> None:
    spec = sources["adt_events"]
    parsed = parse_hl7(
        hl7_member("TEST\x1bESC"),
        member="m.hl7",
        columns=spec.columns,
        fmt=with_policy(spec, policy),
        encoding="utf-8",
        fallbacks=[],
    )
    assert parsed.columns["family_name"] == families
    rejects = [(r.record, r.line, r.rule, r.raw) for r in parsed.rejects]
    assert rejects == [(2, 3, rule, None) for rule in rules]
    if rules:
        assert parsed.rejects[0].reason == (
            "column family_name holds control character U+001B (format.control_characters: reject)"
        )


@pytest.mark.parametrize(
    ("policy", "families", "rules"),
    [
        (None, [], ["xml.control_character"]),
        ("strip", ["Ramirez"], []),
    ],
)
def test_xml_values_with_control_characters(sources, policy, families, rules) -> None:
    # XML 1.0 allows DEL (U+007F) in text; C0 controls make the document not well-formed (xml.malformed).
    spec = sources["patient_documents"]
    data = document(Patient(family="Rami\x7frez"))
    parsed = parse_xml(data, member="d.xml", columns=spec.columns, fmt=with_policy(spec, policy))
    assert parsed.columns["family_name"] == families
    assert [(r.record, r.rule, r.raw) for r in parsed.rejects] == [(1, rule, None) for rule in rules]
    nul = parse_xml(
        document(Patient(family="Rami&#0;rez")), member="d.xml", columns=spec.columns, fmt=spec.format
    )
    assert [r.rule for r in nul.rejects] == ["xml.malformed"]
