"""User x509 credentials: load and check them, sign RFC 3820 proxies from them, read proxies."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise

from asn1crypto import algos as asn1_algos
from asn1crypto import keys as asn1_keys
from asn1crypto import pem as asn1_pem
from asn1crypto import pkcs12 as asn1_pkcs12
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

PROXY_CERT_INFO_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14")
INHERIT_ALL_OID = "1.3.6.1.5.5.7.21.1"
DIRAC_GROUP_OID = x509.ObjectIdentifier("1.2.42.42")
PROXY_KEY_BITS = 2048
# Sites' clocks drift: a proxy valid from "now" exactly is refused by a node a minute behind.
CLOCK_SKEW = timedelta(minutes=5)

# The short names OpenSSL's one-line form prints, which is what DIRAC stores DNs as.
_SHORT_NAMES = {
    NameOID.COMMON_NAME: "CN",
    NameOID.COUNTRY_NAME: "C",
    NameOID.LOCALITY_NAME: "L",
    NameOID.STATE_OR_PROVINCE_NAME: "ST",
    NameOID.STREET_ADDRESS: "street",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.DOMAIN_COMPONENT: "DC",
    NameOID.EMAIL_ADDRESS: "emailAddress",
    NameOID.USER_ID: "UID",
    NameOID.SERIAL_NUMBER: "serialNumber",
    NameOID.SURNAME: "SN",
    NameOID.GIVEN_NAME: "GN",
    NameOID.TITLE: "title",
}
# RFC 2253 spellings (SCIM, LDAP, Java) of the same attributes, upper-cased.
_ALIASES = {name.upper(): name for name in _SHORT_NAMES.values()} | {
    "E": "emailAddress",
    "EMAIL": "emailAddress",
    "SERIALNUMBER": "serialNumber",
    "G": "GN",
    "GIVENNAME": "GN",
    "T": "title",
}
_GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_PEM_KEY = re.compile(rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----", re.S)

UserKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class CredentialError(ValueError):
    """A credential that cannot be used, with a message fit to show its owner."""


@dataclass(frozen=True)
class Credential:
    certificate: x509.Certificate
    key: UserKey
    chain: tuple[x509.Certificate, ...] = ()


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


def dirac_dn(name: x509.Name) -> str:
    """The DN in DIRAC's slash form, RDNs in certificate order: /DC=ch/DC=cern/CN=Jane Doe."""
    parts = []
    for rdn in name.rdns:
        values = [f"{_SHORT_NAMES.get(a.oid, a.oid.dotted_string)}={a.value!s}" for a in rdn]
        parts.append("+".join(values))
    return "".join(f"/{part}" for part in parts)


def normalise_dn(dn: str) -> str:
    """Either DN form (DIRAC slash or SCIM's RFC 2253) as DIRAC's slash form, for comparing."""
    dn = dn.strip()
    if dn.startswith("/"):
        components = [c for c in dn[1:].split("/") if c]
    else:
        # RFC 2253 lists the RDNs last-first and escapes commas inside values.
        components = [c.strip().replace("\\,", ",") for c in re.split(r"(?<!\\),", dn)][::-1]
    out: list[str] = []
    for component in components:
        key, sep, value = component.partition("=")
        if not sep:
            out[-1:] = [f"{out[-1]}/{component}"] if out else [component]  # a "/" inside a value
            continue
        out.append(f"{_ALIASES.get(key.strip().upper(), key.strip())}={value.strip()}")
    return "".join(f"/{c}" for c in out)


def is_proxy(cert: x509.Certificate) -> bool:
    """RFC 3820 proxies carry ProxyCertInfo; legacy Globus ones end in CN=proxy."""
    try:
        cert.extensions.get_extension_for_oid(PROXY_CERT_INFO_OID)
        return True
    except x509.ExtensionNotFound:
        pass
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return bool(cns) and cns[-1].value in ("proxy", "limited proxy")


def _spki(key: UserKey | x509.Certificate) -> bytes:
    public = key.public_key()
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _looks_like_der(data: bytes) -> bool:
    """A DER SEQUENCE filling the whole blob: a PKCS#12 file, as opposed to garbage."""
    if len(data) < 2 or data[0] != 0x30:
        return False
    length, offset = data[1], 2
    if length & 0x80:
        n = length & 0x7F
        length, offset = int.from_bytes(data[2 : 2 + n], "big"), 2 + n
    return offset + length == len(data)


def _usable_key(key: object) -> UserKey:
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise CredentialError(f"unsupported private key type {type(key).__name__}: use RSA or EC")
    return key


#: Key-derivation iterations a credential may ask for: exporters use 2,048 to 600,000; a file
#: asking 2^31 would cost minutes of CPU per upload before its password is even checked.
MAX_KDF_ITERATIONS = 1_000_000
#: What asn1crypto raises on malformed DER (it parses lazily, as fields are read).
_ASN1_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError)


def check_pkcs12_costs(data: bytes) -> None:
    """Refuse a PKCS#12 file whose MAC or encryption iteration counts pass the bound, before
    OpenSSL runs them. Read: the MAC, each encrypted safe, each shrouded key bag not itself
    inside an encrypted safe (those need the password; the safe's own count bounds that)."""
    try:
        pfx = asn1_pkcs12.Pfx.load(data)
        mac = pfx["mac_data"]
        counts = [("the MAC", mac["iterations"].native)] if mac.native is not None else []
        for info in pfx.authenticated_safe:
            if info["content_type"].native == "encrypted_data":
                algorithm = info["content"]["encrypted_content_info"]
                algorithm = algorithm["content_encryption_algorithm"]
                counts.append(("an encrypted part", _kdf_iterations(algorithm)))
            elif info["content_type"].native == "data":
                counts += _bag_costs(asn1_pkcs12.SafeContents.load(info["content"].native))
    except CredentialError:
        raise
    except _ASN1_ERRORS:
        raise CredentialError("not a certificate file: expected PKCS#12 (.p12) or PEM") from None
    for what, count in counts:
        if count > MAX_KDF_ITERATIONS:
            raise CredentialError(
                f"the PKCS#12 file asks for {count} key-derivation iterations for {what}; at "
                f"most {MAX_KDF_ITERATIONS} are accepted: export it again with fewer"
            )


def _bag_costs(bags: asn1_pkcs12.SafeContents) -> list[tuple[str, int]]:
    counts = []
    for bag in bags:
        kind = bag["bag_id"].native
        if kind == "pkcs8_shrouded_key_bag":
            algorithm = bag["bag_value"]["encryption_algorithm"]
            counts.append(("the private key", _kdf_iterations(algorithm)))
        elif kind == "safe_contents":
            counts += _bag_costs(bag["bag_value"])
    return counts


def _kdf_iterations(algorithm: asn1_algos.EncryptionAlgorithm) -> int:
    try:
        count: int = algorithm.kdf_iterations
    except (ValueError, KeyError):  # e.g. scrypt: a cost of another shape, not checked
        raise CredentialError(
            f"the key is encrypted with {algorithm['algorithm'].native!r}, which is not "
            "accepted: export it again with PBKDF2 (the default of OpenSSL 3)"
        ) from None
    return count


def _load_pkcs12(data: bytes, password: bytes | None) -> Credential:
    check_pkcs12_costs(data)
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, password)
    except ValueError:
        if _looks_like_der(data):
            raise CredentialError(
                "cannot open the PKCS#12 file: wrong or missing password (or a damaged file)"
            ) from None
        raise CredentialError("not a certificate file: expected PKCS#12 (.p12) or PEM") from None
    # Without a key the certificate is not "the" one but an extra: check the key first.
    if key is None:
        raise CredentialError("the PKCS#12 file holds no private key, only certificates")
    if cert is None:
        raise CredentialError("the PKCS#12 file holds no certificate for its key")
    return Credential(cert, _usable_key(key), tuple(extra))


def _load_pem_key(block: bytes, password: bytes | None) -> UserKey:
    if block.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY"):  # PKCS#8: PBKDF2, as PKCS#12
        try:
            _kind, _headers, der = asn1_pem.unarmor(block)
            info = asn1_keys.EncryptedPrivateKeyInfo.load(der)
            count = _kdf_iterations(info["encryption_algorithm"])
        except _ASN1_ERRORS:
            raise CredentialError("the private key in the PEM data is damaged") from None
        if count > MAX_KDF_ITERATIONS:
            raise CredentialError(
                f"the private key asks for {count} key-derivation iterations; at most "
                f"{MAX_KDF_ITERATIONS} are accepted: export it again with fewer"
            )
    try:
        return _usable_key(serialization.load_pem_private_key(block, password))
    except TypeError as e:
        if password is None:
            raise CredentialError("the private key is encrypted: give its password") from e
        # A password given for a key that has none is harmless: use the key.
        return _usable_key(serialization.load_pem_private_key(block, None))
    except ValueError as e:
        if password is not None:
            raise CredentialError("cannot decrypt the private key: wrong password") from e
        raise CredentialError("the private key in the PEM data is damaged") from e


def _load_pem(data: bytes, password: bytes | None) -> Credential:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CredentialError("the PEM data holds no readable certificate") from None
    match = _PEM_KEY.search(data)
    if match is None:
        raise CredentialError("the PEM data holds no private key: add the key (userkey.pem)")
    key = _load_pem_key(match.group(0), password)
    # The blob may hold the CA chain too: the user's certificate is the one the key opens.
    mine = [c for c in certs if _spki(c) == _spki(key)]
    if not mine:
        raise CredentialError("the private key does not belong to the certificate")
    return Credential(mine[0], key, tuple(c for c in certs if c is not mine[0]))


def load_credential(data: bytes, password: str | None) -> Credential:
    """Parse a PKCS#12 file or PEM certificate + key; refuse keys that don't match and proxies."""
    secret = password.encode() if password else None
    pem = b"-----BEGIN" in data
    cred = _load_pem(data, secret) if pem else _load_pkcs12(data, secret)
    if _spki(cred.certificate) != _spki(cred.key):
        raise CredentialError("the private key does not belong to the certificate")
    if is_proxy(cred.certificate):
        raise CredentialError(
            "this is a proxy certificate, not your own: upload the certificate it was made from"
        )
    return cred


def credential_pem(cred: Credential) -> bytes:
    """The credential as PEM (certificate, chain, unencrypted key): only ever stored encrypted."""
    return _certs_pem([cred.certificate, *cred.chain]) + _key_pem(cred.key)


def _key_pem(key: UserKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _certs_pem(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def check_credential(cred: Credential, expected_dn: str | None, now: datetime) -> None:
    """Refuse a certificate outside its validity or of another DN than the account's."""
    cert = cred.certificate
    if now < cert.not_valid_before_utc:
        raise CredentialError(f"the certificate is not valid before {cert.not_valid_before_utc}")
    if now >= cert.not_valid_after_utc:
        raise CredentialError(f"the certificate expired on {cert.not_valid_after_utc}")
    dn = dirac_dn(cert.subject)
    if expected_dn is not None and normalise_dn(expected_dn) != dn:
        raise CredentialError(
            f"the certificate is for {dn}, but your account's certificate is "
            f"{normalise_dn(expected_dn)}"
        )


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
    return _certs_pem([proxy]) + _key_pem(key) + _certs_pem([user, *cred.chain])


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
