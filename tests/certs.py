"""Test certificates: a CA, a server certificate for 127.0.0.1 and a client certificate."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path
from typing import Any


def certificates(directory: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def issue(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
              signer: ec.EllipticCurvePrivateKey, ca: bool,
              extensions: list[tuple[Any, bool]]) -> x509.Certificate:
        b = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(issuer)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5))
             .not_valid_after(now + dt.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        for ext, critical in extensions:
            b = b.add_extension(ext, critical=critical)
        return b.sign(signer, hashes.SHA256())

    def usage(**on: bool) -> x509.KeyUsage:
        flags = dict.fromkeys(("digital_signature", "content_commitment", "key_encipherment",
                               "data_encipherment", "key_agreement", "key_cert_sign",
                               "crl_sign", "encipher_only", "decipher_only"), False)
        flags.update(on)
        return x509.KeyUsage(**flags)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = issue("residency-monitor test CA", ca_key, name("residency-monitor test CA"), ca_key,
               True, [(usage(key_cert_sign=True, crl_sign=True), True)])
    out: dict[str, str] = {}

    def write(label: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None):
        path = directory / f"{label}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[label] = str(path)
        if key is not None:
            kpath = directory / f"{label}.key"
            kpath.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
            out[f"{label}_key"] = str(kpath)

    write("ca", ca, None)
    for label, eku, san in (
            ("server", ExtendedKeyUsageOID.SERVER_AUTH,
             [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            ("client", ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName("prometheus")])):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = issue(label, key, ca.subject, ca_key, False, [
            (usage(digital_signature=True), True),
            (x509.ExtendedKeyUsage([eku]), False),
            (x509.SubjectAlternativeName(san), False)])
        write(label, cert, key)
    return out
