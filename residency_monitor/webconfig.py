"""The Prometheus exporter-toolkit web configuration file (``--web.config.file``).

Admins already protect node_exporter with this file (TLS with a minimum
version and client certificates, basic-auth users with bcrypt hashes, extra
response headers, a rate limit), so the monitor reads the same file with the
same meaning (exporter-toolkit ``docs/web-configuration.md``). Differences,
all refused or said rather than silently changed:

- ``client_auth_type``: ``NoClientCert``, ``VerifyClientCertIfGiven`` and
  ``RequireAndVerifyClientCert``. ``RequestClientCert`` and
  ``RequireAnyClientCert`` accept certificates nobody verified (the toolkit's
  own docs call them insecure) and OpenSSL cannot request a certificate
  without verifying it, so they are refused with that reason.
- ``cipher_suites`` take Go's names (those of ``tls.CipherSuites()``) and are
  mapped to OpenSSL's; ``curve_preferences`` are checked and then left to
  OpenSSL's default group order (Python sets only one curve); ``http2`` is
  accepted and ignored (the endpoint speaks HTTP/1.1, as Prometheus scrapes).
- The toolkit reads the file on every request. Here it is read again when it
  changes on disk (a ``stat`` per request); a broken edit is refused with its
  reason and the previous configuration stays in force, as with the policy.

Basic auth: every request, landing page included, needs a listed user. A
bcrypt check costs tens of milliseconds by design, so an outcome is cached
under a keyed hash of the credentials (never the password itself), and an
unknown user is checked against a dummy hash so that the time taken does not
say whether the user exists. Wrong credentials of any kind get the same 401.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import ssl
import tempfile
import threading
import time
from base64 import b64decode
from binascii import Error as B64Error
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt
import yaml

from .yamlcheck import ConfigError, Issue, NodeReader, compose, join_path

__all__ = ["BasicAuth", "RateLimit", "TlsServerConfig", "WebConfig", "WebConfigFile",
           "load_web_config", "ssl_context"]

TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
               "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
_UNVERIFIED_AUTH = ("RequestClientCert", "RequireAnyClientCert")
#: Go's TLS 1.0-1.2 suite names (tls.CipherSuites()) -> OpenSSL's
GO_CIPHERS = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
}
GO_CURVES = ("CurveP256", "CurveP384", "CurveP521", "X25519")
#: the response headers the toolkit lets a file set, with their allowed values (None: any)
HEADERS: dict[str, tuple[str, ...] | None] = {
    "Content-Security-Policy": None, "X-Frame-Options": ("deny", "sameorigin"),
    "X-Content-Type-Options": ("nosniff",), "X-XSS-Protection": None,
    "Strict-Transport-Security": None,
}
_TOP = ((), ("tls_server_config", "http_server_config", "basic_auth_users", "rate_limit"))
_TLS = ((), ("cert", "key", "client_ca", "cert_file", "key_file", "client_auth_type",
             "client_ca_file", "client_allowed_sans", "min_version", "max_version",
             "cipher_suites", "prefer_server_cipher_suites", "curve_preferences"))
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class TlsServerConfig:
    """``tls_server_config``: file names are resolved against the web config's directory."""

    cert_file: str | None = None
    key_file: str | None = None
    cert: str | None = None                 # inline PEM
    key: str | None = field(default=None, repr=False)
    client_ca_file: str | None = None
    client_ca: str | None = None
    client_auth_type: str = "NoClientCert"
    client_allowed_sans: tuple[str, ...] = ()
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    cipher_suites: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True
    curve_preferences: tuple[str, ...] = ()


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: one token every ``interval`` seconds, at most ``burst`` saved."""

    interval: float
    burst: int


@dataclass(frozen=True)
class WebConfig:
    tls: TlsServerConfig | None = None
    headers: tuple[tuple[str, str], ...] = ()
    users: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)
    rate_limit: RateLimit | None = None
    source: str = ""

    @property
    def auth(self) -> bool:
        return bool(self.users)


# -- reading the file ------------------------------------------------------------------

class _Reader(NodeReader):
    def strings(self, node, path: str) -> tuple[str, ...] | None:
        items = self.items(node, path, self.text)
        return tuple(items) if items is not None else None

    def duration(self, node, path: str) -> float | None:
        raw = self.scalar(node, path, "a duration such as 1s or 500ms")
        if raw is None:
            return None
        for unit in sorted(_DURATION_UNITS, key=len, reverse=True):
            number = raw.removesuffix(unit)
            if number != raw and number.replace(".", "", 1).isdigit():
                return float(number) * _DURATION_UNITS[unit]
        if raw == "0":
            return 0.0
        self.error(node, path, f"expected a duration such as 1s or 500ms, got {raw!r}")
        return None


def load_web_config(path: str | os.PathLike[str]) -> WebConfig:
    """Read and check a web configuration file; ConfigError lists every problem (file:line)."""
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Issue(source, 0, "", f"cannot read: {exc}")]) from None
    r = _Reader(source)
    root = compose(r, text, "") if text.strip() else None
    config = WebConfig(source=source)
    if root is not None:
        config = _read(r, root, Path(source).parent, source)
    if r.issues:
        raise ConfigError(r.issues)
    if config.tls is not None:
        ssl_context(config.tls)   # unreadable certificates are refused now, not per request
    return config


def _read(r: _Reader, root, base: Path, source: str) -> WebConfig:
    top = r.mapping(root, "", _TOP) or {}
    tls = _tls(r, top["tls_server_config"], base) if "tls_server_config" in top else None
    headers: list[tuple[str, str]] = []
    http = top.get("http_server_config")
    if http is not None:
        keys = r.mapping(http, "http_server_config", ((), ("http2", "headers"))) or {}
        if "http2" in keys:
            r.boolean(keys["http2"], "http_server_config.http2")
        if "headers" in keys:
            headers = _headers(r, keys["headers"], "http_server_config.headers")
    users: list[tuple[str, bytes]] = []
    if "basic_auth_users" in top and top["basic_auth_users"].tag != "tag:yaml.org,2002:null":
        # an empty "basic_auth_users:" means no authentication, as in the toolkit
        users = _users(r, top["basic_auth_users"])
    rate = _rate_limit(r, top["rate_limit"]) if "rate_limit" in top else None
    return WebConfig(tls, tuple(headers), tuple(users), rate, source)


def _tls(r: _Reader, node, base: Path) -> TlsServerConfig | None:
    path = "tls_server_config"
    keys = r.mapping(node, path, _TLS)
    if keys is None:
        return None
    values: dict[str, object] = {}

    def key(name: str) -> str:
        return join_path(path, name)
    for name in ("cert_file", "key_file", "client_ca_file"):
        if name in keys:
            text = r.text(keys[name], key(name))
            values[name] = str(base / text) if text is not None else None
    for name in ("cert", "key", "client_ca"):
        if name in keys:
            values[name] = r.text(keys[name], key(name))
    if "client_auth_type" in keys:
        raw = r.scalar(keys["client_auth_type"], key("client_auth_type"), "a client auth type")
        if raw in _UNVERIFIED_AUTH:
            r.error(keys["client_auth_type"], key("client_auth_type"),
                    f"{raw} accepts client certificates nobody verified; use "
                    "RequireAndVerifyClientCert (or VerifyClientCertIfGiven)")
        elif raw is not None and raw not in CLIENT_AUTH:
            r.error(keys["client_auth_type"], key("client_auth_type"),
                    f"expected one of {', '.join(CLIENT_AUTH)}, got {raw!r}")
        else:
            values["client_auth_type"] = raw
    for name in ("min_version", "max_version"):
        if name in keys:
            values[name] = r.choice(keys[name], key(name), tuple(TLS_VERSIONS))
    for name, allowed in (("cipher_suites", GO_CIPHERS), ("curve_preferences", GO_CURVES)):
        if name in keys:
            names = r.strings(keys[name], key(name))
            bad = [n for n in names or () if n not in allowed]
            if bad:
                r.error(keys[name], key(name), f"unknown or unsupported: {', '.join(bad)} "
                        f"(supported: {', '.join(allowed)})")
            values[name] = names
    if "client_allowed_sans" in keys:
        values["client_allowed_sans"] = r.strings(keys["client_allowed_sans"],
                                                  key("client_allowed_sans"))
    if "prefer_server_cipher_suites" in keys:
        values["prefer_server_cipher_suites"] = r.boolean(
            keys["prefer_server_cipher_suites"], key("prefer_server_cipher_suites"))
    if any(v is None for v in values.values()):
        return None       # each failure is already an issue
    cfg = TlsServerConfig(**values)  # type: ignore[arg-type]
    _tls_consistency(r, node, cfg)
    return cfg


def _tls_consistency(r: _Reader, node, cfg: TlsServerConfig) -> None:
    path = "tls_server_config"
    if (cfg.cert_file is None) == (cfg.cert is None):
        r.error(node, path, "give the certificate either as cert_file or inline as cert")
    if (cfg.key_file is None) == (cfg.key is None):
        r.error(node, path, "give the key either as key_file or inline as key")
    if cfg.client_ca_file is not None and cfg.client_ca is not None:
        r.error(node, path, "give the client CA either as client_ca_file or as client_ca")
    has_ca = cfg.client_ca_file is not None or cfg.client_ca is not None
    if cfg.client_auth_type != "NoClientCert" and not has_ca:
        r.error(node, path, f"client_auth_type {cfg.client_auth_type} needs client_ca_file")
    if cfg.client_allowed_sans and cfg.client_auth_type != "RequireAndVerifyClientCert":
        r.error(node, path, "client_allowed_sans needs client_auth_type "
                            "RequireAndVerifyClientCert (else a client sends no certificate)")
    if TLS_VERSIONS[cfg.min_version] > TLS_VERSIONS[cfg.max_version]:
        r.error(node, path, f"min_version {cfg.min_version} is above max_version "
                            f"{cfg.max_version}")


def _headers(r: _Reader, node, path: str) -> list[tuple[str, str]]:
    out = []
    for name, value in (r.mapping(node, path, ((), tuple(HEADERS))) or {}).items():
        text = r.scalar(value, join_path(path, name), "text")
        allowed = HEADERS[name]
        if text is None:
            continue
        if allowed is not None and text.lower() not in allowed:
            r.error(value, join_path(path, name),
                    f"expected one of {', '.join(allowed)}, got {text!r}")
        elif text:
            out.append((name, text))
    return out


def _users(r: _Reader, node) -> list[tuple[str, bytes]]:
    path = "basic_auth_users"
    if not isinstance(node, yaml.MappingNode):
        r.wrong_type(node, path, "a mapping of user names to bcrypt hashes")
        return []
    out = []
    for name, (key_node, value) in r.entries(node, path).items():
        hashed = r.scalar(value, join_path(path, name), "a bcrypt hash")
        if hashed is None:
            continue
        if not hashed.startswith(("$2a$", "$2b$", "$2y$")) or len(hashed) != 60:
            r.error(key_node, join_path(path, name),
                    "expected a bcrypt hash ($2y$10$... , 60 characters: "
                    "htpasswd -nBC 10 \"\" | tr -d ':\\n'), not a plain password")
            continue
        out.append((name, hashed.encode("ascii")))
    return out


def _rate_limit(r: _Reader, node) -> RateLimit | None:
    keys = r.mapping(node, "rate_limit", (("interval", "burst"), ()))
    if not keys or len(keys) < 2:
        return None
    interval = r.duration(keys["interval"], "rate_limit.interval")
    burst = r.number(keys["burst"], "rate_limit.burst", low=0)
    if interval is None or burst is None or interval == 0:
        return None
    return RateLimit(interval, int(burst))


# -- using it ----------------------------------------------------------------------------

def ssl_context(cfg: TlsServerConfig) -> ssl.SSLContext:
    """A server context as the file says; ValueError naming the file that cannot be used."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = TLS_VERSIONS[cfg.min_version]
    ctx.maximum_version = TLS_VERSIONS[cfg.max_version]
    ctx.set_alpn_protocols(["http/1.1"])
    if cfg.cipher_suites:
        ctx.set_ciphers(":".join(GO_CIPHERS[c] for c in cfg.cipher_suites))
    if cfg.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_chain(ctx, cfg)
    if cfg.client_auth_type != "NoClientCert":
        try:
            if cfg.client_ca is not None:
                ctx.load_verify_locations(cadata=cfg.client_ca)
            else:
                ctx.load_verify_locations(cafile=cfg.client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"web config: cannot load client CA "
                             f"{cfg.client_ca_file or '(inline)'}: {exc}") from None
        ctx.verify_mode = CLIENT_AUTH[cfg.client_auth_type]
    return ctx


def _load_chain(ctx: ssl.SSLContext, cfg: TlsServerConfig) -> None:
    what = f"certificate {cfg.cert_file or '(inline)'} and key {cfg.key_file or '(inline)'}"
    tmp: list[str] = []
    try:
        cert, key = cfg.cert_file, cfg.key_file
        for inline in (cfg.cert, cfg.key):   # OpenSSL loads chains from files only
            if inline is not None:
                fd, name = tempfile.mkstemp(prefix="residency-monitor-tls-")
                tmp.append(name)
                with os.fdopen(fd, "w") as f:    # mkstemp: mode 0600, never world-readable
                    f.write(inline)
        if cfg.cert is not None:
            cert = tmp[0]
        if cfg.key is not None:
            key = tmp[-1]
        ctx.load_cert_chain(certfile=str(cert), keyfile=key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"web config: cannot load {what}: {exc}") from None
    finally:
        for name in tmp:
            os.unlink(name)


def allowed_san(peer: dict | None, allowed: tuple[str, ...]) -> bool:
    """Whether a verified client certificate names one of ``allowed`` exactly (any SAN type)."""
    if not allowed:
        return True
    sans = {value for _kind, value in (peer or {}).get("subjectAltName", ())}
    return not sans.isdisjoint(allowed)


class BasicAuth:
    """Checks ``Authorization: Basic`` headers against bcrypt hashes, with a bounded cache."""

    CACHE = 1024

    def __init__(self, users: tuple[tuple[str, bytes], ...]):
        self._users = dict(users)
        self._key = secrets.token_bytes(32)
        self._cache: OrderedDict[bytes, bool] = OrderedDict()
        self._lock = threading.Lock()
        # an unknown user costs a bcrypt check too, at the cost of the file's first hash
        cost = int(next(iter(self._users.values()), b"$2b$10$")[4:6])
        self._dummy = bcrypt.hashpw(b"residency-monitor", bcrypt.gensalt(rounds=cost))

    def check(self, header: str | None) -> bool:
        user, password = _credentials(header)
        if user is None or password is None:
            return False
        token = hmac.new(self._key, user.encode() + b"\0" + password.encode(),
                         hashlib.sha256).digest()
        with self._lock:
            if token in self._cache:
                self._cache.move_to_end(token)
                return self._cache[token]
        hashed = self._users.get(user)
        ok = bcrypt.checkpw(password.encode(), hashed if hashed else self._dummy) \
            and hashed is not None
        with self._lock:
            self._cache[token] = ok
            while len(self._cache) > self.CACHE:
                self._cache.popitem(last=False)
        return ok


def _credentials(header: str | None) -> tuple[str | None, str | None]:
    if not header or header[:6].lower() != "basic ":
        return None, None
    try:
        user, sep, password = b64decode(header[6:].strip(), validate=True).decode().partition(":")
    except (B64Error, UnicodeDecodeError, ValueError):
        return None, None
    return (user, password) if sep else (None, None)


class TokenBucket:
    """exporter-toolkit's rate_limit: requests beyond it get 429."""

    def __init__(self, limit: RateLimit):
        self.limit = limit
        self._tokens = float(limit.burst)
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(float(self.limit.burst),
                               self._tokens + (now - self._at) / self.limit.interval)
            self._at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return True
            return False


@dataclass
class _Loaded:
    stamp: tuple[int, int, int]
    config: WebConfig
    context: ssl.SSLContext | None
    auth: BasicAuth | None
    bucket: TokenBucket | None


class WebConfigFile:
    """The file as the exporter uses it: re-read when it changes, the last good one kept."""

    def __init__(self, path: str | os.PathLike[str], on_error=None):
        self.path = os.fspath(path)
        self._on_error = on_error
        self._lock = threading.Lock()
        self._loaded = self._load()       # a bad file at start raises (ConfigError/ValueError)

    def _stamp(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return st.st_ino, st.st_size, st.st_mtime_ns

    def _load(self) -> _Loaded:
        stamp = self._stamp()
        config = load_web_config(self.path)
        ctx = ssl_context(config.tls) if config.tls is not None else None
        return _Loaded(stamp, config, ctx, BasicAuth(config.users) if config.users else None,
                       TokenBucket(config.rate_limit) if config.rate_limit else None)

    def current(self) -> _Loaded:
        """What applies now; a changed file is re-read, a broken one reported and ignored."""
        loaded = self._loaded
        try:
            stamp = self._stamp()
        except OSError:
            return loaded
        if stamp == loaded.stamp:
            return loaded
        with self._lock:
            if self._loaded.stamp != stamp:
                try:
                    self._loaded = self._load()
                except (ConfigError, ValueError, OSError) as exc:
                    self._loaded.stamp = stamp    # report once per change, keep serving
                    if self._on_error is not None:
                        self._on_error(exc)
            return self._loaded
