"""Throw-away X.509 certificates for TLS and mutual-TLS tests, made with ``cryptography``.

A test makes its own certificate authority, a server certificate for the loopback address
(SAN ``IP:127.0.0.1``, ``IP:::1`` and ``DNS:localhost``, so a channel to ``127.0.0.1:PORT`` verifies
without a target-name override) and a client certificate, and writes them as PEM files. Keys are
ECDSA P-256: as good as RSA for a test and about a hundred times faster to generate.

    tls = write_tls_files(tmp_path)                    # CA, server and client, one CA
    Settings(tls_cert=str(tls.server.cert), tls_key=str(tls.server.key),
             tls_client_ca=str(tls.ca_cert))           # mutual TLS
    grpc.ssl_channel_credentials(tls.ca_pem(), tls.client.key_pem(), tls.client.cert_pem())
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Names every server certificate made here is valid for.
LOOPBACK_DNS: tuple[str, ...] = ("localhost",)
LOOPBACK_IPS: tuple[str, ...] = ("127.0.0.1", "::1")

_VALIDITY = datetime.timedelta(days=2)
_CLOCK_SKEW = datetime.timedelta(minutes=5)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rerankd tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Issued:
    """A certificate with its private key, in memory."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        return _cert_pem(self.cert)

    def key_pem(self) -> bytes:
        return _key_pem(self.key)

    def write(self, directory: Path, stem: str) -> PemPair:
        """Write ``<stem>.crt`` and ``<stem>.key`` (mode 0600) into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        pair = PemPair(cert=directory / f"{stem}.crt", key=directory / f"{stem}.key")
        write_file(pair.cert, self.cert_pem())
        write_file(pair.key, self.key_pem(), mode=0o600)
        return pair


@dataclass(frozen=True)
class CertificateAuthority:
    """A self-signed CA that issues server and client certificates."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, common_name: str = "rerankd test CA") -> CertificateAuthority:
        key = _new_key()
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    def cert_pem(self) -> bytes:
        return _cert_pem(self.cert)

    def issue(
        self,
        common_name: str,
        *,
        server: bool = False,
        client: bool = False,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
    ) -> Issued:
        """A leaf certificate signed by this CA, for TLS servers and/or clients.

        Args:
            common_name: Subject CN (identity only; verification uses the SANs).
            server: Allow TLS server authentication (extended key usage serverAuth).
            client: Allow TLS client authentication (clientAuth).
            dns_names: DNS subject alternative names.
            ip_addresses: IP subject alternative names (IPv4 or IPv6 text).

        Raises:
            ValueError: neither ``server`` nor ``client`` was asked for, or a bad IP address.
        """
        if not (server or client):
            raise ValueError("a certificate must be for a server, a client or both")
        key = _new_key()
        now = datetime.datetime.now(datetime.UTC)
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
        usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return Issued(builder.sign(self.key, hashes.SHA256()), key)

    def issue_server(self, common_name: str = "localhost") -> Issued:
        """A server certificate valid for localhost, 127.0.0.1 and ::1."""
        return self.issue(
            common_name, server=True, dns_names=LOOPBACK_DNS, ip_addresses=LOOPBACK_IPS
        )

    def issue_client(self, common_name: str = "rerankd test client") -> Issued:
        """A client certificate (clientAuth) for mutual TLS."""
        return self.issue(common_name, client=True)


@dataclass(frozen=True)
class PemPair:
    """Paths of a PEM certificate and its PEM private key."""

    cert: Path
    key: Path

    def cert_pem(self) -> bytes:
        return self.cert.read_bytes()

    def key_pem(self) -> bytes:
        return self.key.read_bytes()


@dataclass(frozen=True)
class TlsFiles:
    """A CA and the server and client certificates it signed, as PEM files in one folder."""

    authority: CertificateAuthority
    ca_cert: Path
    server: PemPair
    client: PemPair

    def ca_pem(self) -> bytes:
        return self.ca_cert.read_bytes()


def write_file(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` and make sure its mtime moves forward.

    A file watcher that compares (mtime, size) misses a same-size rewrite within the
    filesystem's timestamp granularity; bumping the mtime past the old one makes every rewrite
    visible, as a Kubernetes secret update (a new file behind a symlink) is.
    """
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_bytes(data)
    path.chmod(mode)
    after = path.stat().st_mtime_ns
    if after <= before:
        later = before + 1_000_000_000
        os.utime(path, ns=(later, later))


def write_tls_files(directory: Path, authority: CertificateAuthority | None = None) -> TlsFiles:
    """Make (or reuse) a CA, a loopback server certificate and a client certificate.

    Writes ``ca.crt``, ``server.crt``/``server.key`` and ``client.crt``/``client.key`` into
    ``directory`` (created when missing) and returns their paths.
    """
    ca = authority or CertificateAuthority.create()
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert = directory / "ca.crt"
    write_file(ca_cert, ca.cert_pem())
    return TlsFiles(
        authority=ca,
        ca_cert=ca_cert,
        server=ca.issue_server().write(directory, "server"),
        client=ca.issue_client().write(directory, "client"),
    )
