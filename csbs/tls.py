"""TLS for every gRPC channel of a cluster, when the cluster is run with TLS enabled.

Plain (insecure) loopback channels stay the default. When TLS is turned on, every process of the
cluster (each region node and the coordinator) calls `ensure_process_tls` with the cluster's TLS
directory and its own name at start-up. The first caller creates a local certificate authority
(`ca.pem`, `ca.key`); each process then gets a certificate of its own (`<name>.pem`,
`<name>.key`), signed by that CA and valid for `localhost`, `127.0.0.1` and `::1`, to serve with
(`server_credentials`). Clients verify servers against the CA only (`channel_credentials`, with
the bytes of `read_ca(ca_path(tls_dir))`).

Everything is made with the `cryptography` library: EC P-256 keys, SHA-256 signatures. The files
are reused across restarts, so a restarted cluster keeps its CA; a process certificate that the
current CA did not sign, that has expired, or that does not match its key is issued again.

Several processes of a cluster start at once, so all work on the directory happens under an
exclusive `flock` on `tls_dir/.lock`. Every file is written to a temporary file in the same
directory (created 0600, so a private key is never readable by others, not even briefly) and
then renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from csbs.files import exclusive_lock, write_atomic

CA_COMMON_NAME = "csbs-sim local CA"
CA_VALIDITY = datetime.timedelta(days=3652)  # 10 years
PROCESS_VALIDITY = datetime.timedelta(days=825)
# Certificates start a little in the past, so a clock that is slightly behind still accepts them.
_BACKDATE = datetime.timedelta(minutes=5)

_CA_CERT = "ca.pem"
_CA_KEY = "ca.key"
_LOCK = ".lock"
# A region ID or "coordinator": never a path. "ca" is refused: its files are the CA's.
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)
_RESERVED_NAMES = frozenset({"ca"})


class TlsError(ValueError):
    """The TLS material is unusable: a bad process name, or a CA file that is missing, not a PEM
    certificate, or does not match its key. The message names the file or the name."""


@dataclass(frozen=True)
class ProcessTls:
    """What one process needs: the CA certificate (to verify peers) and its own certificate
    chain and key, PEM bytes."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def ca_path(tls_dir: Path) -> Path:
    """The CA certificate of a TLS directory: what clients are given to verify servers."""
    return tls_dir / _CA_CERT


def ensure_process_tls(tls_dir: Path, name: str) -> ProcessTls:
    """The CA and the certificate of process `name` in `tls_dir`, made if missing (the CA at
    first use, the process's certificate if absent or not valid under the current CA) and reused
    otherwise. Safe to call from several processes at once."""
    _check_name(name)
    _make_dir(tls_dir)
    with exclusive_lock(tls_dir / _LOCK):
        ca_cert, ca_key, ca_pem = _ensure_ca(tls_dir)
        cert_pem, key_pem = _ensure_process_cert(tls_dir, name, ca_cert, ca_key)
    return ProcessTls(ca_pem=ca_pem, cert_pem=cert_pem, key_pem=key_pem)


def server_credentials(material: ProcessTls) -> grpc.ServerCredentials:
    """Server credentials presenting the process's certificate (clients are not asked for one)."""
    return grpc.ssl_server_credentials([(material.key_pem, material.cert_pem)])


def channel_credentials(ca_pem: bytes) -> grpc.ChannelCredentials:
    """Channel credentials that trust only servers whose certificate `ca_pem` signed."""
    return grpc.ssl_channel_credentials(root_certificates=ca_pem)


def read_ca(path: Path) -> bytes:
    """The bytes of a PEM CA certificate file, checked to hold at least one certificate."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TlsError(f"TLS CA certificate {path} does not exist") from None
    except OSError as exc:
        raise TlsError(f"TLS CA certificate {path} cannot be read: {exc.strerror}") from None
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsError(f"TLS CA certificate {path} is not a PEM certificate") from None
    return data


def _check_name(name: str) -> None:
    if _NAME.fullmatch(name) is None:
        raise TlsError(
            f"TLS process name {name!r} must be 1 to 64 English letters, digits, '_' or '-'"
        )
    if name.lower() in _RESERVED_NAMES:
        raise TlsError(f"TLS process name {name!r} is reserved for the certificate authority")


def _make_dir(tls_dir: Path) -> None:
    try:
        tls_dir.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        if not tls_dir.is_dir():
            raise TlsError(f"TLS directory {tls_dir} exists and is not a directory") from None
        return
    # mkdir's mode is filtered by the umask; make the new directory exactly 0700.
    tls_dir.chmod(0o700)


def _ensure_ca(tls_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, bytes]:
    cert_path, key_path = tls_dir / _CA_CERT, tls_dir / _CA_KEY
    if cert_path.exists():
        if not key_path.exists():
            raise TlsError(
                f"TLS CA certificate {cert_path} has no private key {key_path}: "
                "restore the key, or remove both to make a new CA"
            )
        cert_pem = read_ca(cert_path)
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = _load_key(key_path)
        if key is None:
            raise TlsError(f"TLS CA key {key_path} is not a PEM EC private key")
        if cert.public_key() != key.public_key():
            raise TlsError(f"TLS CA certificate {cert_path} does not match its key {key_path}")
        return cert, key, cert_pem
    # No certificate: a new CA. A key without a certificate is what a crash between the two
    # writes leaves; no client can trust it yet, so it is replaced.
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _build_ca_cert(key)
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    write_atomic(key_path, _key_pem(key))
    write_atomic(cert_path, cert_pem)
    return cert, key, cert_pem


def _ensure_process_cert(
    tls_dir: Path, name: str, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
) -> tuple[bytes, bytes]:
    cert_path, key_path = tls_dir / f"{name}.pem", tls_dir / f"{name}.key"
    existing = _reusable_process_cert(cert_path, key_path, ca_cert)
    if existing is not None:
        return existing
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _build_process_cert(name, key, ca_cert, ca_key)
    cert_pem, key_pem = cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)
    # Key first: a crash in between leaves a key that matches no certificate, which is reissued.
    write_atomic(key_path, key_pem)
    write_atomic(cert_path, cert_pem)
    return cert_pem, key_pem


def _reusable_process_cert(
    cert_path: Path, key_path: Path, ca_cert: x509.Certificate
) -> tuple[bytes, bytes] | None:
    """The certificate and key on disk if they can still be served: signed by this CA, not
    expired, and a matching pair; None if they must be (re)issued."""
    try:
        cert_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return None
    key = _parse_key(key_pem)
    if key is None or cert.public_key() != key.public_key():
        return None
    now = datetime.datetime.now(datetime.UTC)
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
        return None
    return cert_pem, key_pem


def _build_ca_cert(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME)])
    start = datetime.datetime.now(datetime.UTC) - _BACKDATE
    public_key = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )


def _build_process_cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
) -> x509.Certificate:
    start = datetime.datetime.now(datetime.UTC) - _BACKDATE
    # Never valid past the CA that vouches for it.
    end = min(start + PROCESS_VALIDITY, ca_cert.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                    x509.IPAddress(ipaddress.IPv6Address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _parse_key(data: bytes) -> ec.EllipticCurvePrivateKey | None:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        return None
    return key if isinstance(key, ec.EllipticCurvePrivateKey) else None


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey | None:
    try:
        return _parse_key(path.read_bytes())
    except OSError as exc:
        raise TlsError(f"TLS key {path} cannot be read: {exc.strerror}") from None
