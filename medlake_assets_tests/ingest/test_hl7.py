"""HL7 v2 parser: synthetic ADT messages built here, exact values, rule codes and line numbers."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from medlake_assets.ingest.parsers import hl7
from medlake_assets.ingest.parsers.hl7 import (
    Hl7Path,
    Hl7PathError,
    _read_clean,
    _Reading,
    parse_hl7,
    parse_hl7_by_message,
    parse_hl7_path,
)
from medlake_assets.ingest.types import MemberRejected, ParsedMember, RecordReject
from medlake_assets.spec import ColumnSpec, Hl7Format, load_source

SOURCES_DIR = Path(__file__).resolve().parents[2] / "metadata" / "sources"
MEMBER = "feed/adt_0001.txt"
ENC = "^~\\&"


def segment(name: str, fields: dict[int, str], sep: str = "|") -> str:
    """A segment with `fields[n]` as field n (1-based) and empty fields in between."""
    return sep.join([name] + [fields.get(n, "") for n in range(1, max(fields) + 1)])


def msh(
    control_id: str,
    message_type: str = "ADT^A01^ADT_A01",
    *,
    charset: str = "",
    sep: str = "|",
    enc: str = ENC,
    ts: str = "20240305083000",
) -> str:
    # MSH-1 is the separator itself, so the list starts at MSH-2; MSH-4 uses the message's own `^`.
    facility = enc[0].join(["SYNFAC", "2.16.840.1.113883.9.999", "ISO"])
    fields = [enc, "SYNADT", facility, "MEDLAKE", "LAKE", ts, "", message_type]
    fields += [control_id, "P", "2.5.1", "", "", "AL", "NE", "", charset]
    return "MSH" + sep + sep.join(fields).rstrip(sep)


def adt(control_id: str, event: str = "A01", *, pid: dict[int, str] | None = None, charset: str = "") -> str:
    """A small ADT message with `\\r` terminators."""
    pid = pid or {1: "1", 3: "SYN000001^^^SYNHOSP^MR", 5: "TESTPATIENT^ALPHA", 7: "19700101", 8: "F"}
    return "\r".join(
        [
            msh(control_id, f"ADT^{event}^ADT_A01", charset=charset),
            f"EVN|{event}|20240305083000",
            segment("PID", pid),
            segment("PV1", {1: "1", 2: "I", 3: "ICU^101^B", 19: "SYNV0001", 44: "20240305082500"}),
        ]
    )


def columns(**sources: str) -> list[ColumnSpec]:
    return [ColumnSpec(name=name, source=source) for name, source in sources.items()]


def parse(
    data: bytes | str,
    cols: list[ColumnSpec],
    *,
    fmt: Hl7Format | None = None,
    encoding: str = "utf-8",
    fallbacks: tuple[str, ...] = ("cp1252", "latin-1"),
) -> ParsedMember:
    """`parse_hl7`'s records, after checking that they equal the message-by-message reading's (whichever way
    `parse_hl7` read the member: every test here holds both to the same records)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    given = {"member": MEMBER, "columns": cols, "fmt": fmt or Hl7Format()}
    parsed = parse_hl7(raw, **given, encoding=encoding, fallbacks=fallbacks)
    assert parsed == parse_hl7_by_message(raw, **given, encoding=encoding, fallbacks=fallbacks)
    return parsed


# --- the adt_events source, every column ---------------------------------------------------------------


def adt_events_member() -> bytes:
    """One A01..A08 sequence for one synthetic patient plus a lab result the source does not accept."""
    messages = [
        [
            msh("SYNCTL0001", "ADT^A01^ADT_A01", charset="UNICODE UTF-8", ts="20240305083000"),
            "EVN|A01|20240305083000",
            segment(
                "PID",
                {
                    1: "1",
                    3: "SYN000101^^^SYNHOSP^MR~SYNALT0101^^^SYNALT^PI",
                    5: "TESTPATIENT^ALPHA^Q",
                    7: "19700101",
                    8: "F",
                    11: "1 SYNTHETIC WAY^^TESTVILLE^ZZ^00000",
                },
            ),
            segment(
                "PV1",
                {
                    1: "1",
                    2: "I",
                    3: "ICU^101^B^SYNFAC",
                    7: "9999^TESTDOC^ONE",
                    10: "MED",
                    19: "SYNV0001^^^SYNFAC^VN",
                    44: "20240305082500",
                    45: '""',
                },
            ),
            "ZPV|SYNZ|TEST^ONLY",
        ],
        [
            msh("SYNCTL0002", "ADT^A02^ADT_A02", ts="20240305120000"),
            "EVN|A02|20240305120000",
            segment(
                "PID", {1: "1", 3: "SYN000101^^^SYNHOSP^MR", 5: "TESTPATIENT^ALPHA^Q", 7: "19700101", 8: "F"}
            ),
            segment(
                "PV1",
                {1: "1", 2: "I", 3: "MEDSURG^204^A", 6: "ICU^101^B", 19: "SYNV0001", 44: "20240305082500"},
            ),
            "ZPV|SYNZ",
        ],
        [
            msh("SYNLAB0001", "ORU^R01^ORU_R01", ts="20240305130000"),
            segment("PID", {1: "1", 3: "SYN000101^^^SYNHOSP^MR"}),
            "OBR|1||SYNORD1|00000^SYNTHETIC PANEL",
            "OBX|1|NM|00000^SYNTHETIC TEST||42|u",
        ],
        [
            msh("SYNCTL0003", "ADT^A03^ADT_A03", ts="20240307110500"),
            "EVN|A03|20240307110500",
            segment(
                "PID", {1: "1", 3: "SYN000101^^^SYNHOSP^MR", 5: "TESTPATIENT^ALPHA^Q", 7: "19700101", 8: "F"}
            ),
            segment(
                "PV1",
                {
                    1: "1",
                    2: "I",
                    3: "MEDSURG^204^A",
                    19: "SYNV0001",
                    44: "20240305082500",
                    45: "20240307110000",
                },
            ),
        ],
        [
            msh("SYNCTL0004", "ADT^A04^ADT_A01", ts="20240308090000"),
            "EVN|A04|20240308090000",
            segment(
                "PID", {1: "1", 3: "SYN000202^^^SYNHOSP^MR", 5: "TESTPATIENT^BETA", 7: "19851231", 8: "M"}
            ),
            segment("PV1", {1: "1", 2: "O", 3: "CLINIC^3", 19: "SYNV0002", 44: "20240308085500"}),
            "ZPV|SYNZ|OUTPATIENT",
        ],
        [
            msh("SYNCTL0005", "ADT^A08^ADT_A01", ts="20240308091500"),
            "EVN|A08|20240308091500",
            segment(
                "PID",
                {1: "1", 3: "SYN000202^^^SYNHOSP^MR", 5: "TESTPATIENT-NEW^BETA", 7: "19851231", 8: '""'},
            ),
            segment("PV1", {1: "1", 2: "O", 3: "CLINIC^3"}),
        ],
    ]
    return "\r".join("\r".join(message) for message in messages).encode("utf-8") + b"\r"


def test_adt_events_source_every_column_exact() -> None:
    defaults = yaml.safe_load((SOURCES_DIR / "_defaults.yaml").read_text(encoding="utf-8"))
    spec = load_source(SOURCES_DIR / "adt_events.yaml", defaults)
    assert isinstance(spec.format, Hl7Format)

    parsed = parse(
        adt_events_member(),
        spec.columns,
        fmt=spec.format,
        encoding=spec.landing.encoding,
        fallbacks=tuple(spec.landing.encoding_fallbacks),
    )

    # The ORU^R01 (message 3) is not an accepted type: quarantined with that rule, never dropped unseen.
    assert [(r.record, r.line, r.rule) for r in parsed.rejects] == [(3, 11, "hl7.message_type_not_accepted")]
    assert parsed.ordinals == [1, 2, 4, 5, 6]
    assert parsed.columns == {
        "message_control_id": ["SYNCTL0001", "SYNCTL0002", "SYNCTL0003", "SYNCTL0004", "SYNCTL0005"],
        "message_type": ["ADT", "ADT", "ADT", "ADT", "ADT"],
        "trigger_event": ["A01", "A02", "A03", "A04", "A08"],
        "message_ts": [
            "20240305083000",
            "20240305120000",
            "20240307110500",
            "20240308090000",
            "20240308091500",
        ],
        "sending_facility": ["SYNFAC"] * 5,
        "charset": ["UNICODE UTF-8", None, None, None, None],
        "patient_id": ["SYN000101", "SYN000101", "SYN000101", "SYN000202", "SYN000202"],
        "family_name": ["TESTPATIENT", "TESTPATIENT", "TESTPATIENT", "TESTPATIENT", "TESTPATIENT-NEW"],
        "given_name": ["ALPHA", "ALPHA", "ALPHA", "BETA", "BETA"],
        "birth_date": ["19700101", "19700101", "19700101", "19851231", "19851231"],
        "sex": ["F", "F", "F", "M", None],
        "patient_class": ["I", "I", "I", "O", "O"],
        "point_of_care": ["ICU", "MEDSURG", "MEDSURG", "CLINIC", "CLINIC"],
        "room": ["101", "204", "204", "3", "3"],
        "bed": ["B", "A", "A", None, None],
        "visit_number": ["SYNV0001", "SYNV0001", "SYNV0001", "SYNV0002", None],
        "admit_ts": ["20240305082500", "20240305082500", "20240305082500", "20240308085500", None],
        "discharge_ts": [None, None, "20240307110000", None, None],
    }
    assert parsed.record_count == 5


# --- segment terminators, blank lines, whitespace, envelopes ---------------------------------------------


def seeded_messages(count: int, seed: int = 7) -> tuple[list[str], dict[str, list[str | None]]]:
    """`count` synthetic ADT messages (segments joined by `\\r`) and the values PID/PV1 columns must give."""
    rng = random.Random(seed)
    messages, expected = [], {"control": [], "patient": [], "family": [], "bed": [], "visit": []}
    for number in range(1, count + 1):
        event = rng.choice(["A01", "A02", "A03", "A04", "A08"])
        patient = f"SYN{rng.randrange(10**6):06d}"
        family = f"TESTPATIENT{rng.randrange(1000)}"
        bed = rng.choice("ABCD")
        visit = f"SYNV{rng.randrange(10**6):06d}"
        control = f"SYNCTL{number:05d}"
        pid = {1: "1", 3: f"{patient}^^^SYNHOSP^MR", 5: f"{family}^SYNTH", 7: "19700101", 8: "U"}
        messages.append(
            "\r".join(
                [
                    msh(control, f"ADT^{event}^ADT_A01"),
                    f"EVN|{event}|20240305083000",
                    segment("PID", pid),
                    segment("PV1", {1: "1", 2: "I", 3: f"ICU^101^{bed}", 19: visit}),
                    "ZPV|SYNZ",
                ]
            )
        )
        for key, value in zip(expected, [control, patient, family, bed, visit], strict=True):
            expected[key].append(value)
    return messages, expected


SEEDED_COLUMNS = columns(control="MSH-10", patient="PID-3.1", family="PID-5.1", bed="PV1-3.3", visit="PV1-19")


@pytest.mark.parametrize("terminator", ["\r", "\n", "\r\n"])
def test_each_segment_terminator(terminator: str) -> None:
    messages, expected = seeded_messages(4)
    data = terminator.join(message.replace("\r", terminator) for message in messages) + terminator
    parsed = parse(data, SEEDED_COLUMNS)
    assert parsed.rejects == []
    assert parsed.ordinals == [1, 2, 3, 4]
    assert parsed.columns == expected


def test_mixed_terminators_blank_lines_trailing_whitespace_and_mllp_framing() -> None:
    messages, expected = seeded_messages(3, seed=11)
    terminators = ["\r", "\n", "\r\n"]
    parts = []
    for index, message in enumerate(messages):
        segments = message.split("\r")
        # Rotate terminators inside each message, pad with trailing blanks, add blank lines in between.
        lines = [seg + " \t" * (n % 2) for n, seg in enumerate(segments)]
        body = "".join(line + terminators[(index + n) % 3] for n, line in enumerate(lines))
        parts.append("\x0b" + body + "\x1c\r\n  \n\r" if index == 1 else body + "\n   \n")
    parsed = parse("\r\n\n" + "".join(parts), SEEDED_COLUMNS)
    assert parsed.rejects == []
    assert parsed.ordinals == [1, 2, 3]
    assert parsed.columns == expected


def test_line_numbers_count_every_kind_of_terminator() -> None:
    good = "MSH|^~\\&|A|B|C|D|20240305||ADT^A01|SYNCTL1|P|2.5.1\r\nEVN|A01\rPID|1||SYN1\n"
    bad = "MSH|^~\\&|A|B|C|D|20240305||ADT^A01|SYNCTL2|P|2.5.1\nPID|1||SYN2\r\nNOT A SEGMENT\r"
    # good: lines 1-3; blank line 4; bad: lines 5-7, its offending line is 7.
    parsed = parse(good + "\r\n" + bad + "\n" + good.replace("SYNCTL1", "SYNCTL3"), columns(id="MSH-10"))
    assert parsed.columns == {"id": ["SYNCTL1", "SYNCTL3"]}
    assert parsed.ordinals == [1, 3]
    assert parsed.rejects == [
        RecordReject(
            member=MEMBER,
            record=2,
            line=5,
            rule="hl7.bad_segment",
            reason="line 7 is not a segment (3 letters or digits, then the field separator)",
            raw="MSH|^~\\&|A|B|C|D|20240305||ADT^A01|SYNCTL2|P|2.5.1\rPID|1||SYN2\rNOT A SEGMENT",
        )
    ]


def test_batch_envelopes_are_skipped_and_their_messages_parsed() -> None:
    messages, expected = seeded_messages(4, seed=3)
    data = "\r".join(
        [
            "FHS|^~\\&|SYNADT|SYNFAC|||20240305",
            "BHS|^~\\&|SYNADT|SYNFAC|||20240305",
            messages[0],
            messages[1],
            "BTS|2",
            "BHS|^~\\&|SYNADT|SYNFAC|||20240305",
            messages[2],
            messages[3],
            "BTS|2",
            "FTS|2",
        ]
    )
    parsed = parse(data, SEEDED_COLUMNS)
    assert parsed.rejects == []
    assert parsed.ordinals == [1, 2, 3, 4]
    assert parsed.columns == expected


def test_text_before_the_first_msh_is_quarantined_and_messages_still_load() -> None:
    messages, expected = seeded_messages(2, seed=5)
    data = "FHS|^~\\&|SYNADT\r\nSYNTHETIC HEADER LINE\r\nPID|1||SYN999\r\n" + "\r".join(messages)
    parsed = parse(data, SEEDED_COLUMNS)
    assert parsed.columns == expected
    assert parsed.ordinals == [1, 2]
    assert parsed.rejects == [
        RecordReject(
            member=MEMBER,
            record=None,
            line=2,
            rule="hl7.orphan_segments",
            reason="lines outside any message (before its MSH segment or after a batch trailer) were skipped",
            raw="SYNTHETIC HEADER LINE\rPID|1||SYN999",
        )
    ]


@pytest.mark.parametrize(
    "data",
    [b"", b"  \r\n\n\t", b"FHS|^~\\&\rBHS|^~\\&\rBTS|0\rFTS|1\r", b"PID|1||SYN1\rPV1|1|I\r", b"\xef\xbb\xbf"],
    ids=["empty", "whitespace", "envelopes-only", "segments-without-msh", "bom-only"],
)
def test_member_without_msh_is_rejected(data: bytes) -> None:
    with pytest.raises(MemberRejected) as caught:
        parse(data, columns(id="MSH-10"))
    assert caught.value.rule == "hl7.no_msh"
    assert caught.value.member == MEMBER
    assert str(caught.value) == (
        f"hl7.no_msh: member {MEMBER!r} no MSH segment found: the member holds no HL7 v2 message"
    )


# --- delimiters and escapes -----------------------------------------------------------------------------


def test_msh_field_numbering_and_per_message_delimiters() -> None:
    standard = adt("SYNCTL1")
    hash_components = "\r".join(
        [msh("SYNCTL2", "ADT#A08#ADT_A01", enc="#~\\&"), "PID|1||SYN000002#^#NOTSPLIT||TESTPATIENT#GAMMA"]
    )
    bang_fields = "\r".join(
        [msh("SYNCTL3", "ADT^A04", sep="!"), "PID!1!!SYN000003^^^SYNHOSP!!TESTPATIENT^DELTA|PIPE"]
    )
    cols = columns(
        sep="MSH-1",
        enc="MSH-2",
        app="MSH-3",
        facility="MSH-4.1",
        facility_oid="MSH-4.2",
        event="MSH-9.2",
        patient="PID-3.1",
        second="PID-3.2",
        family="PID-5.1",
        given="PID-5.2",
    )
    parsed = parse("\r".join([standard, hash_components, bang_fields]), cols)
    assert parsed.rejects == []
    assert parsed.columns == {
        "sep": ["|", "|", "!"],
        "enc": [ENC, "#~\\&", ENC],
        "app": ["SYNADT"] * 3,
        "facility": ["SYNFAC"] * 3,
        "facility_oid": ["2.16.840.1.113883.9.999"] * 3,
        "event": ["A01", "A08", "A04"],
        "patient": ["SYN000001", "SYN000002", "SYN000003"],
        "second": [None, "^", None],
        "family": ["TESTPATIENT", "TESTPATIENT", "TESTPATIENT"],
        "given": ["ALPHA", "GAMMA", "DELTA|PIPE"],
    }


def test_escape_sequences_resolved_after_splitting() -> None:
    pid = {
        1: "1",
        3: "SYN\\F\\1\\S\\2\\T\\3\\R\\4\\E\\5^SECOND",
        5: "TEST\\S\\PATIENT^LINE1\\.br\\LINE2",
        6: "\\X41\\\\X4243\\ \\XZZ\\ \\X4\\",
        9: "KEEP\\H\\BOLD\\N\\ \\.sp\\ \\\\ END\\",
        10: "A\\E\\F\\E\\B",
    }
    parsed = parse(
        adt("SYNCTL1", pid=pid),
        columns(
            id="PID-3",
            id1="PID-3.1",
            family="PID-5.1",
            given="PID-5.2",
            hex="PID-6",
            keep="PID-9",
            lit="PID-10",
        ),
    )
    assert parsed.columns == {
        "id": ["SYN|1^2&3~4\\5^SECOND"],
        "id1": ["SYN|1^2&3~4\\5"],
        "family": ["TEST^PATIENT"],
        "given": ["LINE1\nLINE2"],
        "hex": ["ABC \\XZZ\\ \\X4\\"],
        "keep": ["KEEP\\H\\BOLD\\N\\ \\.sp\\ \\\\ END\\"],
        "lit": ["A\\F\\B"],
    }


def test_escapes_use_the_message_delimiters() -> None:
    message = "\r".join(
        [msh("SYNCTL1", "ADT#A01", sep="!", enc="#*$%"), "PID!1!!SYN$F$X$S$Y$T$Z$R$W$E$V#NEXT!!A*B"]
    )
    parsed = parse(message, columns(id="PID-3.1", rep1="PID-5", rep2="PID-5(2)"))
    assert parsed.columns == {"id": ["SYN!X#Y%Z*W$V"], "rep1": ["A"], "rep2": ["B"]}
    joined = parse(message, columns(reps="PID-5"), fmt=Hl7Format(repeat="join"))
    assert joined.columns == {"reps": ["A~B"]}  # joined with `~`, not the message's own `*`


def test_hex_escape_decodes_with_the_message_charset() -> None:
    latin = adt("SYNCTL1", charset="8859/1", pid={1: "1", 3: "SYN1", 5: "TEST\\XE9\\"}).encode("latin-1")
    utf8 = adt("SYNCTL2", charset="UNICODE UTF-8", pid={1: "1", 3: "SYN2", 5: "TEST\\XC3A9\\"}).encode()
    parsed = parse(latin + b"\r" + utf8, columns(family="PID-5.1"), encoding="ascii", fallbacks=())
    assert parsed.columns == {"family": ["TESTé", "TESTé"]}


@settings(derandomize=True, max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="ab|^~\\&é \t.XF", min_size=1, max_size=12), min_size=2, max_size=2))
def test_escaped_values_round_trip(values: list[str]) -> None:
    def escape(value: str) -> str:
        value = value.replace("\\", "\\E\\")  # the escape character first, so later escapes stay intact
        for char, code in (("|", "F"), ("^", "S"), ("&", "T"), ("~", "R")):
            value = value.replace(char, f"\\{code}\\")
        return value

    family, given_name = values
    pid = {1: "1", 3: "SYN1", 5: f"{escape(family)}^{escape(given_name)}"}
    parsed = parse(adt("SYNCTL1", pid=pid), columns(family="PID-5.1", given="PID-5.2"))
    # Segments are stripped of trailing blanks, so a trailing blank of the last field is not kept.
    assert parsed.columns == {"family": [family or None], "given": [given_name.rstrip(" \t") or None]}


# --- repetitions, components, segment occurrences, Z-segments ---------------------------------------------


PID_REPEATED = {
    1: "1",
    3: "SYN000001^^^SYNHOSP^MR~SYNALT01^^^SYNALT^PI~~SYNALT03&SUB1&SUB2^^^SYNALT^PI",
    5: "TESTPATIENT^ALPHA",
    13: "~",
}


@pytest.mark.parametrize(
    ("repeat", "expected"),
    [
        (
            "first",
            {
                "id": "SYN000001",
                "whole": "SYN000001^^^SYNHOSP^MR",
                "rep2": "SYNALT01",
                "rep3": None,
                "rep4": "SYNALT03&SUB1&SUB2",
                "rep4sub2": "SUB1",
                "rep4sub9": None,
                "rep9": None,
                "empty_reps": None,
                "single": "TESTPATIENT",
            },
        ),
        (
            "join",
            {
                "id": "SYN000001~SYNALT01~~SYNALT03&SUB1&SUB2",
                "whole": "SYN000001^^^SYNHOSP^MR~SYNALT01^^^SYNALT^PI~~SYNALT03&SUB1&SUB2^^^SYNALT^PI",
                "rep2": "SYNALT01",
                "rep3": None,
                "rep4": "SYNALT03&SUB1&SUB2",
                "rep4sub2": "SUB1",
                "rep4sub9": None,
                "rep9": None,
                "empty_reps": None,
                "single": "TESTPATIENT",
            },
        ),
    ],
)
def test_repetitions_first_join_and_explicit(repeat: str, expected: dict[str, str | None]) -> None:
    cols = columns(
        id="PID-3.1",
        whole="PID-3",
        rep2="PID-3(2).1",
        rep3="PID-3(3).1",
        rep4="PID-3(4).1",
        rep4sub2="PID-3(4).1.2",
        rep4sub9="PID-3(4).1.9",
        rep9="PID-3(9)",
        empty_reps="PID-13",
        single="PID-5.1",
    )
    parsed = parse(adt("SYNCTL1", pid=PID_REPEATED), cols, fmt=Hl7Format(repeat=repeat))
    assert parsed.columns == {name: [value] for name, value in expected.items()}


def test_segment_occurrences_subcomponents_missing_parts_and_z_segments() -> None:
    message = "\r".join(
        [
            msh("SYNCTL1", "ADT^A01"),
            "PID|1||SYN1&SYNHOSP&L^^^SYNHOSP||TESTPATIENT",
            "PV1|1|I|ICU^101^B",
            "NK1|1|TESTKIN^ONE|SPO",
            "NK1|2|TESTKIN^TWO|CHD",
            "ZPV|SYNZ|EXTRA^VALUE",
            "ZPV|SYNZ2",
            "IN1|1",
        ]
    )
    cols = columns(
        id_sub1="PID-3.1.1",
        id_sub2="PID-3.1.2",
        first_kin="NK1-2.1",
        second_kin="NK1[2]-2.2",
        second_rel="NK1[2]-3",
        third_kin="NK1[3]-2",
        zpv="ZPV-2.2",
        zpv2="ZPV[2]-1",
        no_segment="OBX-5",
        past_end="PV1-45",
        past_component="PV1-3.9",
        empty_segment="IN1-2",
    )
    parsed = parse(message, cols)
    assert parsed.columns == {
        "id_sub1": ["SYN1"],
        "id_sub2": ["SYNHOSP"],
        "first_kin": ["TESTKIN"],
        "second_kin": ["TWO"],
        "second_rel": ["CHD"],
        "third_kin": [None],
        "zpv": ["VALUE"],
        "zpv2": ["SYNZ2"],
        "no_segment": [None],
        "past_end": [None],
        "past_component": [None],
        "empty_segment": [None],
    }


def test_z_segments_are_ignored_unless_named() -> None:
    message = adt("SYNCTL1") + "\rZPV|SYNZ|ANYTHING\rZX1|1"
    parsed = parse(message, columns(id="MSH-10"))
    assert parsed.columns == {"id": ["SYNCTL1"]}
    assert parsed.rejects == []


@pytest.mark.parametrize(
    ("source", "path"),
    [
        ("MSH-10", Hl7Path("MSH", 10)),
        ("PID-3.1", Hl7Path("PID", 3, component=1)),
        ("PID-3.1.2", Hl7Path("PID", 3, component=1, subcomponent=2)),
        ("PID-3(2).1", Hl7Path("PID", 3, repetition=2, component=1)),
        ("NK1[2]-2", Hl7Path("NK1", 2, occurrence=2)),
        (" OBX[3]-5(2).1.4 ", Hl7Path("OBX", 5, occurrence=3, repetition=2, component=1, subcomponent=4)),
        ("ZPV-1", Hl7Path("ZPV", 1)),
    ],
)
def test_path_syntax(source: str, path: Hl7Path) -> None:
    assert parse_hl7_path(source) == path


@pytest.mark.parametrize(
    "source", ["PID", "PID-0", "PID-3.", "pid-3", "PID-3.1.2.3", "PID-3[2]", "PI-3", "PID-(2)"]
)
def test_invalid_path_is_a_metadata_error(source: str) -> None:
    with pytest.raises(Hl7PathError, match="is not an HL7 path like PID-3.1"):
        parse(adt("SYNCTL1"), columns(bad=source))


# --- character sets -------------------------------------------------------------------------------------


def test_latin1_message_family_name_becomes_unicode() -> None:
    pid = {1: "1", 3: "SYN000301^^^SYNHOSP^MR", 5: "TESTÉ-SYNTHÜ^ZOË", 8: "F"}
    data = adt("SYNCTL1", charset="8859/1", pid=pid).encode("latin-1")
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")  # only MSH-18 says how to read it
    parsed = parse(data, columns(family="PID-5.1", given="PID-5.2", charset="MSH-18"), fallbacks=())
    assert parsed.rejects == []
    assert parsed.columns == {"family": ["TESTÉ-SYNTHÜ"], "given": ["ZOË"], "charset": ["8859/1"]}
    assert parsed.columns["family"][0] == "TEST\u00c9-SYNTH\u00dc"


def test_each_message_decoded_with_its_own_charset_and_bom_stripped() -> None:
    def with_family(control_id: str, family: str, charset: str) -> str:
        return adt(control_id, charset=charset, pid={1: "1", 3: control_id, 5: family})

    data = b"\r\n".join(
        [
            codecs_bom() + with_family("SYN1", "TESTÉÜ", "UNICODE UTF-8").encode("utf-8"),
            with_family("SYN2", "testéü", "8859/1").encode("iso-8859-1"),
            with_family("SYN3", "TESTŁÓ", "8859/2").encode("iso-8859-2"),
            with_family("SYN4", "TESTЖ", "8859/5").encode("iso-8859-5"),
            with_family("SYN5", "TESTñ", "ISO IR100").encode("latin-1"),
            with_family("SYN6", "TESTPLAIN", "ASCII").encode("ascii"),
            with_family("SYN7", "TESTΩ", "").encode("utf-8"),  # no MSH-18: the member encoding
            with_family("SYN8", "TEST€", "").encode("cp1252"),  # no MSH-18, not UTF-8: first fallback
            with_family("SYN9", "TESTü", "ASCII").encode("utf-8"),  # mislabelled: the member encoding
        ]
    )
    parsed = parse(data, columns(id="PID-3", family="PID-5"), fallbacks=("cp1252",))
    assert parsed.rejects == []
    assert parsed.columns == {
        "id": [f"SYN{n}" for n in range(1, 10)],
        "family": ["TESTÉÜ", "testéü", "TESTŁÓ", "TESTЖ", "TESTñ", "TESTPLAIN", "TESTΩ", "TEST€", "TESTü"],
    }


def codecs_bom() -> bytes:
    return "\ufeff".encode()


def test_undecodable_and_unknown_charset_messages_are_quarantined() -> None:
    good = adt("SYNCTL1").encode("ascii")
    undecodable = adt("SYNCTL2", pid={1: "1", 3: "SYN2", 5: "TEST\xff"}).encode("latin-1")
    unknown = adt("SYNCTL3", charset="SYNTHETIC-CHARSET").encode("ascii")
    wide = adt("SYNCTL4", charset="UNICODE UTF-16").encode("ascii")
    parsed = parse(b"\r".join([good, undecodable, unknown, wide]), columns(id="MSH-10"), fallbacks=())
    assert parsed.columns == {"id": ["SYNCTL1"]}
    assert parsed.ordinals == [1]
    assert [(r.record, r.line, r.rule, r.reason) for r in parsed.rejects] == [
        (2, 5, "hl7.undecodable", "the message does not decode in any configured charset"),
        (3, 9, "hl7.unknown_charset", "MSH-18 names an unsupported character set"),
        (4, 13, "hl7.unknown_charset", "MSH-18 names an unsupported character set"),
    ]
    assert parsed.rejects[0].raw == undecodable.decode("latin-1")
    assert parsed.rejects[1].raw == unknown.decode("ascii")


@pytest.mark.parametrize(
    ("charset", "outcome"),
    [
        ("PUNYCODE", "loaded"),  # Python's codec raises UnicodeError, not UnicodeDecodeError
        ("UNDEFINED", "loaded"),  # a codec that refuses everything
        ("8859/1\x00", "hl7.unknown_charset"),  # a NUL in a codec name makes Python raise ValueError
    ],
)
def test_a_charset_python_fails_on_quarantines_or_falls_back_for_that_message_only(
    charset: str, outcome: str
) -> None:
    # Found by fuzzing: these MSH-18 values raised out of the parser and failed the whole batch's run.
    data = "\r".join([adt("SYNCTL1"), adt("SYNCTL2", charset=charset), adt("SYNCTL3")])
    parsed = parse(data, columns(id="MSH-10"))
    if outcome == "loaded":  # decoded by the member encoding, as a mislabelled message is
        assert (parsed.columns, parsed.ordinals, parsed.rejects) == (
            {"id": ["SYNCTL1", "SYNCTL2", "SYNCTL3"]},
            [1, 2, 3],
            [],
        )
        return
    assert parsed.columns == {"id": ["SYNCTL1", "SYNCTL3"]}
    assert [(r.record, r.line, r.rule) for r in parsed.rejects] == [(2, 5, outcome)]


# --- message type filter, null tokens -------------------------------------------------------------------


def typed_member() -> str:
    return "\r".join(
        [
            adt("SYNCTL1", "A01"),
            adt("SYNCTL2", "A08"),
            "\r".join([msh("SYNLAB1", "ORU^R01"), "PID|1||SYN1"]),
            adt("SYNCTL3", "A01"),
        ]
    )


@pytest.mark.parametrize(
    ("message_types", "ids", "ordinals"),
    [
        ([], ["SYNCTL1", "SYNCTL2", "SYNLAB1", "SYNCTL3"], [1, 2, 3, 4]),
        (["ADT"], ["SYNCTL1", "SYNCTL2", "SYNCTL3"], [1, 2, 4]),
        (["ADT^A01"], ["SYNCTL1", "SYNCTL3"], [1, 4]),
        (["ADT^A08", "ORU"], ["SYNCTL2", "SYNLAB1"], [2, 3]),
        (["SIU"], [], []),
    ],
)
def test_message_type_filter(message_types: list[str], ids: list[str], ordinals: list[int]) -> None:
    parsed = parse(typed_member(), columns(id="MSH-10"), fmt=Hl7Format(message_types=message_types))
    assert parsed.columns == {"id": ids}
    assert parsed.ordinals == ordinals
    # The others are quarantined with the rule, so every message is accounted for.
    assert [reject.record for reject in parsed.rejects] == sorted({1, 2, 3, 4} - set(ordinals))
    assert {reject.rule for reject in parsed.rejects} <= {"hl7.message_type_not_accepted"}


def test_null_tokens_and_empty_values_become_none() -> None:
    pid = {1: "1", 3: "SYN1", 5: '""^UNK^^ALPHA', 7: '""', 8: "UNK", 9: ""}
    cols = columns(
        family="PID-5.1", given="PID-5.2", middle="PID-5.3", suffix="PID-5.4", dob="PID-7", sex="PID-8"
    )
    default = parse(adt("SYNCTL1", pid=pid), cols + columns(alias="PID-9"))
    assert default.columns == {
        "family": [None],
        "given": ["UNK"],
        "middle": [None],
        "suffix": ["ALPHA"],
        "dob": [None],
        "sex": ["UNK"],
        "alias": [None],
    }
    custom = parse(adt("SYNCTL1", pid=pid), cols, fmt=Hl7Format(null_tokens=['""', "UNK"]))
    assert custom.columns == {
        "family": [None],
        "given": [None],
        "middle": [None],
        "suffix": ["ALPHA"],
        "dob": [None],
        "sex": [None],
    }


# --- record-level rejects -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("msh_line", "rule", "reason"),
    [
        ("MSH", "hl7.malformed_msh", "MSH-1/MSH-2 delimiters are missing or invalid"),
        ("MSH|", "hl7.malformed_msh", "MSH-1/MSH-2 delimiters are missing or invalid"),
        ("MSH||SYNADT", "hl7.malformed_msh", "MSH-1/MSH-2 delimiters are missing or invalid"),
        ("MSHX^~\\&XSYNADT", "hl7.malformed_msh", "MSH-1/MSH-2 delimiters are missing or invalid"),
        ("MSH|^^\\&|SYNADT", "hl7.malformed_msh", "MSH-1/MSH-2 delimiters are missing or invalid"),
        ("MSH|^~\\&|SYNADT|SYNFAC", "hl7.missing_message_type", "MSH-9 message type is empty"),
        (
            "MSH|^~\\&|SYNADT|SYNFAC|||20240305||^A01|SYNCTL9",
            "hl7.missing_message_type",
            "MSH-9 message type is empty",
        ),
        (
            "MSH|^~\\&|SYNADT|SYNFAC|||20240305||ADT^A01",
            "hl7.missing_control_id",
            "MSH-10 message control id is empty",
        ),
        (
            'MSH|^~\\&|SYNADT|SYNFAC|||20240305||ADT^A01|""|P',
            "hl7.missing_control_id",
            "MSH-10 message control id is empty",
        ),
    ],
)
def test_malformed_msh_quarantines_only_that_message(msh_line: str, rule: str, reason: str) -> None:
    bad = msh_line + "\rPID|1||SYN000009^^^SYNHOSP^MR||TESTPATIENT^SECRETVALUE"
    data = "\r\n".join([adt("SYNCTL1"), bad, adt("SYNCTL3")])
    parsed = parse(data, columns(id="MSH-10", patient="PID-3.1"))
    assert parsed.columns == {"id": ["SYNCTL1", "SYNCTL3"], "patient": ["SYN000001", "SYN000001"]}
    assert parsed.ordinals == [1, 3]
    assert parsed.rejects == [RecordReject(MEMBER, 2, 5, rule, reason, bad)]
    assert "SECRETVALUE" not in parsed.rejects[0].reason


@pytest.mark.parametrize(
    ("bad_line", "offset"),
    [("PI|1", 1), ("PID^1^^SYN1", 1), ("free text from an interface engine", 2), ("PÏD|1", 1), ("P-D|1", 2)],
)
def test_bad_segment_line_quarantines_the_message(bad_line: str, offset: int) -> None:
    segments = adt("SYNCTL2").split("\r")
    segments.insert(offset + 1, bad_line)
    bad = "\r".join(segments)
    parsed = parse("\n".join([adt("SYNCTL1"), bad]), columns(id="MSH-10"))
    assert parsed.columns == {"id": ["SYNCTL1"]}
    assert parsed.ordinals == [1]
    line = 5 + offset + 1
    assert parsed.rejects == [
        RecordReject(
            MEMBER,
            2,
            5,
            "hl7.bad_segment",
            f"line {line} is not a segment (3 letters or digits, then the field separator)",
            bad,
        )
    ]


def test_every_column_has_one_value_per_accepted_message() -> None:
    messages, _ = seeded_messages(50, seed=99)
    messages[10] = messages[10].replace("MSH|^~\\&", "MSH|")  # malformed
    messages[20] = messages[20].replace("\rPID|", "\rPID^")  # bad segment
    parsed = parse("\r".join(messages), SEEDED_COLUMNS)
    assert parsed.ordinals == [n for n in range(1, 51) if n not in (11, 21)]
    assert {name: len(values) for name, values in parsed.columns.items()} == dict.fromkeys(
        ["control", "patient", "family", "bed", "visit"], 48
    )
    assert [(r.record, r.rule) for r in parsed.rejects] == [
        (11, "hl7.malformed_msh"),
        (21, "hl7.bad_segment"),
    ]


# --- every message is accounted for ---------------------------------------------------------------------


def test_msh2_declaring_other_separators_than_used_is_quarantined_not_dropped() -> None:
    """`MSH|$~\\&` declares `$` as component separator while MSH-9 uses `^`: the type would read as
    `ADT^A01` and the source's type filter would drop the message without a trace."""
    mismatched = "\r".join([msh("SYNCTL2", "ADT^A01^ADT_A01", enc="$~\\&"), "PID|1||SYN2"])
    member = "\r".join([adt("SYNCTL1"), mismatched, adt("SYNCTL3")])
    parsed = parse(member, columns(id="MSH-10"), fmt=Hl7Format(message_types=["ADT"]))
    assert parsed.columns == {"id": ["SYNCTL1", "SYNCTL3"]}
    assert parsed.ordinals == [1, 3]
    [reject] = parsed.rejects
    assert (reject.record, reject.line, reject.rule) == (2, 5, "hl7.delimiter_mismatch")
    assert "'$'" in reject.reason and "'^'" in reject.reason
    assert reject.raw == mismatched


def test_messages_the_type_filter_leaves_out_are_quarantined_with_the_rule() -> None:
    parsed = parse(typed_member(), columns(id="MSH-10"), fmt=Hl7Format(message_types=["ADT"]))
    assert parsed.ordinals == [1, 2, 4]
    [reject] = parsed.rejects
    assert (reject.record, reject.rule) == (3, "hl7.message_type_not_accepted")
    assert reject.reason == "MSH-9 message type is not among the source's message_types ['ADT']"


# --- clean members: read a whole member at a time --------------------------------------------------------


def reads_whole(data: bytes, cols: list[ColumnSpec], fmt: Hl7Format) -> bool:
    """Whether `parse_hl7` reads the UTF-8 member a whole member at a time (else message by message)."""
    return _read_clean(data, _Reading.of(cols, fmt, "utf-8", ())) is not None


def clean_member(count: int = 30, terminator: str = "\r") -> str:
    messages, _ = seeded_messages(count, seed=11)
    return terminator.join(message.replace("\r", terminator) for message in messages) + terminator


EVERY_PATH = columns(
    separator="MSH-1",
    encoding_characters="MSH-2",
    event="MSH-9.2",
    control="MSH-10",
    charset="MSH-18",
    patient="PID-3.1",
    patient_second="PID-3(2).1",
    patient_authority="PID-3.4.1",
    family="PID-5.1",
    given="PID-5.2",
    point_of_care="PV1-3",
    bed="PV1-3.3",
    second_note="ZPV[2]-1",
)


@pytest.mark.parametrize(
    "member",
    [
        pytest.param(clean_member(), id="segments-end-in-cr"),
        pytest.param(clean_member(terminator="\r\n"), id="segments-end-in-crlf"),
        pytest.param(clean_member(terminator="\n") + "\n\n", id="blank-lines-after"),
        pytest.param(
            clean_member().replace("\rPID|", "\r\rPID|").replace("|I|", "|I| \t"), id="blanks-inside"
        ),
        pytest.param(
            "\r".join(["FHS|^~\\&|SYN", "BHS|^~\\&|SYN", clean_member(), "BTS|30", "FTS|1"]),
            id="batch-envelopes",
        ),
        pytest.param(
            clean_member()
            .replace("ICU^101^", "I\\T\\CU^101~ALT^")
            .replace("^^^SYNHOSP^MR", "^^^SYNHOSP&X^MR~SYNALT^^^ALT^PI")
            .replace("ZPV|SYNZ", 'ZPV|SYNZ\rZPV|SECOND\rZPV|""'),
            id="escapes-repetitions-occurrences",
        ),
    ],
)
@pytest.mark.parametrize("repeat", ["first", "join"])
def test_a_clean_member_is_read_whole_with_the_message_by_message_records(member: str, repeat: str) -> None:
    fmt = Hl7Format(repeat=repeat, message_types=["ADT"])
    assert reads_whole(member.encode(), EVERY_PATH, fmt)
    parsed = parse(member, EVERY_PATH, fmt=fmt)  # equal to the message-by-message records, as every test here
    assert parsed.ordinals == list(range(1, 31))
    assert parsed.columns["separator"] == ["|"] * 30
    assert parsed.columns["encoding_characters"] == ["^~\\&"] * 30
    assert parsed.columns["control"] == [f"SYNCTL{n:05d}" for n in range(1, 31)]
    if "SECOND" in member:
        expected = {f"I&CU^101~ALT^{bed}" for bed in "ABCD"} if repeat == "join" else {"I&CU^101"}
        assert set(parsed.columns["point_of_care"]) <= expected
        assert set(parsed.columns["second_note"]) == {"SECOND"}
        assert set(parsed.columns["patient_second"]) == {"SYNALT"}
        assert set(parsed.columns["patient_authority"]) == {"SYNHOSP~ALT" if repeat == "join" else "SYNHOSP"}


def test_a_clean_member_is_read_some_messages_at_a_time_with_the_same_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hl7, "COLUMN_MESSAGES", 7)  # 30 messages: 7, 7, 7, 7 and 2
    member = clean_member().replace("ZPV|SYNZ", "ZPV|SYNZ\rZPV|SECOND")
    assert reads_whole(member.encode(), EVERY_PATH, Hl7Format())
    parsed = parse(member, EVERY_PATH)
    assert parsed.columns["control"] == [f"SYNCTL{n:05d}" for n in range(1, 31)]
    assert parsed.columns["second_note"] == ["SECOND"] * 30


def test_a_member_in_the_charset_its_messages_declare_is_read_whole() -> None:
    pid = {1: "1", 3: "SYN000301^^^SYNHOSP^MR", 5: "TESTÉ-SYNTHÜ^ZOË", 8: "F"}
    data = "\r".join(adt(f"SYNCTL{n}", charset="8859/1", pid=pid) for n in range(3)).encode("latin-1")
    cols = columns(family="PID-5.1", given="PID-5.2")
    assert reads_whole(data, cols, Hl7Format())  # not UTF-8, the member's encoding: MSH-18 says latin-1
    assert parse(data, cols, fallbacks=()).columns == {"family": ["TESTÉ-SYNTHÜ"] * 3, "given": ["ZOË"] * 3}


def swap_message(member: str, number: int, message: str) -> str:
    messages = member.split("\rMSH")
    messages[number] = message.removeprefix("MSH")
    return "\rMSH".join(messages)


@pytest.mark.parametrize(
    ("member", "rules"),
    [
        pytest.param(
            clean_member().replace("|SYNV", "|SYN\x01V", 1), ["hl7.control_character"], id="control"
        ),
        pytest.param("SYNTHETIC TEXT\r" + clean_member(), ["hl7.orphan_segments"], id="text-before"),
        pytest.param(clean_member() + "BTS|30\rPID|1\r", ["hl7.orphan_segments"], id="text-after-trailer"),
        pytest.param(clean_member().replace("\rPID|", "\r PID|", 1), [], id="blank-before-a-segment"),
        pytest.param(clean_member().replace("\rZPV|", "\r  \rZPV|", 1), [], id="line-of-blanks"),
        pytest.param(clean_member().replace("\rPID|", "\rPID^", 1), ["hl7.bad_segment"], id="not-a-segment"),
        pytest.param(
            swap_message(clean_member(), 3, adt("SYNCTL3", "R01").replace("ADT^", "ORU^")),
            ["hl7.message_type_not_accepted"],
            id="type-left-out",
        ),
        pytest.param(
            swap_message(clean_member(), 2, adt("")), ["hl7.missing_control_id"], id="no-control-id"
        ),
        pytest.param(
            swap_message(clean_member(), 4, "\r".join([msh("SYNCTL4", enc="$~\\&"), "PID|1||SYN4"])),
            ["hl7.delimiter_mismatch"],
            id="other-delimiters",
        ),
        pytest.param(
            swap_message(clean_member(), 5, adt("SYNCTL5", charset="8859/2")), [], id="two-charsets"
        ),
        pytest.param(
            swap_message(clean_member(), 5, adt("SYNCTL5", charset="UNICODE UTF-16")),
            ["hl7.unknown_charset"],
            id="unknown-charset",
        ),
        pytest.param(clean_member().replace("SYNADT", "SYNÄDT", 1), [], id="non-ascii-header"),
    ],
)
def test_members_needing_a_look_at_each_message_are_read_message_by_message(
    member: str, rules: list[str]
) -> None:
    fmt = Hl7Format(message_types=["ADT"])
    assert not reads_whole(member.encode(), SEEDED_COLUMNS, fmt)
    parsed = parse(member, SEEDED_COLUMNS, fmt=fmt)  # and still equal to the message-by-message records
    assert [reject.rule for reject in parsed.rejects] == rules


HL7_TEXT = st.text(alphabet='ab|^~\\&é \t"XF.', max_size=10)


def mostly(usual: str, *odd: str) -> st.SearchStrategy[str]:
    return st.sampled_from([usual] * 12 * len(odd) + list(odd))


@st.composite
def hl7_members(draw: st.DrawFn) -> bytes:
    """Members of 1 to 4 messages, most of them clean, with odd parts mixed in: any field text, absent and
    repeated segments, blanks, line ends, charsets, message types, empty control ids."""
    member_charset = draw(st.sampled_from(["", "UNICODE UTF-8", "8859/1"]))
    messages = []
    for number in range(draw(st.integers(1, 4))):
        header = msh(
            draw(mostly(f"SYNCTL{number}", "", '""', f"SYN^{number}")),
            draw(mostly("ADT^A01^ADT_A01", "ORU^R01", "ADT", "", "adt^a08")),
            charset=draw(mostly(member_charset, "ASCII", "8859/2")),
        )
        lines = [header]
        for name in draw(st.lists(st.sampled_from(["PID", "PV1", "ZPV", "EVN"]), max_size=5)):
            fields = draw(st.lists(HL7_TEXT, min_size=0, max_size=6))
            lines.append(
                draw(mostly("", " ")) + "|".join([name, *fields]) + draw(st.sampled_from(["", " \t"]))
            )
        messages.append(draw(st.sampled_from(["\r", "\n", "\r\n"])).join(lines))
    text = draw(st.sampled_from(["\r", "\r\n\r\n"])).join(messages)
    return text.encode(draw(mostly("latin-1" if member_charset == "8859/1" else "utf-8", "latin-1", "utf-8")))


@settings(derandomize=True, max_examples=300, deadline=None)
@given(hl7_members(), st.sampled_from(["first", "join"]), st.sampled_from([[], ["ADT"]]))
def test_whichever_way_a_member_is_read_its_records_are_the_same(
    data: bytes, repeat: str, message_types: list[str]
) -> None:
    fmt = Hl7Format(repeat=repeat, message_types=message_types)
    parse(data, EVERY_PATH, fmt=fmt, fallbacks=("cp1252",))  # asserts the two readings are equal
