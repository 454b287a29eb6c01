"""Pseudonyms of internal addresses: keyed, stable, only for our networks, key kept private."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from residency_monitor.cli import main
from residency_monitor.pseudonym import KeyFileError, Pseudonymizer, load_key, pseudonym

KEY = b"k" * 32


def _key_file(tmp_path, data: bytes = KEY, mode: int = 0o600):
    path = tmp_path / "audit.key"
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def test_pseudonym_is_a_keyed_hash_of_the_packed_address():
    expected = "anon-" + hmac.new(KEY, bytes([10, 1, 2, 3]), hashlib.sha256).hexdigest()[:16]
    assert pseudonym(KEY, "10.1.2.3") == expected
    assert pseudonym(KEY, "10.1.2.3") != pseudonym(b"x" * 32, "10.1.2.3")
    # one IPv6 address, two spellings, one pseudonym
    assert pseudonym(KEY, "fd00::1") == pseudonym(KEY, "fd00:0:0:0:0:0:0:1")
    with pytest.raises(ValueError):
        pseudonym(KEY, "not-an-address")


def test_only_internal_addresses_are_replaced():
    p = Pseudonymizer(KEY, ("10.0.0.0/8", "fd00::/8"))
    rec = {"client_ip": "10.1.2.3", "server_ip": "13.107.42.14", "tls_sni": "x.example"}
    out = p.record(rec)
    assert out["client_ip"] == pseudonym(KEY, "10.1.2.3")
    assert out["server_ip"] == "13.107.42.14" and out["tls_sni"] == "x.example"
    assert rec["client_ip"] == "10.1.2.3"          # a new dict: the caller's is untouched
    inbound = p.record({"client_ip": "198.51.100.7", "server_ip": "fd00::5"})
    assert inbound == {"client_ip": "198.51.100.7", "server_ip": pseudonym(KEY, "fd00::5")}
    assert p.address("junk") == "junk"
    assert p.endpoint("10.1.2.3:443") == pseudonym(KEY, "10.1.2.3") + ":443"
    assert p.endpoint("[fd00::5]:443") == f"[{pseudonym(KEY, 'fd00::5')}]:443"
    assert "k" * 16 not in repr(p)


@given(st.integers(0, 2**24 - 1), st.integers(0, 2**32 - 1))
def test_pseudonyms_have_one_shape_and_external_addresses_stay(host: int, other: int):
    p = Pseudonymizer(KEY, ("10.0.0.0/8",))
    internal = str(ipaddress.IPv4Address((10 << 24) | host))
    out = p.address(internal)
    assert out.startswith("anon-") and len(out) == 21 and int(out[5:], 16) >= 0
    external = ipaddress.IPv4Address(other)
    if external not in ipaddress.ip_network("10.0.0.0/8"):
        assert p.address(str(external)) == str(external)


def test_key_file_rules(tmp_path):
    assert load_key(_key_file(tmp_path, KEY + b"\n")) == KEY   # a trailing newline is not key
    with pytest.raises(KeyFileError, match="audit.key: .*cannot read"):
        load_key(tmp_path / "missing" / "audit.key")
    with pytest.raises(KeyFileError, match=r"audit.key: .*has 5 bytes; at least 16"):
        load_key(_key_file(tmp_path, b"short"))
    with pytest.raises(KeyFileError, match=r"audit.key: .*readable by everyone \(mode 0644\)"):
        load_key(_key_file(tmp_path, KEY, 0o644))
    with pytest.raises(KeyFileError, match="regular file"):
        load_key(tmp_path)


def test_key_is_never_in_an_error_message(tmp_path):
    secret = b"s3cr3t-key-material-0123456789"
    with pytest.raises(KeyFileError) as err:
        load_key(_key_file(tmp_path, secret, 0o604))
    assert secret.decode() not in str(err.value)


def test_cli_computes_the_pseudonym_an_investigator_searches_for(tmp_path):
    key = _key_file(tmp_path)
    res = CliRunner().invoke(main, ["audit", "pseudonym", "--key-file", str(key),
                                    "10.1.2.3", "fd00::1"])
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines() == [f"10.1.2.3 {pseudonym(KEY, '10.1.2.3')}",
                                       f"fd00::1 {pseudonym(KEY, 'fd00::1')}"]
    bad = CliRunner().invoke(main, ["audit", "pseudonym", "--key-file", str(key), "nope"])
    assert bad.exit_code == 2 and "not an IP address" in bad.output
    os.chmod(key, 0o644)
    refused = CliRunner().invoke(main, ["audit", "pseudonym", "--key-file", str(key), "10.1.2.3"])
    assert refused.exit_code == 2 and "readable by everyone" in refused.output
