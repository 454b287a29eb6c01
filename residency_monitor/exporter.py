"""The HTTP endpoint Prometheus scrapes: ``/metrics``, a landing page, optional (m)TLS.

A thin driver, as client_python intends: the registry and its renderer
(``prometheus_client.make_wsgi_app``, which negotiates the OpenMetrics or
text format and gzip from the scraper's Accept headers) do the work; this
module only routes, listens and wraps the socket in TLS.

- ``/metrics``: the exposition. ``/``: a small HTML page naming the
  program, its version, the policy in force and a link to the metrics, as
  other exporters have. Anything else: 404.
- Default port **8749**: outside 9100-9999, which the Prometheus project
  allocated to exporters until it ran out in 2023 (its docs now ask
  exporters of internal applications to stay outside it); unassigned in the
  IANA registry (8733 ibus and 8750 dey-keyneg are its neighbours) and not a
  port any common service or exporter defaults to.
- Default address ``127.0.0.1``: flow metadata is sensitive, so the monitor
  is reachable only from the gateway itself until the operator says
  otherwise. Listening on every interface without TLS is logged as a warning.
- TLS: a certificate and key (TLS 1.2 minimum, as exporter-toolkit); with a
  client CA, clients must present a certificate it signed (mTLS, exporter-
  toolkit's ``RequireAndVerifyClientCert``). The handshake runs in the
  connection's own thread with a timeout, so a client that stalls it cannot
  hold up the accept loop and every other scrape.
- ``--web.config.file``: the exporter-toolkit web configuration (TLS with
  minimum version and client certificates, bcrypt basic-auth users, response
  headers, a rate limit), re-read when it changes; see ``webconfig.py``. The
  TLS context is chosen per connection, so a renewed certificate is served
  without a restart.
- One thread per connection (``ThreadingMixIn``): a scrape only copies a
  few counters, so it is served at once even while the capture thread is busy.
"""

from __future__ import annotations

import errno
import html
import logging
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import make_wsgi_app
from prometheus_client.registry import Collector

from . import __version__
from .webconfig import TlsServerConfig, WebConfigFile, allowed_san

__all__ = ["DEFAULT_ADDRESS", "DEFAULT_PORT", "Exporter"]

DEFAULT_PORT = 8749
DEFAULT_ADDRESS = "127.0.0.1"
HANDSHAKE_TIMEOUT = 10.0     # seconds a client may take to complete the TLS handshake
REQUEST_TIMEOUT = 30.0       # seconds a connection may sit idle mid-request
_ALL_INTERFACES = frozenset({"", "0.0.0.0", "::", "*"})

StartResponse = Callable[..., Any]


class _Handler(WSGIRequestHandler):
    """wsgiref's handler, with a socket timeout and requests logged at debug level only."""

    timeout = REQUEST_TIMEOUT    # applied to the connection by StreamRequestHandler.setup

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (base signature)
        self.server.log.debug("%s %s", self.address_string(), format % args)  # type: ignore


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    """A thread per connection; the TLS handshake, if any, happens in that thread."""

    daemon_threads = True
    block_on_close = False
    log: logging.Logger = logging.getLogger(__name__)
    # the TLS context for a new connection (None: plain HTTP), and the client SANs it allows
    tls_for_connection: Callable[[], tuple[ssl.SSLContext | None, tuple[str, ...]]] | None = None

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = self.socket.accept()
        if self.tls_for_connection is not None:
            ctx, _ = self.tls_for_connection()
            if ctx is not None:
                sock = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves its own name (socket.getfqdn), which can
        # wait on DNS for seconds; the name only fills SERVER_NAME, so skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)
        self.setup_environ()

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(HANDSHAKE_TIMEOUT)
                request.do_handshake()
            except (OSError, ValueError) as e:   # ssl.SSLError is an OSError
                self.log.debug("TLS handshake with %s failed: %s", client_address, e)
                return                           # process_request_thread closes it
            sans = self.tls_for_connection()[1] if self.tls_for_connection else ()
            if not allowed_san(request.getpeercert(), sans):
                self.log.debug("client certificate of %s names none of client_allowed_sans",
                               client_address)
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-response is routine; never a traceback on stderr.
        self.log.debug("connection from %s ended with an error", client_address, exc_info=True)


class _Server6(_Server):
    address_family = socket.AF_INET6


def _family(address: str, port: int) -> tuple[socket.AddressFamily, str]:
    """Address family and literal to bind (IPv6 needs its own socket family)."""
    host = "0.0.0.0" if address in ("", "*") else address
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    return family, str(sockaddr[0])


def _tls_context(certfile: str, keyfile: str | None, client_cafile: str | None) -> ssl.SSLContext:
    """A server context: TLS 1.2 or newer, and client certificates when a CA is given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        ctx.load_cert_chain(certfile=certfile, keyfile=keyfile)
    except (OSError, ssl.SSLError) as e:
        raise ValueError(f"metrics TLS: cannot load certificate {certfile!r} "
                         f"and key {keyfile or certfile!r}: {e}") from e
    if client_cafile is not None:
        try:
            ctx.load_verify_locations(cafile=client_cafile)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"metrics TLS: cannot load client CA {client_cafile!r}: {e}") from e
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def landing_page(info: dict[str, Any]) -> bytes:
    """The HTML of ``/``: every entry of ``info`` escaped, and a link to the metrics."""
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in info.items())
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>residency-monitor</title></head><body>"
            "<h1>residency-monitor</h1>"
            "<p>Network data-residency monitor. <a href=\"metrics\">Metrics</a></p>"
            f"<table>{rows}</table></body></html>\n").encode()


_NO_TLS = TlsServerConfig()
_PAGE_HEADERS = [("X-Content-Type-Options", "nosniff"),
                 ("Content-Security-Policy", "default-src 'none'")]


def _plain(start_response: StartResponse, status: str, body: bytes,
           headers: list[tuple[str, str]] | None = None) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body))), *(headers or [])])
    return [body]


def _tls_now(web: WebConfigFile) -> tuple[ssl.SSLContext | None, tuple[str, ...]]:
    loaded = web.current()
    tls = loaded.config.tls
    return loaded.context, (tls.client_allowed_sans if tls is not None else ())


class Exporter:
    """Serve a registry over HTTP(S) from a background thread."""

    def __init__(self, registry: Collector, *, address: str = DEFAULT_ADDRESS,
                 port: int = DEFAULT_PORT, certfile: str | None = None,
                 keyfile: str | None = None, client_cafile: str | None = None,
                 landing: Callable[[], dict[str, Any]] | None = None,
                 logger: logging.Logger | None = None,
                 web_config: WebConfigFile | None = None):
        if web_config is not None and (certfile or keyfile or client_cafile):
            raise ValueError("metrics TLS: configure it in the web config file "
                             f"{web_config.path} or with the certificate options, not both")
        if client_cafile is not None and certfile is None:
            raise ValueError("metrics TLS: a client CA (mTLS) needs a server certificate too")
        if keyfile is not None and certfile is None:
            raise ValueError("metrics TLS: a key needs its certificate")
        self.address = address
        self._port = port
        self.certfile, self.keyfile, self.client_cafile = certfile, keyfile, client_cafile
        self._landing = landing
        self.web = web_config
        self.log = logger or logging.getLogger(__name__)
        self._metrics_app = make_wsgi_app(registry)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def tls(self) -> bool:
        if self.web is not None:
            return self.web.current().context is not None
        return self.certfile is not None

    @property
    def auth(self) -> bool:
        return self.web is not None and self.web.current().auth is not None

    @property
    def port(self) -> int:
        """The port listened on (the one chosen by the system when 0 was asked for)."""
        return int(self._server.server_address[1]) if self._server else self._port

    @property
    def url(self) -> str:
        """The landing page's URL (``/metrics`` beside it)."""
        host = str(self._server.server_address[0]) if self._server else self.address
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/"

    def bind(self) -> None:
        """Listen without serving yet: the daemon binds, drops its privileges, then serves.

        (A thread started before the drop would keep the capabilities: they are per thread.)
        """
        if self._server is not None:
            raise RuntimeError("the exporter is already listening")
        ctx = _tls_context(self.certfile, self.keyfile, self.client_cafile) \
            if self.certfile else None
        server = self._listen()
        if self.web is not None:
            web = self.web
            server.tls_for_connection = lambda: _tls_now(web)
        elif ctx is not None:
            fixed = (ctx, ())
            server.tls_for_connection = lambda: fixed
        server.set_app(self._app)
        self._server = server

    def start(self) -> None:
        """Listen (unless bound) and serve in a daemon thread; OSError if the port is taken."""
        if self._thread is not None:
            raise RuntimeError("the exporter is already running")
        if self._server is None:
            self.bind()
        server = self._server
        assert server is not None
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="metrics-exporter", daemon=True)
        self._thread.start()
        self._log_start()

    def _listen(self) -> _Server:
        where = f"{self.address or '*'}:{self._port}"
        try:
            family, host = _family(self.address, self._port)
            cls = _Server6 if family == socket.AF_INET6 else _Server
            server = cls((host, self._port), _Handler)
        except OSError as e:
            hint = (" (another process is listening there: stop it or choose another port)"
                    if e.errno == errno.EADDRINUSE else "")
            raise OSError(e.errno, f"metrics endpoint cannot listen on {where}: "
                                   f"{e.strerror or e}{hint}") from e
        server.log = self.log
        return server

    def _log_start(self) -> None:
        mtls = self.client_cafile or (self.web is not None and (
            self.web.current().config.tls or _NO_TLS).client_auth_type != "NoClientCert")
        self.log.info("metrics at %smetrics%s%s", self.url,
                      " (client certificates required)" if mtls else "",
                      " (basic auth)" if self.auth else "")
        if self.address in _ALL_INTERFACES and not (self.tls and (self.auth or mtls)):
            self.log.warning("the metrics endpoint listens on all interfaces %s: "
                             "anyone who can reach port %d %s the flow statistics "
                             "(configure TLS with basic auth or client certificates in "
                             "--web.config.file, or listen on 127.0.0.1)",
                             "without TLS" if not self.tls else "without authentication",
                             self.port, "reads" if not self.tls else "can read")

    def stop(self) -> None:
        """Stop serving and close the socket (connections in flight finish on their own)."""
        server, self._server = self._server, None
        if server is None:
            return
        if self._thread is not None:    # shutdown() would wait forever for a loop never run
            server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # -- WSGI

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if self.web is None:
            return self._route(environ, start_response)
        web = self.web.current()
        if web.bucket is not None and not web.bucket.take():
            return _plain(start_response, "429 Too Many Requests", b"Too many requests\n")
        if web.auth is not None and not web.auth.check(environ.get("HTTP_AUTHORIZATION")):
            # the same answer for an unknown user, a wrong password or no header at all
            return _plain(start_response, "401 Unauthorized", b"Unauthorized\n",
                          [("WWW-Authenticate", 'Basic realm="residency-monitor"')])
        extra = list(web.config.headers)
        if not extra:
            return self._route(environ, start_response)

        def with_headers(status: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
            names = {n.lower() for n, _ in extra}
            return start_response(status, [h for h in headers if h[0].lower() not in names]
                                  + extra, *exc)
        return self._route(environ, with_headers)

    def _route(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path == "/metrics":
            return self._metrics_app(environ, start_response)  # type: ignore[no-any-return]
        if path == "/":
            return self._page(environ, start_response)
        body = b"Not found. The metrics are at /metrics\n"
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8"),
                                         ("Content-Length", str(len(body)))])
        return [body]

    def _page(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"),
                                                      ("Content-Length", "0")])
            return [b""]
        body = landing_page(self._landing_info())
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                  ("Content-Length", str(len(body))), *_PAGE_HEADERS])
        return [b"" if method == "HEAD" else body]

    def _landing_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"version": __version__}
        if self._landing is not None:
            try:
                info.update(self._landing())
            except Exception:   # the page must still load when its provider breaks
                self.log.exception("metrics landing page: the info provider failed")
        return info
