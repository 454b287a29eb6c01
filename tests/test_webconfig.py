"""``--web.config.file``: the exporter-toolkit web configuration, on a real HTTPS endpoint.

The file's mistakes are refused with FILE:LINE; TLS versions, client
certificates and their SANs, bcrypt users, headers and the rate limit are
tried with real connections; and a real Prometheus scrapes the endpoint with
the same credentials an admin would give it for node_exporter.
"""

from __future__ import annotations

import base64
import http.client
import os
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import pytest
from certs import certificates
from prometheus_client import CollectorRegistry, Counter
from prometheus_fixture import running_prometheus, scrape_config

from residency_monitor.exporter import Exporter
from residency_monitor.webconfig import BasicAuth, WebConfigFile, load_web_config
from residency_monitor.yamlcheck import ConfigError

PASSWORD = "s3cret scrape"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()  # cheap in tests


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, str]:
    return certificates(tmp_path_factory.mktemp("certs"))


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def get(url: str, ctx: ssl.SSLContext | None = None, auth: tuple[str, str] | None = None,
        ) -> tuple[int, dict[str, str], bytes]:
    headers = {}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(
            f"{auth[0]}:{auth[1]}".encode()).decode()
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def serve(config: Path) -> Exporter:
    registry = CollectorRegistry()
    Counter("residency_test_total", "a counter to scrape", registry=registry).inc()
    exp = Exporter(registry, port=0, web_config=WebConfigFile(config))
    exp.start()
    return exp


# -- the file ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, line, message", [
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_versoin: TLS13\n", 4,
     "unknown key 'min_versoin' (did you mean 'min_version'?)"),
    ("basic_auth_users:\n  alice: hunter2\n", 2, "not a plain password"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS14\n", 4,
     "expected one of TLS10, TLS11, TLS12, TLS13"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_ca_file: c\n"
     "  client_auth_type: RequireAnyClientCert\n", 5, "nobody verified"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_allowed_sans: [x]\n", 2,
     "client_allowed_sans needs client_auth_type RequireAndVerifyClientCert"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n"
     "  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n", 4, "unknown or unsupported"),
    ("tls_server_config:\n  cert_file: a\n", 2, "give the key either as key_file"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS13\n"
     "  max_version: TLS12\n", 2, "min_version TLS13 is above max_version TLS12"),
    ("http_server_config:\n  headers:\n    X-Frame-Options: allow-all\n", 3,
     "expected one of deny, sameorigin"),
    ("rate_limit:\n  interval: soon\n  burst: 3\n", 2, "expected a duration"),
    ("tls_server_config: [\n", 2, "YAML syntax error"),
])
def test_mistakes_are_refused_with_file_and_line(tmp_path, text, line, message):
    path = write(tmp_path / "web.yml", text)
    with pytest.raises(ConfigError) as info:
        load_web_config(path)
    issues = [i for i in info.value.errors if message in i.message]
    assert issues, str(info.value)
    assert issues[0].file == str(path) and issues[0].line == line


def test_an_unreadable_certificate_names_the_file(tmp_path):
    path = write(tmp_path / "web.yml", "tls_server_config:\n  cert_file: missing.pem\n"
                                       "  key_file: missing.key\n")
    with pytest.raises(ValueError, match=r"missing\.pem.*missing\.key"):
        load_web_config(path)


def test_empty_users_and_toolkit_sample_file_read(tmp_path, certs):
    # the toolkit's own sample shape, with our certificate files, relative to the file
    Path(tmp_path / "server.crt").write_bytes(Path(certs["server"]).read_bytes())
    Path(tmp_path / "server.key").write_bytes(Path(certs["server_key"]).read_bytes())
    path = write(tmp_path / "web.yml", f"""\
tls_server_config:
  cert_file: server.crt
  key_file: server.key
http_server_config:
  http2: true
basic_auth_users:
  alice: {HASH}
rate_limit:
  interval: "1s"
  burst: 20
""")
    cfg = load_web_config(path)
    assert cfg.tls is not None and cfg.tls.cert_file == str(tmp_path / "server.crt")
    assert cfg.auth and cfg.rate_limit is not None and cfg.rate_limit.burst == 20
    assert not load_web_config(write(tmp_path / "empty.yml", "basic_auth_users:\n")).auth


def test_basic_auth_checks_and_caches(tmp_path):
    auth = BasicAuth((("alice", HASH.encode()),))

    def header(user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    assert auth.check(header("alice", PASSWORD))
    for bad in (header("alice", "wrong"), header("mallory", PASSWORD), None, "Basic !!!",
                "Bearer x", "Basic " + base64.b64encode(b"no-colon").decode()):
        assert not auth.check(bad)
    t0 = time.perf_counter()
    for _ in range(200):
        assert auth.check(header("alice", PASSWORD))
    # 200 bcrypt checks even at cost 4 take ~0.2 s; the cache makes them dictionary lookups
    assert len(auth._cache) == 3
    assert time.perf_counter() - t0 < 5   # a loose bound: only a missing cache could fail it


# -- a real endpoint ----------------------------------------------------------------------

def test_tls13_minimum_refuses_a_tls12_client(tmp_path, certs):
    exp = serve(write(tmp_path / "web.yml", f"tls_server_config:\n  cert_file: {certs['server']}"
                      f"\n  key_file: {certs['server_key']}\n  min_version: TLS13\n"))
    try:
        modern = ssl.create_default_context(cafile=certs["ca"])
        assert get(exp.url + "metrics", modern)[0] == 200
        old = ssl.create_default_context(cafile=certs["ca"])
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            get(exp.url + "metrics", old)
    finally:
        exp.stop()


def test_client_certificates_and_allowed_sans(tmp_path, certs):
    base = (f"tls_server_config:\n  cert_file: {certs['server']}\n  key_file: "
            f"{certs['server_key']}\n  client_ca_file: {certs['ca']}\n"
            "  client_auth_type: RequireAndVerifyClientCert\n")
    with_cert = ssl.create_default_context(cafile=certs["ca"])
    with_cert.load_cert_chain(certs["client"], certs["client_key"])
    anonymous = ssl.create_default_context(cafile=certs["ca"])
    exp = serve(write(tmp_path / "web.yml", base + "  client_allowed_sans: [prometheus]\n"))
    try:
        assert get(exp.url + "metrics", with_cert)[0] == 200
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            get(exp.url + "metrics", anonymous)
    finally:
        exp.stop()
    exp = serve(write(tmp_path / "web2.yml", base + "  client_allowed_sans: [someone-else]\n"))
    try:   # a verified certificate that names another client: the connection is dropped
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
            get(exp.url + "metrics", with_cert)
    finally:
        exp.stop()


def test_basic_auth_answers_401_alike_and_serves_with_the_right_password(tmp_path, certs):
    exp = serve(write(tmp_path / "web.yml", f"""\
tls_server_config:
  cert_file: {certs['server']}
  key_file: {certs['server_key']}
basic_auth_users:
  prometheus: {HASH}
http_server_config:
  headers:
    X-Frame-Options: deny
    Strict-Transport-Security: max-age=31536000
"""))
    ctx = ssl.create_default_context(cafile=certs["ca"])
    try:
        answers = [get(exp.url + "metrics", ctx, auth) for auth in
                   (None, ("prometheus", "wrong"), ("nobody", PASSWORD))]
        assert {a[0] for a in answers} == {401}
        assert {a[2] for a in answers} == {b"Unauthorized\n"}     # nothing says which part
        assert all(a[1]["WWW-Authenticate"] == 'Basic realm="residency-monitor"'
                   for a in answers)
        status, headers, body = get(exp.url + "metrics", ctx, ("prometheus", PASSWORD))
        assert status == 200 and b"residency_test_total 1.0" in body
        assert headers["X-Frame-Options"] == "deny"
        assert headers["Strict-Transport-Security"] == "max-age=31536000"
        assert get(exp.url, ctx)[0] == 401           # the landing page is protected too
    finally:
        exp.stop()


def test_rate_limit_answers_429(tmp_path):
    exp = serve(write(tmp_path / "web.yml", "rate_limit:\n  interval: 10s\n  burst: 2\n"))
    try:
        codes = [get(exp.url + "metrics")[0] for _ in range(4)]
        assert codes == [200, 200, 429, 429]
    finally:
        exp.stop()


def test_a_changed_file_applies_and_a_broken_edit_keeps_the_last_good_one(tmp_path, certs):
    errors: list[Exception] = []
    path = write(tmp_path / "web.yml", f"basic_auth_users:\n  prometheus: {HASH}\n")
    web = WebConfigFile(path, on_error=errors.append)
    registry = CollectorRegistry()
    exp = Exporter(registry, port=0, web_config=web)
    exp.start()
    try:
        assert get(exp.url + "metrics")[0] == 401
        other = bcrypt.hashpw(b"new password", bcrypt.gensalt(rounds=4)).decode()
        write(path, f"basic_auth_users:\n  prometheus: {other}\n")
        os.utime(path, ns=(time.time_ns() + 10**9,) * 2)
        assert get(exp.url + "metrics", auth=("prometheus", "new password"))[0] == 200
        assert get(exp.url + "metrics", auth=("prometheus", PASSWORD))[0] == 401
        write(path, "basic_auth_users:\n  prometheus: plain-text-oops\n")
        os.utime(path, ns=(time.time_ns() + 2 * 10**9,) * 2)
        assert get(exp.url + "metrics", auth=("prometheus", "new password"))[0] == 200
        assert len(errors) == 1 and "not a plain password" in str(errors[0])
    finally:
        exp.stop()


def test_certificates_and_options_are_not_both_given(tmp_path, certs):
    path = write(tmp_path / "web.yml", "basic_auth_users:\n")
    with pytest.raises(ValueError, match="not both"):
        Exporter(CollectorRegistry(), port=0, certfile=certs["server"],
                 keyfile=certs["server_key"], web_config=WebConfigFile(path))


def test_prometheus_scrapes_with_tls_and_basic_auth(tmp_path, certs):
    """The credentials an admin gives Prometheus for node_exporter work here unchanged."""
    exp = serve(write(tmp_path / "web.yml", f"tls_server_config:\n  cert_file: "
                      f"{certs['server']}\n  key_file: {certs['server_key']}\n"
                      f"basic_auth_users:\n  prometheus: {HASH}\n"))
    secret = write(tmp_path / "password", PASSWORD)
    jobs = [
        scrape_config("good", [f"127.0.0.1:{exp.port}"], scheme="https",
                      tls_config={"ca_file": certs["ca"]},
                      basic_auth={"username": "prometheus", "password_file": str(secret)}),
        scrape_config("bad", [f"127.0.0.1:{exp.port}"], scheme="https",
                      tls_config={"ca_file": certs["ca"]},
                      basic_auth={"username": "prometheus", "password": "wrong"}),
    ]
    try:
        with running_prometheus(tmp_path / "prometheus", jobs) as prom:
            prom.wait_for('up{job="good"} == 1', timeout=30)
            prom.wait_for('up{job="bad"} == 0', timeout=30)
            assert prom.value('residency_test_total{job="good"}') == 1
            health = {job: (state, error) for job, state, error in prom.target_health()}
            assert "401" in health["bad"][1]
    finally:
        exp.stop()
