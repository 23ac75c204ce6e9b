"""User x509 credentials: load a certificate and its key (PKCS#12 or PEM) and check them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from asn1crypto import algos as asn1_algos
from asn1crypto import keys as asn1_keys
from asn1crypto import pem as asn1_pem
from asn1crypto import pkcs12 as asn1_pkcs12
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from concordia.auth.distinguished_names import dirac_dn, normalise_dn

#: The extension marking an RFC 3820 proxy: a credential must not be one.
PROXY_CERT_INFO_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14")

_PEM_KEY = re.compile(rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----", re.S)

UserKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class CredentialError(ValueError):
    """A credential that cannot be used, with a message fit to show its owner."""


@dataclass(frozen=True)
class Credential:
    certificate: x509.Certificate
    key: UserKey
    chain: tuple[x509.Certificate, ...] = ()


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
    return certs_pem([cred.certificate, *cred.chain]) + key_pem(cred.key)


def key_pem(key: UserKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def certs_pem(certs: list[x509.Certificate]) -> bytes:
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
