"""The C-CDA parser against synthetic documents, and against hostile XML (DOCTYPEs, entities, bad syntax)."""

from __future__ import annotations

import http.server
import random
import resource
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from medlake_assets.ingest.parsers import xml as xml_parser
from medlake_assets.ingest.parsers.xml import parse_xml
from medlake_assets.ingest.types import ParsedMember
from medlake_assets.spec import ColumnSpec, SourceSpec, XmlFormat, load_source

SOURCES_DIR = Path(__file__).resolve().parents[2] / "metadata" / "sources"
HL7 = {"hl7": "urn:hl7-org:v3"}


@pytest.fixture(scope="module")
def spec() -> SourceSpec:
    defaults = yaml.safe_load((SOURCES_DIR / "_defaults.yaml").read_text(encoding="utf-8"))
    return load_source(SOURCES_DIR / "patient_documents.yaml", defaults)


@dataclass(frozen=True)
class Patient:
    """The values a synthetic document carries; every field is optional in the XML when None."""

    document_root: str | None = "2.16.840.1.113883.19.5.99999.1"
    document_extension: str | None = "DOC-000417"
    document_code: str | None = "34133-9"
    effective_ts: str | None = "20240501101112-0500"
    patient_id: str | None = "MRN-5503"
    second_id: str = "999-00-1234"
    family: str | None = "Ramirez"
    given: str | None = "Ana"
    gender: str | None = "F"
    birth: str | None = "19800214"
    postal_code: str | None = "02139"


def expected(patient: Patient) -> dict[str, list[str | None]]:
    """The row `patient_documents.yaml` should produce for `patient`."""
    return {
        "document_id": [f"{patient.document_root or ''}^{patient.document_extension or ''}"],
        "effective_ts": [patient.effective_ts],
        "document_code": [patient.document_code],
        "patient_id": [patient.patient_id],
        "family_name": [patient.family],
        "given_name": [patient.given],
        "birth_date": [patient.birth],
        "gender": [patient.gender],
        "postal_code": [patient.postal_code],
    }


def _attr(name: str, value: str | None) -> str:
    return f' {name}="{value}"' if value is not None else ""


def clinical_document(patient: Patient, *, xmlns: str = ' xmlns="urn:hl7-org:v3"') -> str:
    """The body (no XML declaration) of a realistic C-CDA Continuity of Care Document.

    The author also has an id and an address, and the patient two ids and two given names, so the
    column XPaths must pick the right ones.
    """
    name = "".join(
        [
            f"<given>{patient.given}</given><given>Maria</given>" if patient.given is not None else "",
            f"<family>{patient.family}</family>" if patient.family is not None else "",
        ]
    )
    addr = (
        f"""<addr use="HP"><streetAddressLine>12 Elm St</streetAddressLine><city>Springfield</city>
          <state>MA</state><postalCode>{patient.postal_code}</postalCode><country>US</country></addr>"""
        if patient.postal_code is not None
        else ""
    )
    return f"""<?xml-stylesheet type="text/xsl" href="CDA.xsl"?>
<!-- synthetic test document, no real patient -->
<ClinicalDocument{xmlns} xmlns:sdtc="urn:hl7-org:sdtc" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <realmCode code="US"/>
  <typeId root="2.16.840.1.113883.1.3" extension="POCD_HD000040"/>
  <templateId root="2.16.840.1.113883.10.20.22.1.1" extension="2015-08-01"/>
  <templateId root="2.16.840.1.113883.10.20.22.1.2" extension="2015-08-01"/>
  <id{_attr("root", patient.document_root)}{_attr("extension", patient.document_extension)}/>
  <code{_attr("code", patient.document_code)} codeSystem="2.16.840.1.113883.6.1" codeSystemName="LOINC"
        displayName="Summarization of Episode Note"/>
  <title>Continuity of Care Document</title>
  <effectiveTime{_attr("value", patient.effective_ts)}/>
  <confidentialityCode code="N" codeSystem="2.16.840.1.113883.5.25"/>
  <languageCode code="en-US"/>
  <recordTarget>
    <patientRole>
      <id root="2.16.840.1.113883.19.5.99999.2"{_attr("extension", patient.patient_id)}/>
      <id root="2.16.840.1.113883.4.1" extension="{patient.second_id}"/>
      {addr}
      <telecom value="tel:+1(555)555-2003" use="HP"/>
      <patient>
        <name use="L">{name}</name>
        <administrativeGenderCode{_attr("code", patient.gender)} codeSystem="2.16.840.1.113883.5.1"/>
        <birthTime{_attr("value", patient.birth)}/>
        <!-- a comment the parser drops -->
      </patient>
    </patientRole>
  </recordTarget>
  <author>
    <time value="20240501101112-0500"/>
    <assignedAuthor>
      <id root="2.16.840.1.113883.4.6" extension="1234567893"/>
      <addr><postalCode>99999</postalCode></addr>
      <assignedPerson><name><given>Henry</given><family>Seven</family></name></assignedPerson>
    </assignedAuthor>
  </author>
  <component>
    <structuredBody>
      <component>
        <section>
          <templateId root="2.16.840.1.113883.10.20.22.2.6.1"/>
          <code code="48765-2" codeSystem="2.16.840.1.113883.6.1"/>
          <title>Allergies</title>
          <text>No known allergies &amp; no known intolerances.</text>
        </section>
      </component>
    </structuredBody>
  </component>
</ClinicalDocument>
"""


def document(patient: Patient, *, encoding: str = "UTF-8", xmlns: str = ' xmlns="urn:hl7-org:v3"') -> bytes:
    body = clinical_document(patient, xmlns=xmlns)
    return f'<?xml version="1.0" encoding="{encoding}"?>\n{body}'.encode(encoding)


def parse(spec: SourceSpec, data: bytes, member: str = "docs/ccd_0001.xml") -> ParsedMember:
    assert isinstance(spec.format, XmlFormat)
    return parse_xml(data, member=member, columns=spec.columns, fmt=spec.format)


def random_patient(rng: random.Random) -> Patient:
    """A synthetic patient from a seeded generator (names from a small made-up list)."""
    return Patient(
        document_root=f"2.16.840.1.113883.19.5.{rng.randint(1, 99999)}",
        document_extension=f"DOC-{rng.randint(0, 10**6):07d}",
        document_code=rng.choice(["34133-9", "11506-3", "18842-5"]),
        effective_ts=f"2024{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{rng.randint(0, 23):02d}3000-0500",
        patient_id=f"MRN-{rng.randint(1, 10**8)}",
        family=rng.choice(["Okafor", "Lindqvist", "Nakamura", "O'Brien", "Dubois"]),
        given=rng.choice(["Ana", "Bo", "Chidi", "Dana", "Eero"]),
        gender=rng.choice(["F", "M", "UN"]),
        birth=f"19{rng.randint(20, 99)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}",
        postal_code=f"{rng.randint(0, 99999):05d}",
    )


# --- well-formed documents ---


def test_every_declared_column_has_its_exact_value(spec: SourceSpec) -> None:
    parsed = parse(spec, document(Patient()))

    assert parsed.columns == {
        "document_id": ["2.16.840.1.113883.19.5.99999.1^DOC-000417"],
        "effective_ts": ["20240501101112-0500"],
        "document_code": ["34133-9"],
        "patient_id": ["MRN-5503"],
        "family_name": ["Ramirez"],
        "given_name": ["Ana"],
        "birth_date": ["19800214"],
        "gender": ["F"],
        "postal_code": ["02139"],
    }
    assert parsed.ordinals == [1]
    assert parsed.rejects == []


@pytest.mark.parametrize("seed", range(8))
def test_seeded_documents_round_trip(spec: SourceSpec, seed: int) -> None:
    patient = random_patient(random.Random(seed))

    parsed = parse(spec, document(patient))

    assert parsed.columns == expected(patient)
    assert parsed.record_count == 1


def test_missing_parts_become_none_and_document_id_keeps_its_separator(spec: SourceSpec) -> None:
    patient = Patient(document_root=None, family=None, given=None, postal_code=None, gender=None, birth=None)

    parsed = parse(spec, document(patient))

    assert parsed.columns["document_id"] == ["^DOC-000417"]
    for name in ("family_name", "given_name", "postal_code", "gender", "birth_date"):
        assert parsed.columns[name] == [None], name
    assert parsed.columns["patient_id"] == ["MRN-5503"]


def test_document_id_of_a_document_without_any_id_is_the_bare_separator(spec: SourceSpec) -> None:
    parsed = parse(spec, document(Patient(document_root=None, document_extension=None)))

    assert parsed.columns["document_id"] == ["^"]


def test_patient_id_is_the_first_id_of_the_first_record_target(spec: SourceSpec) -> None:
    data = document(Patient(patient_id="MRN-FIRST", second_id="SSN-SECOND"))
    second_target = b"<recordTarget><patientRole><id extension='MRN-OTHER'/></patientRole></recordTarget>"
    data = data.replace(b"  <author>", second_target + b"\n  <author>")

    parsed = parse(spec, data)

    assert parsed.columns["patient_id"] == ["MRN-FIRST"]


def test_iso_8859_1_document_keeps_its_accents(spec: SourceSpec) -> None:
    patient = Patient(family="Müller-Ñúñez", given="José", postal_code="75001")
    data = document(patient, encoding="ISO-8859-1")
    assert "Müller".encode("latin-1") in data  # really single-byte encoded, not UTF-8
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")

    parsed = parse(spec, data)

    assert parsed.columns["family_name"] == ["Müller-Ñúñez"]
    assert parsed.columns["given_name"] == ["José"]


def test_utf16_document_with_byte_order_mark(spec: SourceSpec) -> None:
    patient = Patient(family="Øster", given="Zoë")

    parsed = parse(spec, document(patient, encoding="UTF-16"))

    assert parsed.columns == expected(patient)


def test_values_are_kept_as_received(spec: SourceSpec) -> None:
    data = document(Patient()).replace(
        b"<family>Ramirez</family>", b"<family>  Ram&#237;rez &amp; Co </family>"
    )

    parsed = parse(spec, data)

    assert parsed.columns["family_name"] == ["  Ramírez & Co "]


def test_many_records_in_one_member_each_read_relative_to_its_element() -> None:
    patients = [random_patient(random.Random(100 + index)) for index in range(3)]
    bodies = "".join(clinical_document(patient).split("-->", 1)[1] for patient in patients)
    data = f'<?xml version="1.0"?>\n<batch xmlns="urn:hl7-org:v3">{bodies}</batch>'.encode()
    fmt = XmlFormat(record_xpath="/hl7:batch/hl7:ClinicalDocument", namespaces=HL7)
    columns = [
        ColumnSpec(name="document_id", source="concat(hl7:id/@root, '^', hl7:id/@extension)"),
        ColumnSpec(
            name="family_name",
            source="string(hl7:recordTarget/hl7:patientRole/hl7:patient/hl7:name/hl7:family)",
        ),
    ]

    parsed = parse_xml(data, member="batch.xml", columns=columns, fmt=fmt)

    assert parsed.ordinals == [1, 2, 3]
    assert parsed.columns == {
        "document_id": [f"{p.document_root}^{p.document_extension}" for p in patients],
        "family_name": [p.family for p in patients],
    }


def test_non_string_xpath_results_are_converted() -> None:
    fmt = XmlFormat(record_xpath="/hl7:ClinicalDocument", namespaces=HL7)
    columns = [
        ColumnSpec(name="first_template", source="hl7:templateId/@root"),
        ColumnSpec(name="title", source="hl7:title"),
        ColumnSpec(name="templates", source="count(hl7:templateId)"),
        ColumnSpec(name="ratio", source="1 div 4"),
        ColumnSpec(name="has_author", source="boolean(hl7:author)"),
        ColumnSpec(name="nothing", source="hl7:legalAuthenticator"),
    ]

    parsed = parse_xml(document(Patient()), member="m.xml", columns=columns, fmt=fmt)

    assert parsed.columns == {
        "first_template": ["2.16.840.1.113883.10.20.22.1.1"],
        "title": ["Continuity of Care Document"],
        "templates": ["2"],
        "ratio": ["0.25"],
        "has_author": ["true"],
        "nothing": [None],
    }


def test_invalid_xpath_in_metadata_is_a_value_error_naming_the_column() -> None:
    fmt = XmlFormat(record_xpath="/hl7:ClinicalDocument", namespaces=HL7)
    columns = [ColumnSpec(name="broken", source="string(hl7:id/@root")]

    with pytest.raises(ValueError, match=r"^column broken: invalid XPath"):
        parse_xml(document(Patient()), member="m.xml", columns=columns, fmt=fmt)


# --- documents that load no record ---


def assert_single_reject(
    parsed: ParsedMember, spec: SourceSpec, rule: str, *, record: int | None = 1
) -> None:
    assert parsed.columns == {name: [] for name in spec.column_names()}
    assert parsed.ordinals == []
    assert [(reject.rule, reject.record, reject.raw) for reject in parsed.rejects] == [(rule, record, None)]
    assert parsed.rejects[0].member == "docs/ccd_0001.xml"


def test_missing_namespace_matches_no_record(spec: SourceSpec) -> None:
    parsed = parse(spec, document(Patient(), xmlns=""))

    assert_single_reject(parsed, spec, "xml.no_record", record=None)
    assert parsed.rejects[0].reason == "no element matches the record XPath '/hl7:ClinicalDocument'"
    assert parsed.rejects[0].line is None


def test_malformed_document_is_one_reject_with_the_error_line(spec: SourceSpec) -> None:
    data = document(Patient()).replace(
        b"<title>Continuity of Care Document</title>", b"<title>Continuity</titel>"
    )
    error_line = data[: data.index(b"</titel>")].count(b"\n") + 1

    parsed = parse(spec, data)

    assert_single_reject(parsed, spec, "xml.malformed")
    reject = parsed.rejects[0]
    assert reject.line == error_line
    assert reject.reason.startswith("not well-formed XML: libxml2 ERR_TAG_NAME_MISMATCH at line ")


def test_malformed_reason_never_quotes_document_text(spec: SourceSpec) -> None:
    # libxml2's own message would be "Entity 'Ramirez' not defined", naming the value.
    data = document(Patient()).replace(b"<family>Ramirez</family>", b"<family>&Ramirez;</family>")

    parsed = parse(spec, data)

    assert_single_reject(parsed, spec, "xml.malformed")
    assert "ERR_UNDECLARED_ENTITY" in parsed.rejects[0].reason
    assert "Ramirez" not in parsed.rejects[0].reason


@pytest.mark.parametrize("data", [b"", b"   \n", b'<?xml version="1.0"?>\n', b"MSH|^~\\&|not xml"])
def test_empty_or_non_xml_member_is_malformed(spec: SourceSpec, data: bytes) -> None:
    assert_single_reject(parse(spec, data), spec, "xml.malformed")


def test_truncated_document_is_malformed(spec: SourceSpec) -> None:
    data = document(Patient())

    assert_single_reject(parse(spec, data[: len(data) // 2]), spec, "xml.malformed")


def test_many_record_member_that_is_malformed_is_one_reject() -> None:
    data = b'<?xml version="1.0"?><batch xmlns="urn:hl7-org:v3"><ClinicalDocument/><ClinicalDocument></batch>'
    fmt = XmlFormat(record_xpath="/hl7:batch/hl7:ClinicalDocument", namespaces=HL7)
    columns = [ColumnSpec(name="code", source="string(hl7:code/@code)")]

    parsed = parse_xml(data, member="batch.xml", columns=columns, fmt=fmt)

    assert parsed.columns == {"code": []}
    assert [(r.rule, r.record, r.line) for r in parsed.rejects] == [("xml.malformed", 1, 1)]


# --- hostile documents: refused before any entity is declared, expanded or fetched ---


def body_with(reference: str) -> str:
    """A valid C-CDA body whose family name is `reference` (an entity reference in the attacks)."""
    return clinical_document(Patient()).replace("<family>Ramirez</family>", f"<family>{reference}</family>")


def billion_laughs(levels: int = 10) -> bytes:
    entities = ['<!ENTITY lol0 "lol">']
    for level in range(1, levels):
        entities.append(f'<!ENTITY lol{level} "' + f"&lol{level - 1};" * 10 + '">')
    doctype = "<!DOCTYPE ClinicalDocument [\n" + "\n".join(entities) + "\n]>"
    return f'<?xml version="1.0"?>\n{doctype}\n{body_with(f"&lol{levels - 1};")}'.encode()


def parameter_laughs(levels: int = 10) -> bytes:
    entities = ['<!ENTITY % pe0 "lol">']
    for level in range(1, levels):
        entities.append(f'<!ENTITY % pe{level} "' + f"%pe{level - 1};" * 10 + '">')
    doctype = (
        "<!DOCTYPE ClinicalDocument [\n" + "\n".join(entities) + f'\n<!ENTITY laugh "%pe{levels - 1};">\n]>'
    )
    return f'<?xml version="1.0"?>\n{doctype}\n{body_with("&laugh;")}'.encode()


def peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


@pytest.mark.parametrize("attack", [billion_laughs, parameter_laughs], ids=["general", "parameter"])
def test_entity_expansion_bombs_are_refused_without_expanding(spec: SourceSpec, attack) -> None:
    data = attack()
    before = peak_rss_kib()

    parsed = parse(spec, data)

    # Ten levels of ten would expand to 3 GB; the peak resident size must not move by anything near that.
    assert peak_rss_kib() - before < 50 * 1024
    assert_single_reject(parsed, spec, "xml.doctype")
    assert parsed.rejects[0].reason == "a DOCTYPE is not accepted (DTDs and entities are refused)"
    assert "lol" not in repr(parsed)


def test_doctype_is_refused_before_its_internal_subset_is_read(spec: SourceSpec) -> None:
    # The subset is not even well-formed: were it read, this would be `xml.malformed`.
    data = f'<?xml version="1.0"?>\n<!DOCTYPE ClinicalDocument [ <!ENTITY broken \n{body_with("x")}'.encode()

    assert_single_reject(parse(spec, data), spec, "xml.doctype")


def test_plain_doctype_without_entities_is_refused_too(spec: SourceSpec) -> None:
    data = f'<?xml version="1.0"?>\n<!DOCTYPE ClinicalDocument>\n{body_with("Ramirez")}'.encode()

    assert_single_reject(parse(spec, data), spec, "xml.doctype")


def test_external_file_entity_is_not_read(spec: SourceSpec, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("MARKER-7f3a9c-not-for-output", encoding="utf-8")
    passwd = Path("/etc/passwd")
    passwd_first_line = (
        passwd.read_text(encoding="utf-8").splitlines()[0] if passwd.exists() else "root:x:0:0"
    )

    for target in (passwd.as_uri(), secret.as_uri()):
        doctype = f'<!DOCTYPE ClinicalDocument [ <!ENTITY xxe SYSTEM "{target}"> ]>'
        data = f'<?xml version="1.0"?>\n{doctype}\n{body_with("&xxe;")}'.encode()

        parsed = parse(spec, data)

        assert_single_reject(parsed, spec, "xml.doctype")
        assert "MARKER-7f3a9c" not in repr(parsed)
        assert passwd_first_line not in repr(parsed)


class _RecordingHandler(http.server.BaseHTTPRequestHandler):
    hits: list[str]

    def do_GET(self) -> None:
        self.hits.append(self.path)
        body = b'<!ENTITY leaked "FETCHED-BY-PARSER">'
        self.send_response(200)
        self.send_header("Content-Type", "application/xml-dtd")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def http_server() -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server serving an evil DTD; yields its base URL and the paths it was asked for."""
    hits: list[str] = []
    handler = type("Handler", (_RecordingHandler,), {"hits": hits})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_loopback_server_does_record_a_fetch(http_server: tuple[str, list[str]]) -> None:
    url, hits = http_server
    with urllib.request.urlopen(f"{url}/probe.dtd") as response:
        assert response.read() == b'<!ENTITY leaked "FETCHED-BY-PARSER">'
    assert hits == ["/probe.dtd"]


@pytest.mark.parametrize(
    ("doctype", "reference"),
    [
        ('<!DOCTYPE ClinicalDocument [ <!ENTITY xxe SYSTEM "{url}/general.xml"> ]>', "&xxe;"),
        ('<!DOCTYPE ClinicalDocument SYSTEM "{url}/external.dtd">', "&leaked;"),
        ('<!DOCTYPE ClinicalDocument PUBLIC "-//EVIL//DTD" "{url}/public.dtd">', "&leaked;"),
        ('<!DOCTYPE ClinicalDocument [ <!ENTITY % ext SYSTEM "{url}/parameter.dtd"> %ext; ]>', "&leaked;"),
    ],
    ids=["general-entity", "external-dtd", "public-dtd", "parameter-entity"],
)
def test_network_entities_and_dtds_are_not_fetched(
    spec: SourceSpec, http_server: tuple[str, list[str]], doctype: str, reference: str
) -> None:
    url, hits = http_server
    data = f'<?xml version="1.0"?>\n{doctype.format(url=url)}\n{body_with(reference)}'.encode()

    parsed = parse(spec, data)

    assert_single_reject(parsed, spec, "xml.doctype")
    assert "FETCHED-BY-PARSER" not in repr(parsed)
    assert hits == []


PLAIN_DOCTYPE = "<!DOCTYPE ClinicalDocument>"


@pytest.mark.parametrize(
    "data",
    [
        f'<?xml version="1.0" encoding="UTF-16"?>\n{PLAIN_DOCTYPE}\n{body_with("x")}'.encode("utf-16"),
        f'<?xml version="1.0" encoding="UTF-16BE"?>\n{PLAIN_DOCTYPE}\n{body_with("x")}'.encode("utf-16-be"),
        f'<?xml version="1.0" encoding="UTF-16LE"?>\n{PLAIN_DOCTYPE}\n{body_with("x")}'.encode("utf-16-le"),
        f'<?xml version="1.0" encoding="ISO-8859-1"?>\n{PLAIN_DOCTYPE}\n{body_with("x")}'.encode("latin-1"),
        f"\ufeff{PLAIN_DOCTYPE}\n{body_with('x')}".encode(),
    ],
    ids=["utf-16-bom", "utf-16be", "utf-16le", "latin-1", "utf-8-bom"],
)
def test_a_doctype_is_refused_in_any_encoding(spec: SourceSpec, data: bytes) -> None:
    # The DOCTYPE's bytes are not "<!DOCTYPE" in the wide encodings: the prolog is parsed to find it.
    assert_single_reject(parse(spec, data), spec, "xml.doctype")


@pytest.mark.parametrize(
    ("data", "skipped"),
    [
        (document(Patient()), True),
        (document(Patient(family="Müller"), encoding="ISO-8859-1"), True),
        (clinical_document(Patient()).encode(), True),  # no declaration: UTF-8
        (document(Patient(), encoding="UTF-16"), False),
        (f'<?xml version="1.0"?>\n<!-- <!DOCTYPE x> -->\n{body_with("x")}'.encode(), False),
    ],
    ids=["utf-8", "latin-1", "undeclared", "utf-16", "doctype-in-a-comment"],
)
def test_the_prolog_parse_is_skipped_for_the_documents_feeds_send(
    spec: SourceSpec, data: bytes, skipped: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    scanner, prolog_parses = xml_parser._PrologScanner, []
    monkeypatch.setattr(xml_parser, "_PrologScanner", lambda: prolog_parses.append(data) or scanner())
    parsed = parse(spec, data)

    assert (prolog_parses == []) is skipped
    assert parsed.rejects == [] and len(parsed.ordinals) == 1


def prologs() -> st.SearchStrategy[bytes]:
    """Documents whose prolog varies the ways a DOCTYPE could hide from a look at the bytes: encodings
    declared or marked (wide, EBCDIC, UTF-7, ASCII-compatible), a DOCTYPE where it counts or only in a
    comment or a value, odd case, declarations cut short."""
    encodings = ["UTF-8", "utf-16", "UTF-16LE", "UTF-16BE", "ISO-8859-1", "windows-1252", "UTF-7", "cp037"]
    doctypes = ["", PLAIN_DOCTYPE, "<!doctype ClinicalDocument>", "<!-- <!DOCTYPE x> -->", "<!DOCTYPE"]

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        codec = draw(st.sampled_from(encodings))
        declared = draw(st.sampled_from(["", codec, *encodings]))
        declaration = f'<?xml version="1.0" encoding="{declared}"?>' if declared else ""
        declaration = draw(st.sampled_from([declaration, '<?xml version="1.0"?>', "<?xml version=", ""]))
        body = body_with(draw(st.sampled_from(["x", "&lt;!DOCTYPE x&gt;", "<![CDATA[<!DOCTYPE x>]]>"])))
        text = f"\n{draw(st.sampled_from(doctypes))}\n{body}"
        # The declaration in the body's encoding, or in ASCII before a body in another one.
        head = declaration.encode() if draw(st.booleans()) else declaration.encode(codec)
        return draw(st.sampled_from([b"", b"\xef\xbb\xbf"])) + head + text.encode(codec)

    return build()


@settings(max_examples=300, deadline=None)
@given(prologs())
def test_the_bytes_shortcut_never_changes_what_a_document_gives(spec: SourceSpec, data: bytes) -> None:
    shortcut = parse(spec, data)
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(xml_parser, "_no_doctype_bytes", lambda data: False)
        parsed_prolog = parse(spec, data)

    assert shortcut == parsed_prolog


def test_an_accepted_document_then_still_parses(spec: SourceSpec) -> None:
    # Refusing hostile documents leaves no state behind that would break the next, benign one.
    parse(spec, billion_laughs())
    parse(spec, b"<broken")

    assert parse(spec, document(Patient())).columns == expected(Patient())
