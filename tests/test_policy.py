"""The residency policy: loading and validation, the shipped packs, and evaluation.

Validation tests each write a small policy with one mistake and assert the file, the
line (found by a marker in the text, so the tests survive edits of the base text), the
key path and the message. Evaluation tests drive the pure ``evaluate`` with facts only.
"""

from __future__ import annotations

import hashlib
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from residency_monitor.policy import (
    COUNTRY_CODES,
    EEA_COUNTRIES,
    EU_MEMBERS,
    FlowFacts,
    Policy,
    PolicyError,
    PolicyIssue,
    default_policy,
    evaluate,
    explain,
    load_policy,
    parse_policy,
    tls_version_code,
    zone_of,
)

ROOT = Path(__file__).resolve().parents[1]
PACKS = ROOT / "configs" / "policies"
PACKAGED_DEFAULT = ROOT / "residency_monitor" / "data" / "macau-pdpa.yaml"

TLS10, TLS11, TLS12, TLS13 = 0x0301, 0x0302, 0x0303, 0x0304
MACAU = timezone(timedelta(hours=8))

# A site policy: nested zones, an IPv6 zone, a public zone and exceptions of every kind.
SITE = """\
policy:
  name: test-site
  title: "Test site policy"
  legal_basis: "Law 8/2005 Arts. 19-20"
  as_of: 2026-11-01
  utc_offset: "+08:00"
zones:
  - name: floor
    networks: [10.10.0.0/16]
    classification: personal
  - name: finance
    networks: [10.10.3.0/24, "fd00:10::/64"]
    classification: sensitive
    owner: "Finance <finance@example.mo>"
  - name: guest
    networks: [192.168.50.0/24]
    classification: public
default_zone:
  name: default
  classification: personal
  owner: "IT"
classifications:
  public:
    permitted_countries: ["*"]
    min_tls: "TLS 1.2"
    plaintext: allow
    unlocated: allow
  personal: &personal
    permitted_countries: [MO]
    conditional_countries:
      CN: "Greater Bay Area standard contract (Mainland-Macao)"
    otherwise: "an Art. 20 notification or authorisation"
    min_tls: "TLS 1.2"
  sensitive:
    <<: *personal
    min_tls: "TLS 1.3"
  lenient:
    permitted_countries: [MO, "NO"]
    conditional_countries: {"*": "consent after information"}
    min_tls: "TLS 1.0"
    unlocated: allow
not_evaluated_apps: [icmp, icmp6, ntp]
exceptions: []
"""

T0 = datetime(2027, 1, 15, 10, 0, tzinfo=MACAU).timestamp()


def site(exceptions: str = "", **replace: str) -> Policy:
    """The site policy with ``exceptions`` (YAML list items) and text replacements."""
    text = SITE.replace("exceptions: []\n", "exceptions:\n" + textwrap.indent(
        textwrap.dedent(exceptions), "  ") if exceptions else "exceptions: []\n")
    for old, new in replace.items():
        text = text.replace(old, new)
    return parse_policy(text, "site.yaml")


def facts(**kw) -> FlowFacts:
    """A TLS 1.3 flow from the floor to Macau; keywords change any field."""
    base = dict(client_ip="10.10.5.20", server_ip="202.175.1.10", server_port=443,
                transport="tcp", app="tls", direction="outbound", ts=T0, tls_version=TLS13,
                encrypted=True, payload=True, sni="portal.bank-mo.example", country="MO",
                country_source="geoip", asn=7582)
    base.update(kw)
    return FlowFacts(**base)


# --------------------------------------------------------------------------------------------
# Validation: one test per message, each asserting file, line and key path
# --------------------------------------------------------------------------------------------

MINIMAL = """\
policy:
  name: minimal
  title: "Minimal"
  legal_basis: "none"
  as_of: 2026-11-01
default_zone:
  name: default
  classification: personal
classifications:
  personal:
    permitted_countries: [MO]
    min_tls: "TLS 1.2"
"""


def errors_of(text: str, source: str = "bad.yaml") -> list[PolicyIssue]:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, source)
    return info.value.errors


def line_of(text: str, marker: str) -> int:
    """1-based line of the first line containing ``marker``."""
    for number, line in enumerate(text.splitlines(), 1):
        if marker in line:
            return number
    raise AssertionError(f"{marker!r} not in text")


def one_error(text: str, marker: str, key: str, *message_parts: str) -> PolicyIssue:
    """Assert exactly one error, on the marker's line, at ``key``, saying ``message_parts``."""
    errors = errors_of(text)
    assert len(errors) == 1, errors
    issue = errors[0]
    assert (issue.file, issue.line, issue.key) == ("bad.yaml", line_of(text, marker), key)
    for part in message_parts:
        assert part in issue.message
    assert str(issue) == f"bad.yaml:{issue.line}: {key}: {issue.message}"
    return issue


def with_zones(zones: str) -> str:
    return MINIMAL + "zones:\n" + textwrap.indent(textwrap.dedent(zones), "  ")


def with_exceptions(items: str, zones: str = "") -> str:
    text = with_zones(zones) if zones else MINIMAL
    return text + "exceptions:\n" + textwrap.indent(textwrap.dedent(items), "  ")


VALID_EXC = """\
- id: crm
  match: {country: [US]}
  reason: "DPA signed"
  owner: "DPO"
  expires: 2027-06-30
"""


def test_minimal_policy_loads():
    policy = parse_policy(MINIMAL, "min.yaml")
    assert policy.name == "minimal" and policy.zones == () and policy.exceptions == ()
    assert policy.default_zone.classification == "personal"
    assert policy.sha256 == hashlib.sha256(MINIMAL.encode()).hexdigest()
    assert policy.source == "min.yaml"


def test_syntax_error_has_its_line():
    text = MINIMAL + "zones: [unclosed\nexceptions: []\n"
    errors = errors_of(text)
    assert len(errors) == 1
    assert errors[0].file == "bad.yaml" and errors[0].key == ""
    assert errors[0].line >= line_of(text, "zones: [unclosed")
    assert "YAML syntax error" in errors[0].message
    assert str(errors[0]).startswith(f"bad.yaml:{errors[0].line}: YAML syntax error")


def test_several_documents_are_a_syntax_error():
    errors = errors_of(MINIMAL + "---\n" + MINIMAL)
    assert len(errors) == 1 and "YAML syntax error" in errors[0].message


def test_empty_file():
    (issue,) = errors_of("# nothing\n")
    assert issue.line == 0 and "empty file" in issue.message
    assert str(issue) == f"bad.yaml: {issue.message}"


def test_document_not_a_mapping():
    (issue,) = errors_of("- a\n- b\n")
    assert (issue.line, issue.key) == (1, "(document)") and "expected a mapping" in issue.message


def test_unknown_key_with_suggestion():
    text = MINIMAL.replace("  as_of: 2026-11-01\n", "  as_of: 2026-11-01\n  titel: x\n")
    one_error(text, "titel", "policy.titel", "unknown key 'titel'", "did you mean 'title'")


def test_unknown_top_level_key():
    one_error(MINIMAL + "zone: []\n", "zone: []", "zone", "unknown key 'zone'", "'zones'")


def test_duplicate_key():
    text = MINIMAL.replace("  title: \"Minimal\"\n", "  title: \"Minimal\"\n  title: again\n")
    one_error(text, "title: again", "policy.title", "duplicate key 'title'")


def test_wrong_type():
    text = with_zones("""\
        - name: finance
          networks: 10.10.3.0/24
          classification: personal
        """)
    one_error(text, "networks: 10.10.3.0/24", "zones[0].networks",
              "expected a list, got text '10.10.3.0/24'")


def test_wrong_type_empty_value():
    text = MINIMAL.replace('title: "Minimal"', "title:")
    one_error(text, "title:", "policy.title", "expected text, got nothing")


def test_empty_text():
    text = MINIMAL.replace('title: "Minimal"', 'title: "  "')
    one_error(text, "title:", "policy.title", "must not be empty")


def test_missing_required_key():
    text = with_zones("""\
        - name: finance
          networks: [10.10.3.0/24]
        """)
    one_error(text, "- name: finance", "zones[0].classification",
              "missing required key 'classification'")


def test_missing_top_level_section():
    text = MINIMAL.replace("default_zone:\n  name: default\n  classification: personal\n", "")
    (issue,) = errors_of(text)
    assert (issue.line, issue.key) == (1, "default_zone")
    assert "missing required key 'default_zone'" in issue.message


def test_bad_cidr():
    text = with_zones("""\
        - name: finance
          networks: [10.10.3.0/33]
          classification: personal
        """)
    one_error(text, "10.10.3.0/33", "zones[0].networks[0]", "bad CIDR '10.10.3.0/33'")


def test_cidr_with_host_bits():
    text = with_zones("""\
        - name: finance
          networks: [10.10.0.0/16, 10.10.3.1/24]
          classification: personal
        """)
    one_error(text, "10.10.3.1/24", "zones[0].networks[1]", "host bits set",
              "the network is 10.10.3.0/24")


def test_empty_network_list():
    text = with_zones("""\
        - name: finance
          networks: []
          classification: personal
        """)
    one_error(text, "networks: []", "zones[0].networks", "must not be empty")


def test_unknown_country_code():
    text = MINIMAL.replace("[MO]", "[MO, ZZ]")
    one_error(text, "ZZ", "classifications.personal.permitted_countries[1]",
              "unknown country code 'ZZ'", "not an ISO 3166-1 alpha-2 code")


@pytest.mark.parametrize("code, hint", [
    ("EU", "the EU is not a country: list its 27 member states"),
    ("EEA", "the EEA is not a country"),
    ("UK", "GB"),
    ("EL", "Greece is GR"),
    ("XK", "user-assigned"),
    ("de", "country codes are upper case: DE"),
])
def test_country_code_hints(code, hint):
    text = MINIMAL.replace("[MO]", f"[MO, {code}]")
    one_error(text, f"MO, {code}", "classifications.personal.permitted_countries[1]",
              f"unknown country code {code!r}", hint)


def test_country_star_only_in_country_lists():
    text = with_exceptions(VALID_EXC.replace("country: [US]", 'country: ["*"]'))
    one_error(text, '"*"', "exceptions[0].match.country[0]", "'*' (any country) is not allowed")


def test_unquoted_norway_is_a_country_not_false():
    policy = parse_policy(MINIMAL.replace("[MO]", "[MO, NO]"), "no.yaml")
    assert policy.classifications["personal"].permitted == {"MO", "NO"}


def test_country_listed_twice():
    text = MINIMAL.replace("[MO]", "[MO, HK, MO]")
    one_error(text, "MO, HK, MO", "classifications.personal.permitted_countries[2]",
              "MO listed twice")


def test_star_with_other_countries():
    text = MINIMAL.replace("[MO]", '["*", MO]')
    one_error(text, '"*", MO', "classifications.personal.permitted_countries",
              "'*' already permits every country")


def test_country_permitted_and_conditional():
    text = MINIMAL.replace("    min_tls", "    conditional_countries:\n      MO: \"x\"\n"
                                          "    min_tls")
    one_error(text, 'MO: "x"', "classifications.personal.conditional_countries.MO",
              "MO is both permitted and conditional")


def test_conditional_country_unknown():
    text = MINIMAL.replace("    min_tls", "    conditional_countries:\n      EU: \"x\"\n"
                                          "    min_tls")
    one_error(text, 'EU: "x"', "classifications.personal.conditional_countries.EU",
              "unknown country code 'EU'")


def test_conditional_countries_wrong_type():
    text = MINIMAL.replace("    min_tls", "    conditional_countries: [CN]\n    min_tls")
    one_error(text, "conditional_countries: [CN]",
              "classifications.personal.conditional_countries",
              "expected a mapping of country code to condition, got a list")


def test_unknown_classification_in_zone():
    text = with_zones("""\
        - name: finance
          networks: [10.10.3.0/24]
          classification: personel
        """)
    one_error(text, "personel", "zones[0].classification",
              "unknown classification 'personel'", "did you mean 'personal'",
              "(defined: personal)")


def test_unknown_classification_in_default_zone():
    text = MINIMAL.replace("  classification: personal", "  classification: secret")
    one_error(text, "classification: secret", "default_zone.classification",
              "unknown classification 'secret'")


def test_empty_classifications():
    text = MINIMAL.split("classifications:")[0] + "classifications: {}\n"
    one_error(text, "classifications: {}", "classifications", "must not be empty")


def test_duplicate_zone_name():
    text = with_zones("""\
        - name: finance
          networks: [10.10.3.0/24]
          classification: personal
        - name: finance
          networks: [10.10.4.0/24]
          classification: personal
        """)
    (issue,) = errors_of(text)
    first, second = [n for n, ln in enumerate(text.splitlines(), 1) if "- name: finance" in ln]
    assert (issue.file, issue.line, issue.key) == ("bad.yaml", second, "zones[1].name")
    assert f"duplicate zone name 'finance' (first at line {first})" in issue.message


def test_duplicate_zone_name_line_is_the_name():
    text = with_zones("""\
        - name: finance
          networks: [10.10.3.0/24]
          classification: personal
        - classification: personal
          name: finance
          networks: [10.10.4.0/24]
        """)
    one_error(text, "  name: finance", "zones[1].name", "duplicate zone name 'finance'")


def test_default_zone_name_clash():
    text = with_zones("""\
        - name: default
          networks: [10.10.3.0/24]
          classification: personal
        """)
    one_error(text, "  name: default", "default_zone.name", "duplicate zone name 'default'")


def test_same_network_in_two_zones():
    text = with_zones("""\
        - name: finance
          networks: [10.10.3.0/24]
          classification: personal
        - name: hr
          networks: [10.10.4.0/24, 10.10.3.0/24]
          classification: personal
        """)
    one_error(text, "10.10.4.0/24, 10.10.3.0/24", "zones[1].networks[1]",
              "network 10.10.3.0/24 is already in zone 'finance' (zones[0].networks[0])")


def test_nested_networks_in_two_zones_are_fine():
    text = with_zones("""\
        - name: floor
          networks: [10.10.0.0/16]
          classification: personal
        - name: finance
          networks: [10.10.3.0/24]
          classification: personal
        """)
    assert [z.name for z in parse_policy(text, "ok.yaml").zones] == ["floor", "finance"]


def test_bad_name():
    text = MINIMAL.replace("name: minimal", "name: \"my policy\"")
    one_error(text, "my policy", "policy.name", "bad name 'my policy'")


@pytest.mark.parametrize("missing", ["expires", "owner", "reason"])
def test_exception_without_required_key(missing):
    lines = [ln for ln in VALID_EXC.splitlines(keepends=True) if f"{missing}:" not in ln]
    text = with_exceptions("".join(lines))
    one_error(text, "- id: crm", f"exceptions[0].{missing}", f"missing required key {missing!r}")


def test_exception_without_match():
    text = with_exceptions(VALID_EXC.replace("  match: {country: [US]}\n", ""))
    one_error(text, "- id: crm", "exceptions[0].match", "missing required key 'match'")


def test_exception_with_empty_match():
    text = with_exceptions(VALID_EXC.replace("{country: [US]}", "{}"))
    one_error(text, "match: {}", "exceptions[0].match", "an exception must match something")


def test_exception_with_empty_match_kind():
    text = with_exceptions(VALID_EXC.replace("{country: [US]}", "{sni: []}"))
    one_error(text, "match: {sni: []}", "exceptions[0].match.sni", "must not be empty")


def test_bad_date():
    text = with_exceptions(VALID_EXC.replace("2027-06-30", "2027-02-30"))
    one_error(text, "2027-02-30", "exceptions[0].expires", "bad date '2027-02-30'",
              "day is out of range")


def test_bad_quoted_date():
    text = with_exceptions(VALID_EXC.replace("2027-06-30", '"30.06.2027"'))
    one_error(text, "30.06.2027", "exceptions[0].expires", "bad date '30.06.2027'")


def test_date_with_a_time():
    text = with_exceptions(VALID_EXC.replace("2027-06-30", "2027-06-30 12:00:00"))
    one_error(text, "2027-06-30", "exceptions[0].expires", "expected a date without a time")


def test_quoted_date_is_fine():
    text = with_exceptions(VALID_EXC.replace("2027-06-30", '"2027-06-30"'))
    assert parse_policy(text, "ok.yaml").exceptions[0].expires.isoformat() == "2027-06-30"


def test_bad_as_of():
    text = MINIMAL.replace("as_of: 2026-11-01", "as_of: 2026-13-01")
    one_error(text, "as_of", "policy.as_of", "bad date '2026-13-01'")


def test_unknown_rule_in_waives():
    text = with_exceptions(VALID_EXC + "  waives: [residency, tls]\n")
    one_error(text, "waives:", "exceptions[0].waives[1]", "unknown rule 'tls'",
              "rules are geo_unknown, residency, plaintext, tls_version, no_handshake")


def test_unknown_zone_in_exception():
    text = with_exceptions(VALID_EXC + "  zones: [finanse]\n", zones="""\
        - name: finance
          networks: [10.10.3.0/24]
          classification: personal
        """)
    one_error(text, "zones: [finanse]", "exceptions[0].zones[0]", "unknown zone 'finanse'",
              "did you mean 'finance'")


def test_duplicate_exception_id():
    text = with_exceptions(VALID_EXC + VALID_EXC)
    errors = errors_of(text)
    assert len(errors) == 1
    second_id_line = [n for n, ln in enumerate(text.splitlines(), 1) if "- id: crm" in ln][1]
    assert (errors[0].line, errors[0].key) == (second_id_line, "exceptions[1].id")
    assert "duplicate exception id 'crm'" in errors[0].message


def test_bad_tls_version_name():
    text = MINIMAL.replace('min_tls: "TLS 1.2"', "min_tls: TLSv1.2")
    one_error(text, "TLSv1.2", "classifications.personal.min_tls",
              "unknown TLS version 'TLSv1.2'", "'TLS 1.2'")


def test_tls_version_as_number():
    text = MINIMAL.replace('min_tls: "TLS 1.2"', "min_tls: 1.2")
    one_error(text, "min_tls", "classifications.personal.min_tls", "unknown TLS version '1.2'")


@pytest.mark.parametrize("pattern", ["*crm.example", "crm.*.example", "*", "*.", "**.example",
                                     "*.*.example"])
def test_malformed_wildcard_sni(pattern):
    text = with_exceptions(VALID_EXC.replace("{country: [US]}", f'{{sni: ["{pattern}"]}}'))
    one_error(text, "sni:", "exceptions[0].match.sni[0]", "malformed wildcard")


def test_bad_sni_host_name():
    text = with_exceptions(VALID_EXC.replace("{country: [US]}", '{sni: ["crm example.com"]}'))
    one_error(text, "sni:", "exceptions[0].match.sni[0]", "bad host name 'crm example.com'")


def test_asn_written_as_text():
    text = with_exceptions(VALID_EXC.replace("{country: [US]}", "{asn: [AS8075]}"))
    one_error(text, "AS8075", "exceptions[0].match.asn[0]", "expected an AS number",
              "write the number: 8075")


def test_asn_out_of_range():
    text = with_exceptions(VALID_EXC.replace("{country: [US]}", "{asn: [4294967296]}"))
    one_error(text, "4294967296", "exceptions[0].match.asn[0]", "out of range")


def test_bad_cidr_in_exception():
    text = with_exceptions(VALID_EXC.replace("{country: [US]}", '{cidr: ["13.107.42.0/40"]}'))
    one_error(text, "13.107.42.0/40", "exceptions[0].match.cidr[0]", "bad CIDR")


def test_bad_choice():
    text = MINIMAL.replace('    min_tls: "TLS 1.2"\n', '    min_tls: "TLS 1.2"\n'
                                                       "    plaintext: maybe\n")
    one_error(text, "plaintext: maybe", "classifications.personal.plaintext",
              "expected one of allow, forbid, got 'maybe'")


def test_bad_app_name():
    one_error(MINIMAL + "not_evaluated_apps: [NTP]\n", "NTP", "not_evaluated_apps[0]",
              "bad app name 'NTP'")


def test_bad_utc_offset():
    text = MINIMAL.replace("  as_of: 2026-11-01\n", "  as_of: 2026-11-01\n  utc_offset: \"8\"\n")
    one_error(text, "utc_offset", "policy.utc_offset", "bad UTC offset '8'")


def test_bad_merge_key():
    text = MINIMAL.replace("    min_tls", "    <<: [1]\n    min_tls")
    (issue,) = errors_of(text)
    assert issue.key == "classifications.personal" and "bad merge key" in issue.message


def test_not_utf8():
    (issue,) = errors_of(MINIMAL.encode() + b"# \xff\n")  # type: ignore[arg-type]
    assert issue.line == 0 and "not UTF-8" in issue.message


def test_missing_file(tmp_path):
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path / "absent.yaml")
    (issue,) = info.value.errors
    assert issue.file.endswith("absent.yaml") and "cannot read" in issue.message


def test_every_error_at_once_and_the_file_is_refused(tmp_path):
    text = with_exceptions("""\
        - id: crm
          match: {country: [EU], sni: ["*x.example"]}
          waives: [residenc]
        """, zones="""\
        - name: finance
          networks: [10.10.3.0/33]
          classification: secret
        """).replace('min_tls: "TLS 1.2"', 'min_tls: "TLS 2"')
    path = tmp_path / "site.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    errors = info.value.errors
    keys = [e.key for e in errors]
    assert keys == [
        "classifications.personal.min_tls",
        "zones[0].networks[0]", "zones[0].classification",
        "exceptions[0].reason", "exceptions[0].owner", "exceptions[0].expires",
        "exceptions[0].match.country[0]", "exceptions[0].match.sni[0]",
        "exceptions[0].waives[0]",
    ]
    assert [e.line for e in errors] == sorted(e.line for e in errors)
    assert all(e.file == str(path) for e in errors)
    assert str(info.value).splitlines() == [str(e) for e in errors]
    assert str(info.value).splitlines()[0].startswith(f"{path}:{errors[0].line}: ")


def test_a_policy_is_immutable():
    policy = site()
    with pytest.raises(AttributeError):
        policy.name = "other"  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# The shipped packs
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def packs() -> dict[str, Policy]:
    return {p.stem: load_policy(p) for p in sorted(PACKS.glob("*.yaml"))}


def test_three_packs_load(packs):
    assert set(packs) == {"macau-pdpa", "gdpr-chapter-v", "japan-appi"}
    for name, policy in packs.items():
        assert policy.name == name
        assert policy.legal_basis and policy.title and policy.sources
        assert policy.as_of.isoformat() == "2026-11-01"
        assert policy.notice and "Not legal advice" in policy.notice
        assert policy.not_evaluated_apps == {"icmp", "icmp6", "ntp"}
        assert policy.default_zone.classification == "personal"
        assert set(policy.classifications) == {"public", "internal", "personal", "sensitive"}
        assert policy.classifications["personal"].min_tls == "TLS 1.2"
        assert policy.classifications["sensitive"].min_tls == "TLS 1.3"
        raw = (PACKS / f"{name}.yaml").read_bytes()
        assert policy.sha256 == hashlib.sha256(raw).hexdigest()


def residency(policy: Policy, country: str, classification: str = "personal") -> str:
    """The verdict of a TLS 1.3 flow from the default zone to ``country``."""
    assert policy.default_zone.classification == classification
    return evaluate(facts(client_ip="192.168.1.9", country=country), policy).verdict


def explanation(policy: Policy, country: str) -> str:
    return evaluate(facts(client_ip="192.168.1.9", country=country), policy).explanation


def test_macau_pack_countries(packs):
    macau = packs["macau-pdpa"]
    assert residency(macau, "MO") == "compliant"
    assert residency(macau, "HK") == "violation"
    assert "HK is not permitted (permitted: MO)" in explanation(macau, "HK")
    assert residency(macau, "CN") == "violation"
    assert "CN is conditional: Greater Bay Area standard contract" in explanation(macau, "CN")
    assert "no approved exception" in explanation(macau, "CN")
    assert residency(macau, "US") == "violation"


def test_gdpr_pack_countries(packs):
    gdpr = packs["gdpr-chapter-v"]
    personal = gdpr.classifications["personal"]
    assert EEA_COUNTRIES.issubset(personal.permitted)
    assert {"AD", "AR", "FO", "GG", "IL", "IM", "JP", "JE", "NZ", "KR", "CH", "GB", "UY",
            "BR"} <= personal.permitted
    assert len(personal.permitted) == 30 + 14
    assert residency(gdpr, "DE") == "compliant"
    assert residency(gdpr, "NO") == "compliant"
    assert residency(gdpr, "GB") == "compliant"
    assert residency(gdpr, "US") == "violation"
    assert "US is conditional" in explanation(gdpr, "US")
    assert "Data Privacy Framework" in explanation(gdpr, "US")
    assert "CA is conditional" in explanation(gdpr, "CA")
    assert residency(gdpr, "CN") == "violation"
    assert "CN is not permitted" in explanation(gdpr, "CN")
    assert "Art. 46" in explanation(gdpr, "CN")


def test_appi_pack_countries(packs):
    appi = packs["japan-appi"]
    assert appi.classifications["personal"].permitted == EEA_COUNTRIES | {"JP", "GB"}
    for ok in ("JP", "GB", "FR", "NO"):
        assert residency(appi, ok) == "compliant", ok
    for conditional in ("US", "CN", "SG"):
        assert residency(appi, conditional) == "violation"
        assert f"{conditional} is conditional: the person's prior consent" in explanation(
            appi, conditional)


def test_packs_share_the_sensitive_rules(packs):
    for policy in packs.values():
        personal = policy.classifications["personal"]
        sensitive = policy.classifications["sensitive"]
        assert personal.permitted == sensitive.permitted
        assert personal.conditional == sensitive.conditional


def test_country_data():
    assert len(COUNTRY_CODES) == 249
    assert len(EU_MEMBERS) == 27 and len(EEA_COUNTRIES) == 30
    assert EEA_COUNTRIES <= COUNTRY_CODES
    assert not {"EU", "UK", "EL", "XK"} & COUNTRY_CODES
    assert {"MO", "HK", "CN", "TW"} <= COUNTRY_CODES


def test_default_policy_is_the_macau_pack():
    assert PACKAGED_DEFAULT.read_bytes() == (PACKS / "macau-pdpa.yaml").read_bytes()
    policy = default_policy()
    assert policy.name == "macau-pdpa"
    assert policy.sha256 == hashlib.sha256(PACKAGED_DEFAULT.read_bytes()).hexdigest()
    assert policy.classifications["personal"].min_tls == "TLS 1.2"
    assert policy.classifications["sensitive"].min_tls == "TLS 1.3"
    assert policy.utc_offset == timedelta(hours=8)


# --------------------------------------------------------------------------------------------
# Zones
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ip, zone", [
    ("10.10.3.21", "finance"),       # the /24 inside the floor's /16: longest prefix wins
    ("10.10.5.20", "floor"),
    ("fd00:10::31", "finance"),
    ("192.168.50.7", "guest"),
    ("192.168.1.23", "default"),
    ("fd00:20::1", "default"),
])
def test_zone_is_the_longest_prefix(ip, zone):
    assert zone_of(ip, site()).name == zone


def test_nested_zone_order_does_not_matter():
    text = SITE.replace("  - name: floor\n    networks: [10.10.0.0/16]\n"
                        "    classification: personal\n", "")
    text = text.replace("    classification: public\n", "    classification: public\n"
                        "  - name: floor\n    networks: [10.10.0.0/16]\n"
                        "    classification: personal\n", 1)
    policy = parse_policy(text, "reordered.yaml")
    assert policy.zones[-1].name == "floor"
    assert zone_of("10.10.3.21", policy).name == "finance"
    assert zone_of("10.10.9.9", policy).name == "floor"


def test_verdict_names_the_zone_and_classification():
    v = evaluate(facts(client_ip="10.10.3.21"), site())
    assert (v.zone, v.classification) == ("finance", "sensitive")
    v = evaluate(facts(client_ip="172.16.0.9"), site())
    assert (v.zone, v.classification) == ("default", "personal")


# --------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------


def test_compliant():
    v = evaluate(facts(), site())
    assert (v.verdict, v.violations, v.waived, v.exception) == ("compliant", (), (), None)
    assert v.explanation == ("zone floor (personal): destination MO is permitted; "
                             "TLS 1.3 meets the minimum TLS 1.2")


def test_residency_not_permitted():
    v = evaluate(facts(country="US"), site())
    assert (v.verdict, v.violations) == ("violation", ("residency",))
    assert v.explanation == ("zone floor (personal): destination US is not permitted "
                             "(permitted: MO); needs an Art. 20 notification or authorisation")


def test_residency_conditional_quotes_the_condition():
    v = evaluate(facts(country="CN"), site())
    assert (v.verdict, v.violations) == ("violation", ("residency",))
    assert v.explanation == ("zone floor (personal): destination CN is conditional: Greater Bay "
                             "Area standard contract (Mainland-Macao); no approved exception")


def test_residency_conditional_star():
    lenient = site(**{"  classification: personal\n  owner: \"IT\"":
                      "  classification: lenient\n  owner: \"IT\""})
    v = evaluate(facts(client_ip="192.168.1.9", country="SG"), lenient)
    assert v.violations == ("residency",)
    assert "SG is conditional: consent after information" in v.explanation
    assert evaluate(facts(client_ip="192.168.1.9", country="NO"), lenient).verdict == "compliant"


def test_geo_unknown_fails_closed_and_skips_residency():
    v = evaluate(facts(country=None, country_source=None), site())
    assert (v.verdict, v.violations) == ("violation", ("geo_unknown",))
    assert "202.175.1.10 could not be located" in v.explanation


def test_unlocated_allow():
    lenient = site(**{"  classification: personal\n  owner: \"IT\"":
                      "  classification: lenient\n  owner: \"IT\""})
    v = evaluate(facts(client_ip="192.168.1.9", country=None), lenient)
    assert v.verdict == "compliant"


def test_any_country_needs_no_location():
    v = evaluate(facts(client_ip="192.168.50.7", country=None), site())
    assert (v.verdict, v.zone) == ("compliant", "guest")


def test_plaintext_forbidden():
    v = evaluate(facts(app="http", server_port=80, tls_version=None, encrypted=False), site())
    assert (v.verdict, v.violations) == ("violation", ("plaintext",))
    assert "plaintext http (not encrypted) is forbidden for personal data" in v.explanation


def test_a_flow_the_inside_never_sent_on_is_not_evaluated():
    v = evaluate(facts(country="US", client_sent=False), site())
    assert v.verdict == "not_evaluated" and "the internal side sent nothing" in v.explanation
    assert evaluate(facts(country="US"), site()).verdict == "violation"


def test_flow_export_records_are_judged_on_residency_only():
    """NetFlow/IPFIX show no handshake: the transport rules are not judged, not all failed."""
    blind = dict(app="unknown", tls_version=None, encrypted=False, sni=None,
                 transport_visible=False)
    v = evaluate(facts(**blind), site())
    assert v.verdict == "compliant"
    assert "transport security not judged (flow export carries no handshake)" in v.explanation
    v = evaluate(facts(**blind, country="US"), site())
    assert (v.verdict, v.violations) == ("violation", ("residency",))
    # the same flow from a capture, with no handshake seen, is the no_handshake violation
    seen = evaluate(facts(**{**blind, "transport_visible": True}), site())
    assert seen.violations == ("no_handshake",)


@pytest.mark.parametrize("app", ["http", "ftp", "smtp", "pop3", "imap", "telnet", "ldap"])
def test_every_plaintext_protocol(app):
    v = evaluate(facts(app=app, tls_version=None, encrypted=False), site())
    assert v.violations == ("plaintext",)


def test_plaintext_allowed_for_public():
    v = evaluate(facts(client_ip="192.168.50.7", app="http", tls_version=None, encrypted=False,
                       country="US"), site())
    assert v.verdict == "compliant"
    assert "plaintext http (not encrypted) is allowed for public data" in v.explanation


def test_starttls_upgraded_is_judged_on_its_version():
    upgraded = facts(app="smtp", server_port=25, tls_version=TLS12, encrypted=True)
    assert evaluate(upgraded, site()).verdict == "compliant"
    old = facts(app="smtp", server_port=25, tls_version=TLS10, encrypted=True)
    assert evaluate(old, site()).violations == ("tls_version",)


def test_starttls_without_version_is_no_handshake():
    v = evaluate(facts(app="imap", tls_version=None, encrypted=True), site())
    assert v.violations == ("no_handshake",)


def test_tls_version_below_minimum():
    v = evaluate(facts(tls_version=TLS10), site())
    assert (v.verdict, v.violations) == ("violation", ("tls_version",))
    assert v.explanation == "zone floor (personal): TLS 1.0 is below the minimum TLS 1.2"


def test_sensitive_zone_needs_tls13():
    v = evaluate(facts(client_ip="10.10.3.21", tls_version=TLS12), site())
    assert v.violations == ("tls_version",)
    assert "TLS 1.2 is below the minimum TLS 1.3" in v.explanation
    assert evaluate(facts(client_ip="10.10.3.21"), site()).verdict == "compliant"


@pytest.mark.parametrize("code, ok_at_tls10", [
    (0x0002, False),   # SSL 2.0
    (0x0300, False),   # SSL 3.0
    (TLS10, True),
    (TLS11, True),
    (0x7F17, True),    # TLS 1.3 draft 23
    (0xFEFD, True),    # DTLS 1.2
    (0x1234, False),   # unknown
])
def test_tls_version_ranks(code, ok_at_tls10):
    lenient = site(**{"  classification: personal\n  owner: \"IT\"":
                      "  classification: lenient\n  owner: \"IT\""})
    v = evaluate(facts(client_ip="192.168.1.9", tls_version=code), lenient)
    assert (v.verdict == "compliant") is ok_at_tls10, v


def test_tls13_draft_counts_as_tls13():
    v = evaluate(facts(client_ip="10.10.3.21", tls_version=0x7F1C), site())
    assert v.verdict == "compliant"


def test_quic_without_version_is_tls13():
    v = evaluate(facts(client_ip="10.10.3.21", app="quic", transport="udp", tls_version=None),
                 site())
    assert v.verdict == "compliant" and "TLS 1.3 (QUIC)" in v.explanation


def test_tls_without_server_hello_is_no_handshake():
    v = evaluate(facts(tls_version=None), site())
    assert (v.verdict, v.violations) == ("violation", ("no_handshake",))
    assert "no ServerHello was seen" in v.explanation
    assert "a flow whose handshake was never seen is not compliant" in v.explanation


def test_unknown_protocol_with_payload_is_no_handshake():
    v = evaluate(facts(app="unknown", server_port=9999, tls_version=None, encrypted=False,
                       sni=None), site())
    assert v.violations == ("no_handshake",)
    assert "no recognised encryption handshake" in v.explanation


def test_no_handshake_not_required_where_plaintext_is_allowed():
    v = evaluate(facts(client_ip="192.168.50.7", app="unknown", tls_version=None,
                       encrypted=False), site())
    assert v.verdict == "compliant"


def test_no_payload_gets_residency_checks_only():
    syn = dict(app="unknown", tls_version=None, encrypted=False, payload=False, sni=None)
    v = evaluate(facts(**syn), site())
    assert v.verdict == "compliant" and "no payload was exchanged" in v.explanation
    assert evaluate(facts(country="US", **syn), site()).violations == ("residency",)
    assert evaluate(facts(country=None, **syn), site()).violations == ("geo_unknown",)


def test_dns_is_judged_on_residency_only():
    dns = dict(app="dns", transport="udp", server_port=53, tls_version=None, encrypted=False,
               sni=None)
    assert evaluate(facts(**dns), site()).verdict == "compliant"
    v = evaluate(facts(country="US", **dns), site())
    assert v.violations == ("residency",)


def test_ssh_is_encrypted_without_a_tls_rule():
    v = evaluate(facts(app="ssh", server_port=22, tls_version=None, encrypted=True, sni=None),
                 site())
    assert v.verdict == "compliant" and "ssh is encrypted by design" in v.explanation


def test_several_violations_in_rule_order():
    v = evaluate(facts(country="US", tls_version=TLS10), site())
    assert v.violations == ("residency", "tls_version")
    assert v.explanation == ("zone floor (personal): destination US is not permitted "
                             "(permitted: MO); needs an Art. 20 notification or authorisation; "
                             "TLS 1.0 is below the minimum TLS 1.2")


@pytest.mark.parametrize("direction", ["inbound", "internal", "external"])
def test_only_outbound_is_evaluated(direction):
    v = evaluate(facts(direction=direction, country="US", tls_version=TLS10), site())
    assert (v.verdict, v.violations, v.zone) == ("not_evaluated", (), None)
    assert f"direction {direction}" in v.explanation and "only outbound" in v.explanation


@pytest.mark.parametrize("app, transport", [
    ("icmp", "icmp"), ("icmp", "icmp6"), ("ntp", "udp"), ("unknown", "icmp6"),
])
def test_not_evaluated_apps(app, transport):
    v = evaluate(facts(app=app, transport=transport, tls_version=None, encrypted=False,
                       country="US"), site())
    assert v.verdict == "not_evaluated" and v.violations == ()
    assert "not_evaluated_apps" in v.explanation
    assert v.zone == "floor"


# --------------------------------------------------------------------------------------------
# Exceptions
# --------------------------------------------------------------------------------------------

CRM_SNI = """\
- id: crm-us
  match:
    sni: ["crm.example.com", "*.crm-saas.example"]
  reason: "DPA signed 2026-01-10"
  owner: "DPO <dpo@example.mo>"
  expires: 2027-06-30
"""


def exempt_by(exceptions: str, **kw) -> str | None:
    v = evaluate(facts(country="US", **kw), site(exceptions))
    assert v.verdict in ("exempt", "violation")
    return v.exception if v.verdict == "exempt" else None


@pytest.mark.parametrize("sni, hit", [
    ("crm.example.com", True),
    ("CRM.Example.COM", True),        # case-insensitive
    ("crm.example.com.", True),       # a trailing dot is the same name
    ("www.crm.example.com", False),   # an exact name is exact
    ("eu.crm-saas.example", True),    # a wildcard takes sub-domains ...
    ("a.b.crm-saas.example", True),   # ... at any depth ...
    ("crm-saas.example", False),      # ... but not the domain itself
    ("xcrm-saas.example", False),
    (None, False),
])
def test_sni_exception(sni, hit):
    assert (exempt_by(CRM_SNI, sni=sni) == "crm-us") is hit


def test_sni_exception_matches_resolved_names():
    assert exempt_by(CRM_SNI, sni=None, server_names=("api.crm-saas.example",)) == "crm-us"
    assert exempt_by(CRM_SNI, sni="other.example",
                     server_names=("x.example", "CRM.example.com")) == "crm-us"
    assert exempt_by(CRM_SNI, sni=None, server_names=("x.example",)) is None


def test_exempt_verdict_names_the_exception():
    v = evaluate(facts(country="US", sni="crm.example.com"), site(CRM_SNI))
    assert (v.verdict, v.violations, v.waived, v.exception) == (
        "exempt", (), ("residency",), "crm-us")
    assert v.explanation == (
        "exempt by crm-us (owner DPO <dpo@example.mo>, expires 2027-06-30): residency waived. "
        "zone floor (personal): destination US is not permitted (permitted: MO); needs an "
        "Art. 20 notification or authorisation")


@pytest.mark.parametrize("server_ip, hit", [
    ("13.107.42.14", True), ("13.107.43.1", False), ("2603:1000::1", False)])
def test_cidr_exception(server_ip, hit):
    exc = CRM_SNI.replace('sni: ["crm.example.com", "*.crm-saas.example"]',
                          'cidr: ["13.107.42.0/24", "2001:db8::/32"]')
    assert (exempt_by(exc, server_ip=server_ip) == "crm-us") is hit


def test_cidr_exception_ipv6():
    exc = CRM_SNI.replace('sni: ["crm.example.com", "*.crm-saas.example"]',
                          'cidr: ["2001:db8::/32"]')
    assert exempt_by(exc, server_ip="2001:db8::7") == "crm-us"


@pytest.mark.parametrize("asn, hit", [(8075, True), (15169, False), (None, False)])
def test_asn_exception(asn, hit):
    exc = CRM_SNI.replace('sni: ["crm.example.com", "*.crm-saas.example"]', "asn: [8075, 3598]")
    assert (exempt_by(exc, asn=asn) == "crm-us") is hit


def test_country_exception():
    exc = CRM_SNI.replace('sni: ["crm.example.com", "*.crm-saas.example"]', "country: [US, CN]")
    assert exempt_by(exc) == "crm-us"
    v = evaluate(facts(country="CN"), site(exc))
    assert (v.verdict, v.exception) == ("exempt", "crm-us")
    v = evaluate(facts(country="HK"), site(exc))
    assert (v.verdict, v.exception) == ("violation", None)


def test_country_exception_never_matches_an_unlocated_server():
    exc = CRM_SNI.replace('sni: ["crm.example.com", "*.crm-saas.example"]', "country: [US]")
    exc += "  waives: [geo_unknown, residency]\n"
    v = evaluate(facts(country=None), site(exc))
    assert (v.verdict, v.violations) == ("violation", ("geo_unknown",))


def test_combined_kinds_must_all_match():
    exc = CRM_SNI.replace('sni: ["crm.example.com", "*.crm-saas.example"]',
                          'sni: ["crm.example.com"]\n    country: [US]\n    asn: [8075]')
    assert exempt_by(exc, sni="crm.example.com", asn=8075) == "crm-us"
    assert exempt_by(exc, sni="crm.example.com", asn=15169) is None
    assert exempt_by(exc, sni="other.example", asn=8075) is None
    v = evaluate(facts(country="CN", sni="crm.example.com", asn=8075), site(exc))
    assert v.verdict == "violation"


def test_exception_limited_to_zones():
    exc = CRM_SNI + "  zones: [floor]\n"
    assert exempt_by(exc, sni="crm.example.com") == "crm-us"
    v = evaluate(facts(client_ip="192.168.1.9", country="US", sni="crm.example.com"), site(exc))
    assert (v.verdict, v.zone, v.exception) == ("violation", "default", None)


def test_exception_for_the_default_zone():
    exc = CRM_SNI + "  zones: [default]\n"
    v = evaluate(facts(client_ip="192.168.1.9", country="US", sni="crm.example.com"), site(exc))
    assert (v.verdict, v.exception) == ("exempt", "crm-us")


def test_exception_without_zones_covers_every_zone():
    for ip in ("10.10.5.20", "10.10.3.21", "192.168.1.9"):
        v = evaluate(facts(client_ip=ip, country="US", sni="crm.example.com"), site(CRM_SNI))
        assert v.exception == "crm-us", ip


def test_waiver_covers_only_its_rules():
    v = evaluate(facts(country="US", sni="crm.example.com", tls_version=TLS10), site(CRM_SNI))
    assert (v.verdict, v.violations, v.waived, v.exception) == (
        "violation", ("tls_version",), ("residency",), "crm-us")
    assert v.explanation.startswith("zone floor (personal): TLS 1.0 is below the minimum TLS 1.2."
                                    " Exception crm-us (owner DPO <dpo@example.mo>, expires "
                                    "2027-06-30) waived residency")


def test_waiver_of_several_rules():
    exc = CRM_SNI + "  waives: [residency, tls_version]\n"
    v = evaluate(facts(country="US", sni="crm.example.com", tls_version=TLS10), site(exc))
    assert (v.verdict, v.violations, v.waived) == ("exempt", (), ("residency", "tls_version"))
    assert "residency, tls_version waived" in v.explanation


def test_exception_that_waives_other_rules():
    exc = CRM_SNI + "  waives: [tls_version]\n"
    v = evaluate(facts(country="US", sni="crm.example.com"), site(exc))
    assert (v.verdict, v.violations, v.waived, v.exception) == (
        "violation", ("residency",), (), None)
    assert "Exception crm-us applies but waives only tls_version" in v.explanation


def test_exception_on_a_compliant_flow_changes_nothing():
    v = evaluate(facts(country="MO", sni="crm.example.com"), site(CRM_SNI))
    assert (v.verdict, v.exception) == ("compliant", None)


def at(day: str, hh: int, mm: int = 0, ss: int = 0) -> float:
    """Packet time in Macau local time (the site policy's utc_offset)."""
    y, m, d = map(int, day.split("-"))
    return datetime(y, m, d, hh, mm, ss, tzinfo=MACAU).timestamp()


@pytest.mark.parametrize("ts, valid", [
    (at("2027-06-29", 12), True),             # before the expiry date
    (at("2027-06-30", 0), True),              # on it, from its first second ...
    (at("2027-06-30", 23, 59, 59), True),     # ... to its last, in the policy's time zone
    (at("2027-07-01", 0), False),             # after it (2027-06-30T16:00Z)
    (at("2028-01-01", 12), False),
])
def test_expiry_at_packet_time(ts, valid):
    v = evaluate(facts(country="US", sni="crm.example.com", ts=ts), site(CRM_SNI))
    if valid:
        assert (v.verdict, v.exception, v.exception_expired) == ("exempt", "crm-us", None)
    else:
        assert (v.verdict, v.exception, v.exception_expired) == ("violation", None, "crm-us")
        assert "exception crm-us expired 2027-06-30 and does not apply" in v.explanation.lower()


def test_expiry_uses_utc_by_default():
    policy = site(CRM_SNI, **{'  utc_offset: "+08:00"\n': ""})
    late = datetime(2027, 6, 30, 23, 30, tzinfo=timezone.utc).timestamp()
    assert evaluate(facts(country="US", sni="crm.example.com", ts=late), policy).exception \
        == "crm-us"
    assert evaluate(facts(country="US", sni="crm.example.com", ts=late + 3600),
                    policy).exception_expired == "crm-us"


TWO = """\
- id: first
  match: {country: [US]}
  reason: "r1"
  owner: "o1"
  expires: {first_expires}
- id: second
  match: {sni: ["crm.example.com"]}
  reason: "r2"
  owner: "o2"
  expires: 2027-12-31
  waives: [residency, tls_version]
"""


def test_exceptions_in_file_order():
    v = evaluate(facts(country="US", sni="crm.example.com"),
                 site(TWO.replace("{first_expires}", "2027-06-30")))
    assert (v.exception, v.exception_expired) == ("first", None)


def test_first_applying_exception_is_the_only_one():
    v = evaluate(facts(country="US", sni="crm.example.com", tls_version=TLS10),
                 site(TWO.replace("{first_expires}", "2027-06-30")))
    assert (v.verdict, v.violations, v.exception) == ("violation", ("tls_version",), "first")


def test_expired_first_exception_does_not_block_a_valid_second():
    v = evaluate(facts(country="US", sni="crm.example.com"),
                 site(TWO.replace("{first_expires}", "2026-12-31")))
    assert (v.verdict, v.exception, v.exception_expired) == ("exempt", "second", "first")
    assert "exempt by second" in v.explanation
    assert "Exception first expired 2026-12-31 and does not apply" in v.explanation


def test_non_matching_exception_is_ignored():
    v = evaluate(facts(country="HK", sni="erp.hk-supplier.example"),
                 site(TWO.replace("{first_expires}", "2027-06-30")))
    assert (v.verdict, v.exception, v.exception_expired) == ("violation", None, None)


def test_exception_waives_geo_unknown_and_no_handshake():
    exc = CRM_SNI + "  waives: [geo_unknown, no_handshake]\n"
    v = evaluate(facts(country=None, sni="crm.example.com", tls_version=None), site(exc))
    assert (v.verdict, v.waived) == ("exempt", ("geo_unknown", "no_handshake"))


def test_plaintext_exception():
    exc = CRM_SNI + "  waives: [plaintext]\n"
    v = evaluate(facts(app="http", tls_version=None, encrypted=False, sni=None,
                       server_names=("crm.example.com",)), site(exc))
    assert (v.verdict, v.waived, v.exception) == ("exempt", ("plaintext",), "crm-us")


def test_evaluate_is_pure():
    policy = site(CRM_SNI)
    f = facts(country="US", sni="crm.example.com")
    assert evaluate(f, policy) == evaluate(f, policy)


# --------------------------------------------------------------------------------------------
# explain, tls_version_code
# --------------------------------------------------------------------------------------------


def test_explain_walks_every_step():
    policy = site(TWO.replace("{first_expires}", "2026-12-31"))
    text = explain(facts(client_ip="10.10.3.21", country="US", sni="crm.example.com",
                         tls_version=TLS12, asn=8075), policy)
    lines = text.splitlines()
    assert lines[0].startswith("policy test-site: Test site policy (as of 2026-11-01, sha256 ")
    assert "10.10.3.21 -> 202.175.1.10:443 tcp app tls, outbound, at 2027-01-15T10:00:00+08:00" \
        in lines[1]
    assert "zone: finance (longest match 10.10.3.0/24 of 10.10.3.21)" in text
    assert "rules (sensitive): permitted MO; conditional CN: Greater Bay Area" in text
    assert "min_tls TLS 1.3" in text
    assert "destination: country US (by geoip), AS 8075, sni crm.example.com" in text
    assert "  geo_unknown: pass: destination located in US (by geoip)" in lines
    assert "  residency: violation: destination US is not permitted (permitted: MO); needs an " \
        "Art. 20 notification or authorisation" in lines
    assert "  tls_version: violation: TLS 1.2 is below the minimum TLS 1.3" in lines
    assert "  plaintext: n/a" in lines
    assert "exceptions (in file order, judged on 2027-01-15):" in lines
    assert "  first: matches but expired 2026-12-31: does not apply" in lines
    assert "  second: matches and applies, waives residency, tls_version" in lines
    assert lines[-1].startswith("verdict: exempt: exempt by second")


def test_explain_default_zone_and_misfits():
    text = explain(facts(client_ip="192.168.1.9", country="HK", sni="x.example"),
                   site(CRM_SNI + "  zones: [floor]\n"))
    assert "no zone network contains 192.168.1.9: the default zone" in text
    assert "crm-us: does not match: zone default is not in its zones (floor)" in text
    assert text.splitlines()[-1].startswith("verdict: violation: zone default (personal)")


def test_explain_not_evaluated():
    text = explain(facts(direction="inbound"), site())
    assert text.splitlines()[-1].startswith("verdict: not_evaluated: not evaluated: direction")
    text = explain(facts(app="ntp", transport="udp"), site())
    assert "zone: floor" in text and "not_evaluated_apps" in text.splitlines()[-1]


@pytest.mark.parametrize("name, code", [
    ("TLS 1.3", 0x0304), ("TLS 1.2", 0x0303), ("TLS 1.0", 0x0301), ("SSL 3.0", 0x0300),
    ("SSL 2.0", 0x0002), ("TLS 1.3 draft 23", 0x7F17), ("DTLS 1.2", 0xFEFD), ("0x1234", 0x1234),
    (None, None), ("nonsense", None),
])
def test_tls_version_code(name, code):
    assert tls_version_code(name) == code
