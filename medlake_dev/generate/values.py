"""Synthetic value pools for generated feeds: names, facility kinds and units, LOINC tests, document types.

All values are invented or public code systems (LOINC codes and names, HL7 tables); none describe a person.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FacilityKind:
    """What kind of place a facility is: it shapes its archive volume, units, beds and visits."""

    name: str
    volume: float  # relative share of the archives
    units: tuple[str, ...]
    beds_per_unit: tuple[int, int]
    patient_class: str  # PV1-2 of its usual visit: I inpatient, E emergency, O outpatient
    admits: bool  # visits start with A01 (admit) rather than A04 (register)


FACILITY_KINDS: tuple[FacilityKind, ...] = (
    FacilityKind(
        "hospital", 5.0, ("ICU", "CCU", "MEDSURG", "TELE", "PEDS", "L&D", "ONC", "ED"), (12, 32), "I", True
    ),
    FacilityKind("emergency_room", 3.0, ("ED", "OBS", "RESUS", "FASTTRACK"), (6, 20), "E", False),
    FacilityKind("urgent_care", 1.5, ("UC", "XRAY"), (4, 10), "O", False),
    FacilityKind("nursing_home", 1.0, ("LTC-A", "LTC-B", "REHAB", "MEMORY"), (16, 30), "I", True),
)

# Unit names some Latin-1 feeds use (French-language interfaces); every character is in ISO-8859-1.
LATIN1_UNITS: tuple[str, ...] = ("Pédiatrie", "Réanimation", "Médecine", "Gériatrie", "Chirurgie", "Urgences")

BED_STATUSES: tuple[str, ...] = ("occupied", "available", "cleaning", "blocked")
BED_STATUS_WEIGHTS: tuple[float, ...] = (0.70, 0.18, 0.08, 0.04)

GIVEN_NAMES: tuple[str, ...] = (
    "James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda", "David", "Elizabeth",
    "William", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah", "Charles", "Karen",
    "Daniel", "Nancy", "Matthew", "Lisa", "Anthony", "Betty", "Mark", "Sandra", "Steven", "Ashley",
    "Andrew", "Kimberly", "Joshua", "Emily", "Kevin", "Donna", "Brian", "Michelle", "Ahmed", "Mei",
    "Priya", "Kwame", "Aiyana", "Dmitri", "Ngozi", "Hiroshi", "Fatima", "Mateo", "Olga", "Tariq",
)  # fmt: skip
FAMILY_NAMES: tuple[str, ...] = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez",
    "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Jackson", "Martin",
    "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez", "Clark", "Ramirez", "Lewis", "Robinson",
    "Walker", "Young", "Allen", "King", "Wright", "Scott", "Torres", "Nguyen", "Hill", "Flores",
    "O'Brien", "Van der Berg", "Okafor", "Kowalski", "Yamamoto", "Haddad", "Patel", "Ivanova", "Mensah",
    "Chen",
)  # fmt: skip
# Accented names, all encodable in ISO-8859-1, for Latin-1 members and the occasional UTF-8 one.
ACCENTED_GIVEN_NAMES: tuple[str, ...] = (
    "José", "Françoise", "Zoë", "Inès", "Jérôme", "Ángel", "Björn", "Søren", "Renée", "Noël", "Añil", "Çelik",
)  # fmt: skip
ACCENTED_FAMILY_NAMES: tuple[str, ...] = (
    "Müller", "Peña", "Gómez", "Lefèvre", "Brontë", "Nuñez", "Østergård", "Dubé", "Åberg", "Schäfer",
    "Fariñas",
)  # fmt: skip
# Family names holding `&`, HL7's subcomponent separator: written as the escape \T\ in PID-5.
AMPERSAND_FAMILY_NAMES: tuple[str, ...] = ("Smith&Jones", "Marks&Spencer", "Baker&Lee")

SEXES: tuple[str, ...] = ("F", "M", "U")
DOCUMENT_GENDERS: tuple[str, ...] = ("F", "M", "UN")

STREETS: tuple[str, ...] = (
    "Main St",
    "Oak Ave",
    "Maple Dr",
    "Cedar Ln",
    "Elm St",
    "Park Rd",
    "Lake View Blvd",
)
CITIES: tuple[tuple[str, str, str], ...] = (
    ("Springfield", "IL", "627"),
    ("Riverton", "WY", "825"),
    ("Fairview", "TN", "370"),
    ("Georgetown", "TX", "786"),
    ("Salem", "OR", "973"),
    ("Madison", "WI", "537"),
)


@dataclass(frozen=True)
class LabTest:
    """A LOINC-coded test with its unit and reference interval; `decimals` is how values are written."""

    code: str
    name: str
    unit: str
    low: float
    high: float
    decimals: int = 1


LAB_TESTS: tuple[LabTest, ...] = (
    LabTest("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 70, 99, 0),
    LabTest("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 12.0, 17.5),
    LabTest("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.6, 1.3, 2),
    LabTest("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 4.5, 11.0),
    LabTest("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 135, 145, 0),
    LabTest("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.5, 5.1),
    LabTest("2075-0", "Chloride [Moles/volume] in Serum or Plasma", "mmol/L", 98, 107, 0),
    LabTest("2028-9", "Carbon dioxide, total [Moles/volume] in Serum or Plasma", "mmol/L", 22, 29, 0),
    LabTest("3094-0", "Urea nitrogen [Mass/volume] in Serum or Plasma", "mg/dL", 7, 20, 0),
    LabTest("17861-6", "Calcium [Mass/volume] in Serum or Plasma", "mg/dL", 8.6, 10.3),
    LabTest("777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", 150, 400, 0),
    LabTest("789-8", "Erythrocytes [#/volume] in Blood by Automated count", "10*6/uL", 4.2, 5.9, 2),
    LabTest("4544-3", "Hematocrit [Volume Fraction] of Blood by Automated count", "%", 36, 52),
    LabTest(
        "1742-6", "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "U/L", 7, 56, 0
    ),
    LabTest(
        "1920-8",
        "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
        "U/L",
        10,
        40,
        0,
    ),
    LabTest("1975-2", "Bilirubin.total [Mass/volume] in Serum or Plasma", "mg/dL", 0.1, 1.2),
    LabTest("2885-2", "Protein [Mass/volume] in Serum or Plasma", "g/dL", 6.0, 8.3),
    LabTest("1751-7", "Albumin [Mass/volume] in Serum or Plasma", "g/dL", 3.5, 5.0),
    LabTest("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 100, 199, 0),
    LabTest("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4.0, 5.6),
    LabTest("6301-6", "INR in Platelet poor plasma by Coagulation assay", "{INR}", 0.8, 1.2),
    LabTest("10839-9", "Troponin I.cardiac [Mass/volume] in Serum or Plasma", "ng/mL", 0.0, 0.04, 3),
)
# French test names some Latin-1 lab feeds send instead of the LOINC long name (by LOINC code).
LATIN1_TEST_NAMES: dict[str, str] = {
    "2885-2": "Protéine totale sérique",
    "2345-7": "Glycémie à jeun",
    "718-7": "Hémoglobine",
    "2160-0": "Créatinine sérique",
    "1975-2": "Bilirubine totale",
    "2951-2": "Sodium sérique (Na+)",
}
# Reference ranges written as free text: quotes, commas and line breaks make the CSV writer quote them.
AWKWARD_REFERENCE_RANGES: tuple[str, ...] = (
    '70-99 "fasting"',
    "70-99\n(fasting; see note)",
    "<200, desirable",
    '< 0.04 ng/mL, "negative"',
)
# Panels: which tests are ordered together (indexes into LAB_TESTS).
LAB_PANELS: tuple[tuple[int, ...], ...] = (
    (0, 4, 5, 6, 7, 8, 2, 9),  # basic metabolic panel
    (1, 3, 10, 11, 12),  # complete blood count
    (13, 14, 15, 16, 17),  # hepatic function
    (18,),
    (19,),
    (20,),
    (21,),
    (0,),
)

# HL7 v2 ADT trigger events -> MSH-9 message structure.
ADT_STRUCTURES: dict[str, str] = {
    "A01": "ADT_A01",
    "A02": "ADT_A02",
    "A03": "ADT_A03",
    "A04": "ADT_A01",
    "A08": "ADT_A01",
}
SENDING_APPLICATIONS: tuple[str, ...] = ("EPIC", "CERNER", "MEDITECH", "ALLSCRIPTS")
DIAGNOSES: tuple[tuple[str, str], ...] = (
    ("I10", "Essential (primary) hypertension"),
    ("E11.9", "Type 2 diabetes mellitus without complications"),
    ("J18.9", "Pneumonia, unspecified organism"),
    ("N39.0", "Urinary tract infection, site not specified"),
    ("R07.9", "Chest pain, unspecified"),
    ("S72.001A", "Fracture of unspecified part of neck of right femur"),
    ("I48.91", "Unspecified atrial fibrillation"),
    ("J44.1", "Chronic obstructive pulmonary disease with (acute) exacerbation"),
    ("R51.9", "Headache, unspecified"),
)
RELATIONSHIPS: tuple[tuple[str, str], ...] = (
    ("SPO", "Spouse"),
    ("CHD", "Child"),
    ("PAR", "Parent"),
    ("SIB", "Sibling"),
    ("FND", "Friend"),
)
PAYERS: tuple[tuple[str, str], ...] = (
    ("MCR", "Medicare"),
    ("MCD", "Medicaid"),
    ("BCBS", "Blue Cross Blue Shield"),
    ("AET", "Aetna"),
    ("UHC", "UnitedHealthcare"),
    ("SELF", "Self pay"),
)


@dataclass(frozen=True)
class DocumentType:
    code: str
    name: str


DOCUMENT_TYPES: tuple[DocumentType, ...] = (
    DocumentType("34133-9", "Summarization of Episode Note"),
    DocumentType("11506-3", "Progress note"),
    DocumentType("18842-5", "Discharge summary"),
    DocumentType("34117-2", "History and physical note"),
    DocumentType("11488-4", "Consult note"),
    DocumentType("57133-1", "Referral note"),
)
PROBLEMS: tuple[tuple[str, str], ...] = (
    ("44054006", "Diabetes mellitus type 2"),
    ("38341003", "Essential hypertension"),
    ("195967001", "Asthma"),
    ("13645005", "Chronic obstructive pulmonary disease"),
    ("49436004", "Atrial fibrillation"),
    ("84114007", "Heart failure"),
    ("709044004", "Chronic kidney disease"),
    ("35489007", "Depressive disorder"),
)
MEDICATIONS: tuple[tuple[str, str], ...] = (
    ("860975", "Metformin 500 MG Oral Tablet"),
    ("314076", "Lisinopril 10 MG Oral Tablet"),
    ("617312", "Atorvastatin 20 MG Oral Tablet"),
    ("197361", "Amlodipine 5 MG Oral Tablet"),
    ("855332", "Warfarin Sodium 5 MG Oral Tablet"),
    ("310965", "Ibuprofen 200 MG Oral Tablet"),
    ("745679", "Albuterol 0.09 MG/ACTUAT Inhalant Solution"),
)
ALLERGIES: tuple[tuple[str, str], ...] = (
    ("7980", "Penicillin G"),
    ("2670", "Codeine"),
    ("1191", "Aspirin"),
    ("10831", "Sulfamethoxazole"),
)
VITALS: tuple[tuple[str, str, str, float, float], ...] = (
    ("8480-6", "Systolic blood pressure", "mm[Hg]", 100, 150),
    ("8462-4", "Diastolic blood pressure", "mm[Hg]", 60, 95),
    ("8867-4", "Heart rate", "/min", 55, 110),
    ("8310-5", "Body temperature", "Cel", 36.1, 38.4),
    ("9279-1", "Respiratory rate", "/min", 12, 24),
    ("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "%", 90, 100),
)
