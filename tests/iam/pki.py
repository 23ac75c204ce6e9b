"""A throwaway certificate authority for tests: user certificates as PEM and PKCS#12."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
KeyKind = Literal["rsa", "ec"]

# cryptography spells emailAddress as its bare OID; IAM (canl's portable RFC 2253 form) and
# Java write EMAILADDRESS, which is what SCIM's subjectDn holds.
_RFC2253_NAMES = {NameOID.EMAIL_ADDRESS: "EMAILADDRESS"}


def new_key(kind: KeyKind = "rsa") -> PrivateKey:
    """A fresh private key: RSA 2048 or EC P-256."""
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def key_pem(key: PrivateKey) -> bytes:
    """The key as unencrypted PKCS#8 PEM, as grid tools and IAM's proxies carry it."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def rfc2253(name: x509.Name) -> str:
    """The DN as IAM's SCIM API writes it: RFC 2253, last RDN first."""
    return name.rfc4514_string(_RFC2253_NAMES)


def dn(*parts: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    """A name of one attribute per RDN, in certificate order (the first is the outermost)."""
    return x509.Name([x509.RelativeDistinguishedName([x509.NameAttribute(o, v)]) for o, v in parts])


def _now() -> datetime:
    # Certificates hold whole seconds: a fractional anchor would not round-trip.
    return datetime.now(UTC).replace(microsecond=0)


@dataclass(frozen=True)
class UserCert:
    """An end-entity certificate with its private key and the chain up to (and with) the CA."""

    cert: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def subject_rfc2253(self) -> str:
        return rfc2253(self.cert.subject)

    @property
    def issuer_rfc2253(self) -> str:
        return rfc2253(self.cert.issuer)

    @property
    def cert_pem(self) -> bytes:
        return cert_pem(self.cert)

    @property
    def key_pem(self) -> bytes:
        return key_pem(self.key)

    @property
    def not_after(self) -> datetime:
        return self.cert.not_valid_after_utc

    def pem(self) -> bytes:
        """Certificate then key, the usercert.pem + userkey.pem a user would upload."""
        return self.cert_pem + self.key_pem

    def pkcs12(self, password: str) -> bytes:
        """A .p12 as browsers export it: key, certificate and the CA, password-protected."""
        cns = self.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        friendly = str(cns[-1].value).encode() if cns else None
        return pkcs12.serialize_key_and_certificates(
            friendly,
            self.key,
            self.cert,
            list(self.chain) or None,
            serialization.BestAvailableEncryption(password.encode()),
        )


class TestCA:
    """A self-signed RSA CA. Validity offsets count from ``now`` (the wall clock by default,
    since ``openssl verify`` checks against it)."""

    __test__ = False  # a helper, not a pytest test class

    def __init__(
        self,
        cn: str = "Concordia Test CA",
        *,
        org: str = "Concordia Tests",
        country: str = "NL",
        now: datetime | None = None,
    ) -> None:
        self.now = now or _now()
        self.key: rsa.RSAPrivateKey = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = dn(
            (NameOID.COUNTRY_NAME, country),
            (NameOID.ORGANIZATION_NAME, org),
            (NameOID.COMMON_NAME, cn),
        )
        public = self.key.public_key()
        self.cert: x509.Certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - timedelta(days=365))
            .not_valid_after(self.now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        return cert_pem(self.cert)

    @property
    def subject_rfc2253(self) -> str:
        return rfc2253(self.cert.subject)

    def write(self, path: Path) -> Path:
        """The CA certificate as a PEM file (a -CAfile for openssl), returning the path."""
        path.write_bytes(self.pem)
        return path

    def issue(
        self,
        subject: x509.Name,
        *,
        start: timedelta = timedelta(days=-30),
        end: timedelta = timedelta(days=300),
        key: KeyKind = "rsa",
        now: datetime | None = None,
    ) -> UserCert:
        """An end-entity certificate for any subject, valid from now+start to now+end."""
        anchor = now or self.now
        private = new_key(key)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(private.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(anchor + start)
            .not_valid_after(anchor + end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=True,
                    key_encipherment=True,
                    data_encipherment=True,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        )
        return UserCert(builder.sign(self.key, hashes.SHA256()), private, (self.cert,))

    def issue_user(
        self,
        cn: str,
        *,
        org: str = "Nikhef",
        country: str = "NL",
        email: str | None = None,
        dc: Sequence[str] = (),
        start: timedelta = timedelta(days=-30),
        end: timedelta = timedelta(days=300),
        key: KeyKind = "rsa",
        now: datetime | None = None,
    ) -> UserCert:
        """A personal certificate as grid CAs issue them: [DC=…,] C, O, CN[, emailAddress].
        ``dc`` is in certificate order, e.g. ("org", "terena", "tcs") for TCS."""
        parts = [(NameOID.DOMAIN_COMPONENT, d) for d in dc]
        parts += [
            (NameOID.COUNTRY_NAME, country),
            (NameOID.ORGANIZATION_NAME, org),
            (NameOID.COMMON_NAME, cn),
        ]
        if email is not None:
            parts.append((NameOID.EMAIL_ADDRESS, email))
        return self.issue(dn(*parts), start=start, end=end, key=key, now=now)
