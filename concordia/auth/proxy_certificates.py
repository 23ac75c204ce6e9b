"""RFC 3820 proxies: signed from a user's credential, and read for whom and until when."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from concordia.auth.distinguished_names import dirac_dn
from concordia.auth.x509 import (
    PROXY_CERT_INFO_OID,
    Credential,
    CredentialError,
    UserKey,
    certs_pem,
    check_credential,
    is_proxy,
    key_pem,
)

INHERIT_ALL_OID = "1.3.6.1.5.5.7.21.1"
DIRAC_GROUP_OID = x509.ObjectIdentifier("1.2.42.42")
PROXY_KEY_BITS = 2048
# Sites' clocks drift: a proxy valid from "now" exactly is refused by a node a minute behind.
CLOCK_SKEW = timedelta(minutes=5)
_GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class ProxyInfo:
    subject_dn: str
    issuer_dn: str  # the identity: the end-entity certificate the proxy chain starts from
    not_after: datetime
    seconds_left: int
    dirac_group: str | None
    #: The certificate of the chain behind the proxy that expires first, and when: a proxy
    #: cannot outlive it, so a proxy ending then was cut short by it.
    chain_ends: datetime | None = None
    chain_end_dn: str = ""
    chain_end_is_proxy: bool = False


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def _der_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        while arc > 0x7F:
            arc >>= 7
            chunk.append(0x80 | (arc & 0x7F))
        body += bytes(reversed(chunk))
    return _der(0x06, bytes(body))


def proxy_cert_info(policy_language: str = INHERIT_ALL_OID) -> bytes:
    """DER ProxyCertInfo ::= SEQUENCE { ProxyPolicy ::= SEQUENCE { policyLanguage OID } }."""
    return _der(0x30, _der(0x30, _der_oid(policy_language)))


def _new_proxy_key(user_key: UserKey) -> UserKey:
    if isinstance(user_key, ec.EllipticCurvePrivateKey):
        return ec.generate_private_key(user_key.curve)
    return rsa.generate_private_key(public_exponent=65537, key_size=PROXY_KEY_BITS)


def make_proxy(
    cred: Credential, lifetime: timedelta, now: datetime, dirac_group: str | None = None
) -> bytes:
    """An RFC 3820 proxy signed by the user's key, as PEM: proxy, its key, user cert, chain."""
    if lifetime <= timedelta(0):
        raise ValueError("the proxy lifetime must be positive")
    if dirac_group is not None and not _GROUP_NAME.fullmatch(dirac_group):
        raise ValueError(f"not a DIRAC group name: {dirac_group!r}")
    check_credential(cred, None, now)
    user = cred.certificate
    key = _new_proxy_key(cred.key)
    serial = secrets.randbits(63) | 1  # positive, non-zero, unique enough among one user's proxies
    cn = x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, str(serial))])
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([*user.subject.rdns, cn]))
        .issuer_name(user.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(max(now - CLOCK_SKEW, user.not_valid_before_utc))
        .not_valid_after(min(now + lifetime, user.not_valid_after_utc))
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=True,
                data_encipherment=True,
                content_commitment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.UnrecognizedExtension(PROXY_CERT_INFO_OID, proxy_cert_info()), critical=True
        )
    )
    if dirac_group is not None:
        # DIRAC writes the group as a non-critical DER IA5String under its private OID.
        value = _der(0x16, dirac_group.encode("ascii"))
        builder = builder.add_extension(
            x509.UnrecognizedExtension(DIRAC_GROUP_OID, value), critical=False
        )
    proxy = builder.sign(cred.key, hashes.SHA256())
    return certs_pem([proxy]) + key_pem(key) + certs_pem([user, *cred.chain])


def _dirac_group(cert: x509.Certificate) -> str | None:
    try:
        ext = cert.extensions.get_extension_for_oid(DIRAC_GROUP_OID)
    except x509.ExtensionNotFound:
        return None
    raw = ext.value.value if isinstance(ext.value, x509.UnrecognizedExtension) else b""
    if len(raw) < 2 or raw[0] != 0x16 or raw[1] != len(raw) - 2:
        raise CredentialError("the proxy's DIRAC group extension is not a DER IA5String")
    return raw[2:].decode("ascii")


def proxy_info(pem: bytes, now: datetime) -> ProxyInfo:
    """Who a PEM proxy chain speaks for, until when, and for which DIRAC group."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise CredentialError("the proxy holds no readable certificate") from None
    if not is_proxy(certs[0]):
        raise CredentialError("not a proxy: its first certificate is an ordinary one")
    identity = certs[0]
    for cert, issuer in pairwise(certs):
        if not is_proxy(cert):
            break
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            raise CredentialError("the proxy chain is broken: a certificate is forged") from None
        identity = issuer
    if is_proxy(identity):
        raise CredentialError("the proxy chain lacks the user's own certificate")
    proxy = certs[0]
    first_end = min(certs[1:], key=lambda c: c.not_valid_after_utc, default=None)
    return ProxyInfo(
        subject_dn=dirac_dn(proxy.subject),
        issuer_dn=dirac_dn(identity.subject),
        not_after=proxy.not_valid_after_utc,
        seconds_left=max(0, int((proxy.not_valid_after_utc - now).total_seconds())),
        dirac_group=_dirac_group(proxy),
        chain_ends=first_end.not_valid_after_utc if first_end is not None else None,
        chain_end_dn=dirac_dn(first_end.subject) if first_end is not None else "",
        chain_end_is_proxy=first_end is not None and is_proxy(first_end),
    )
