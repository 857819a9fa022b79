"""The local CA and per-process certificates of `csbs.tls`: files and modes, reuse, a real gRPC
round trip over TLS, refused names, and processes racing on a fresh directory."""

from __future__ import annotations

import ipaddress
import multiprocessing
import stat
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from csbs.tls import (
    ProcessTls,
    TlsError,
    ca_path,
    channel_credentials,
    ensure_process_tls,
    read_ca,
    server_credentials,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def test_files_modes_and_certificate_contents(tmp_path: Path) -> None:
    tls_dir = tmp_path / "tls"
    material = ensure_process_tls(tls_dir, "cn-north-4")

    assert _mode(tls_dir) == 0o700
    for name in ("ca.pem", "ca.key", "cn-north-4.pem", "cn-north-4.key"):
        assert _mode(tls_dir / name) == 0o600, name
    assert sorted(p.name for p in tls_dir.iterdir()) == [
        ".lock",
        "ca.key",
        "ca.pem",
        "cn-north-4.key",
        "cn-north-4.pem",
    ]  # no temporary file left behind
    assert (tls_dir / "ca.pem").read_bytes() == material.ca_pem
    assert (tls_dir / "cn-north-4.pem").read_bytes() == material.cert_pem
    assert (tls_dir / "cn-north-4.key").read_bytes() == material.key_pem

    ca = _cert(material.ca_pem)
    assert ca.subject.rfc4514_string() == "CN=csbs-sim local CA"
    ca_constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert ca_constraints.critical
    assert ca_constraints.value.ca and ca_constraints.value.path_length == 0
    ca_usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ca_usage.key_cert_sign and ca_usage.crl_sign
    ca.verify_directly_issued_by(ca)  # self-signed

    cert = _cert(material.cert_pem)
    cert.verify_directly_issued_by(ca)
    assert cert.subject.rfc4514_string() == "CN=cn-north-4"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.IPv4Address("127.0.0.1"),
        ipaddress.IPv6Address("::1"),
    }
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {
        x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
        x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH,
    }
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime.days == 825
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days >= 3650

    key = serialization.load_pem_private_key(material.key_pem, password=None)
    assert key.public_key() == cert.public_key()


def test_reuse_and_second_name(tmp_path: Path) -> None:
    first = ensure_process_tls(tmp_path, "cn-north-4")
    again = ensure_process_tls(tmp_path, "cn-north-4")
    assert again == first

    other = ensure_process_tls(tmp_path, "coordinator")
    assert other.ca_pem == first.ca_pem
    assert other.cert_pem != first.cert_pem
    assert other.key_pem != first.key_pem
    _cert(other.cert_pem).verify_directly_issued_by(_cert(first.ca_pem))
    assert _cert(other.cert_pem).subject.rfc4514_string() == "CN=coordinator"


def test_certificate_reissued_when_ca_replaced(tmp_path: Path) -> None:
    old = ensure_process_tls(tmp_path / "a", "cn-north-4")
    replacement = ensure_process_tls(tmp_path / "b", "coordinator")
    for name in ("ca.pem", "ca.key"):
        (tmp_path / "a" / name).write_bytes((tmp_path / "b" / name).read_bytes())

    new = ensure_process_tls(tmp_path / "a", "cn-north-4")
    assert new.ca_pem == replacement.ca_pem
    assert new.cert_pem != old.cert_pem
    _cert(new.cert_pem).verify_directly_issued_by(_cert(replacement.ca_pem))


def test_ca_without_key_or_mismatched_is_refused(tmp_path: Path) -> None:
    ensure_process_tls(tmp_path / "a", "x")
    ensure_process_tls(tmp_path / "b", "x")
    (tmp_path / "a" / "ca.key").write_bytes((tmp_path / "b" / "ca.key").read_bytes())
    with pytest.raises(TlsError, match="does not match"):
        ensure_process_tls(tmp_path / "a", "x")
    (tmp_path / "b" / "ca.key").unlink()
    with pytest.raises(TlsError, match="no private key"):
        ensure_process_tls(tmp_path / "b", "x")


@pytest.fixture
def health_server(tmp_path: Path) -> Iterator[tuple[str, ProcessTls]]:
    material = ensure_process_tls(tmp_path / "tls", "cn-north-4")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    try:
        port = server.add_secure_port("127.0.0.1:0", server_credentials(material))
        assert port != 0
        server.start()
        yield f"127.0.0.1:{port}", material
    finally:
        server.stop(None)


def _check(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    status: int = response.status
    return status


def test_grpc_round_trip(health_server: tuple[str, ProcessTls], tmp_path: Path) -> None:
    address, _ = health_server
    ca = read_ca(ca_path(tmp_path / "tls"))

    with grpc.secure_channel(address, channel_credentials(ca)) as channel:
        assert _check(channel) == health_pb2.HealthCheckResponse.SERVING

    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as plain:
        _check(channel)
    assert plain.value.code() == grpc.StatusCode.UNAVAILABLE

    other_ca = ensure_process_tls(tmp_path / "other", "cn-north-4").ca_pem
    assert other_ca != ca
    with (
        grpc.secure_channel(address, channel_credentials(other_ca)) as channel,
        pytest.raises(grpc.RpcError) as untrusted,
    ):
        _check(channel)
    assert untrusted.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    "name", ["../x", "", "a/b", "/abs", ".", "..", "x.pem", "ca", "CA", "a" * 65, "a\n", "é"]
)
def test_bad_name_refused(tmp_path: Path, name: str) -> None:
    tls_dir = tmp_path / "tls"
    with pytest.raises(TlsError, match="TLS process name"):
        ensure_process_tls(tls_dir, name)
    assert list(tmp_path.iterdir()) == []  # not even tls_dir was made


def test_longest_name_accepted(tmp_path: Path) -> None:
    name = "a-Z_9" + "x" * 59
    assert len(name) == 64
    ensure_process_tls(tmp_path, name)
    assert (tmp_path / f"{name}.pem").exists()


def test_read_ca_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(TlsError, match=str(missing)):
        read_ca(missing)
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(TlsError, match="not a PEM certificate"):
        read_ca(garbage)
    material = ensure_process_tls(tmp_path / "tls", "x")
    key_only = tmp_path / "key.pem"
    key_only.write_bytes(material.key_pem)
    with pytest.raises(TlsError, match=str(key_only)):
        read_ca(key_only)
    assert issubclass(TlsError, ValueError)


def _assert_one_ca(tls_dir: Path, names: list[str]) -> None:
    ca = _cert(read_ca(ca_path(tls_dir)))
    for name in names:
        _cert((tls_dir / f"{name}.pem").read_bytes()).verify_directly_issued_by(ca)


def test_concurrent_threads_share_one_ca(tmp_path: Path) -> None:
    tls_dir = tmp_path / "fresh" / "tls"
    names = [f"region-{i}" for i in range(8)]
    barrier = threading.Barrier(len(names))
    results: dict[str, ProcessTls] = {}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            barrier.wait()
            results[name] = ensure_process_tls(tls_dir, name)
        except BaseException as exc:  # reported below, on the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert {material.ca_pem for material in results.values()} == {(tls_dir / "ca.pem").read_bytes()}
    _assert_one_ca(tls_dir, names)


def _start_together(barrier: threading.Barrier, tls_dir: Path, name: str) -> None:
    barrier.wait()
    ensure_process_tls(tls_dir, name)


def test_concurrent_processes_share_one_ca(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    tls_dir = tmp_path / "tls"
    names = ["cn-north-4", "cn-east-3", "coordinator"]
    barrier = ctx.Barrier(len(names))
    processes = [
        ctx.Process(target=_start_together, args=(barrier, tls_dir, name)) for name in names
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
    assert [process.exitcode for process in processes] == [0] * len(names)
    _assert_one_ca(tls_dir, names)
