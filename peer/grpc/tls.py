"""Mutual TLS: a CA, one certificate per peer and for the coordinator, the name is the identity.

`ckd certs` writes ca.pem, ca.key and NAME.pem, NAME.key for each name. A peer's certificate
carries its id as common name and as DNS name; a client checks that the server it reached holds
the certificate of the peer it meant (target name override), and a server takes the sender of an
RPC from the client certificate, never from a message field.

Revocation: `ckd certs --revoke NAME` adds NAME's certificate to crl.pem, a certificate revocation
list signed by the CA, in the same directory. Every peer and the coordinator load it with their
certificates (`Security.from_dir`, its signature checked against ca.pem) and refuse, on every RPC,
a caller whose certificate serial is on it (PERMISSION_DENIED, logged). A revocation list rather
than an allow-list of fingerprints: the CA stays the one thing every party must agree on, a new
peer joins with a certificate from `ckd certs` without every other party updating a list, only
the exceptions travel, and a list signed by the CA cannot be forged by whoever hands it out.
Peers load it at start-up; after a revocation, copy crl.pem to each party and restart it.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from peer.errors import UsageError

CRL_FILE = "crl.pem"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise UsageError(f"bad peer name {name!r}: use letters, digits, '.', '_' or '-' (at most 63)")
    return name


def subject_alt_names(name: str, hosts: list[str]) -> list:
    """The name as a DNS name, then each host: an IP address or a DNS name."""
    import ipaddress

    from cryptography import x509

    out: list[x509.GeneralName] = [x509.DNSName(name)]
    for host in hosts:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not re.fullmatch(r"[A-Za-z0-9*]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", host):
                raise UsageError(f"bad host {host!r}: give an IP address or a DNS name") from None
            out.append(x509.DNSName(host))
    return out


def make_certs(out: Path, names: list[str], days: int = 365, hosts: Sequence[str] = ()) -> list[Path]:
    """A new CA in `out` (kept if it already exists) and a key and certificate for each name.

    Each certificate names its holder as common name and DNS name; `hosts` (IP addresses or DNS
    names) are added to every one, for servers that clients verify by address, such as a
    Flower SuperLink reached at 10.0.0.5.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    for n in names:
        check_name(n)
    alt_names = {n: subject_alt_names(n, list(hosts)) for n in names}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def write(path: Path, data: bytes, private: bool) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        if private:
            os.chmod(tmp, 0o600)
        os.replace(tmp, path)

    def key_pem(key) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    ca_cert_path, ca_key_path = out / "ca.pem", out / "ca.key"
    if ca_cert_path.exists() and ca_key_path.exists():
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        if not isinstance(
            ca_key,
            (
                ec.EllipticCurvePrivateKey,
                rsa.RSAPrivateKey,
                dsa.DSAPrivateKey,
                ed25519.Ed25519PrivateKey,
                ed448.Ed448PrivateKey,
            ),
        ):
            raise UsageError(f"{ca_key_path}: a {type(ca_key).__name__} cannot sign certificates")
        ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ckd CA")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        write(ca_key_path, key_pem(ca_key), True)
        write(ca_cert_path, ca_cert.public_bytes(serialization.Encoding.PEM), False)
    written = [ca_cert_path]
    for n in names:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, n)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(alt_names[n]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        write(out / f"{n}.key", key_pem(key), True)
        write(out / f"{n}.pem", cert.public_bytes(serialization.Encoding.PEM), False)
        written.append(out / f"{n}.pem")
    return written


def revoke(certs: Path, names: list[str], days: int = 365) -> Path:
    """Add the certificates of `names` (NAME.pem in `certs`) to the CA-signed crl.pem there."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    certs = Path(certs)
    ca_cert_path, ca_key_path = certs / "ca.pem", certs / "ca.key"
    if not ca_cert_path.is_file() or not ca_key_path.is_file():
        raise UsageError(f"revoking needs the CA: {ca_cert_path} and {ca_key_path}")
    ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    now = dt.datetime.now(dt.UTC)
    revoked = _crl_entries(certs / CRL_FILE, ca_cert)
    for name in names:
        path = certs / f"{check_name(name)}.pem"
        if not path.is_file():
            raise UsageError(f"no certificate {path} to revoke")
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        if cert.issuer != ca_cert.subject:
            raise UsageError(f"{path} was not issued by the CA in {certs}")
        revoked.setdefault(cert.serial_number, now)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(days=days))
    )
    for serial, when in sorted(revoked.items()):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    crl = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    out = certs / CRL_FILE
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp, out)
    return out


def _crl_entries(path: Path, ca_cert) -> dict[int, dt.datetime]:
    """Revoked serial -> revocation date from a CRL file, its signature checked; {} if none."""
    from cryptography import x509

    if not path.is_file():
        return {}
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
    except ValueError as exc:
        raise UsageError(f"{path} is not a PEM certificate revocation list: {exc}") from None
    if crl.issuer != ca_cert.subject or not crl.is_signature_valid(ca_cert.public_key()):
        raise UsageError(f"{path} is not signed by the CA in {path.parent / 'ca.pem'}; refusing to start")
    return {r.serial_number: r.revocation_date_utc for r in crl}


@dataclass(frozen=True)
class Security:
    """How this process talks gRPC: mTLS with its own certificate, or plaintext when asked for.

    `revoked` holds the serial numbers of revoked certificates (crl.pem); `refusal` checks a caller.
    """

    name: str
    ca: bytes | None = None
    key: bytes | None = None
    cert: bytes | None = None
    revoked: frozenset[int] = frozenset()

    @property
    def insecure(self) -> bool:
        return self.ca is None

    @classmethod
    def from_dir(cls, name: str, certs: Path | None, insecure: bool) -> Security:
        if insecure:
            if certs:
                raise UsageError("give either --certs or --insecure, not both")
            return cls(name)
        if not certs:
            raise UsageError("mutual TLS needs --certs DIR (make one with `ckd certs`); plaintext only with --insecure")
        certs = Path(certs)
        paths = [certs / "ca.pem", certs / f"{name}.key", certs / f"{name}.pem"]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise UsageError(
                f"missing certificate file(s) {', '.join(missing)}; run `ckd certs --out {certs} --names {name}`"
            )
        try:
            ca, key, cert = (p.read_bytes() for p in paths)
        except OSError as exc:
            raise UsageError(f"cannot read certificate files in {certs}: {exc}") from exc
        cls(name, ca, key, cert).check(certs)
        from cryptography import x509

        revoked = _crl_entries(certs / CRL_FILE, x509.load_pem_x509_certificate(ca))
        own = x509.load_pem_x509_certificate(cert).serial_number
        if own in revoked:
            raise UsageError(f"the certificate {certs / f'{name}.pem'} is revoked ({certs / CRL_FILE})")
        return cls(name, ca, key, cert, frozenset(revoked))

    def check(self, where: Path) -> None:
        """Refuse, before any connection, files that are not PEM, a certificate for another name, one
        the CA did not sign, or a key that is not the certificate's."""
        from cryptography import x509
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.x509.oid import NameOID

        assert self.ca is not None and self.cert is not None and self.key is not None
        try:
            ca = x509.load_pem_x509_certificate(self.ca)
        except ValueError:
            raise UsageError(f"{where / 'ca.pem'} is not a PEM certificate") from None
        try:
            cert = x509.load_pem_x509_certificate(self.cert)
        except ValueError:
            raise UsageError(f"{where / (self.name + '.pem')} is not a PEM certificate") from None
        try:
            key = serialization.load_pem_private_key(self.key, password=None)
        except (ValueError, TypeError):
            raise UsageError(f"{where / (self.name + '.key')} is not an unencrypted PEM private key") from None
        names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if names != [self.name]:
            raise UsageError(
                f"{where / (self.name + '.pem')} is a certificate for {', '.join(map(str, names))!r}, not {self.name!r}"
            )
        try:
            cert.verify_directly_issued_by(ca)
        except (InvalidSignature, ValueError, TypeError) as exc:
            raise UsageError(
                f"{where / (self.name + '.pem')} was not signed by the CA in {where / 'ca.pem'} "
                f"({type(exc).__name__}); copy the ca.pem it was made with"
            ) from None
        pub = serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(serialization.Encoding.PEM, pub) != cert.public_key().public_bytes(
            serialization.Encoding.PEM, pub
        ):
            raise UsageError(f"{where / (self.name + '.key')} is not the key of {where / (self.name + '.pem')}")

    def refusal(self, context: grpc.ServicerContext) -> str | None:
        """Why this RPC's caller is refused (its certificate is revoked), or None."""
        if self.insecure or not self.revoked:
            return None
        serial = caller_serial(context)
        if serial is None:
            return "no client certificate to check against the revocation list"
        if serial in self.revoked:
            return f"the client certificate of {caller(context)!r} (serial {serial:x}) is revoked"
        return None

    def add_port(self, server: grpc.Server, address: str) -> int:
        if self.insecure:
            port = server.add_insecure_port(address)
        else:
            creds = grpc.ssl_server_credentials(
                [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True
            )
            port = server.add_secure_port(address, creds)
        if port == 0:
            raise UsageError(f"cannot listen on {address}")
        return port

    def channel(self, address: str, server_name: str, options: list | None = None) -> grpc.Channel:
        """A channel to `address` that only accepts a server holding the certificate of `server_name`."""
        options = list(options or [])
        if self.insecure:
            return grpc.insecure_channel(address, options=options)
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )
        return grpc.secure_channel(address, creds, options=options + [("grpc.ssl_target_name_override", server_name)])


def caller(context: grpc.ServicerContext) -> str | None:
    """The common name of the client certificate of this RPC (None over plaintext)."""
    names = context.auth_context().get("x509_common_name")
    return names[0].decode() if names else None


def caller_serial(context: grpc.ServicerContext) -> int | None:
    """The serial number of the client certificate of this RPC (None over plaintext)."""
    from cryptography import x509

    pems = context.auth_context().get("x509_pem_cert")
    return x509.load_pem_x509_certificate(pems[0]).serial_number if pems else None
