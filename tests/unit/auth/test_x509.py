"""User credentials and RFC 3820 proxies, checked against a test CA and the openssl tool."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from concordia.auth.distinguished_names import dirac_dn, normalise_dn
from concordia.auth.proxy_certificates import DIRAC_GROUP_OID, make_proxy, proxy_info
from concordia.auth.x509 import (
    PROXY_CERT_INFO_OID,
    Credential,
    CredentialError,
    check_credential,
    load_credential,
)
from tests.iam.pki import PrivateKey, TestCA, UserCert, cert_pem, dn, key_pem, new_key

# openssl verify checks against the wall clock, so the test PKI is built around it.
NOW = datetime.now(UTC).replace(microsecond=0)
PASSWORD = "s3cret pass"
USER_DN = "/DC=org/DC=terena/DC=tcs/C=NL/O=Nikhef/CN=Jane Doe/emailAddress=jane@nikhef.nl"
SCIM_DN = "EMAILADDRESS=jane@nikhef.nl,CN=Jane Doe,O=Nikhef,C=NL,DC=tcs,DC=terena,DC=org"


@dataclass
class Pki:
    ca: TestCA
    jane: UserCert

    @property
    def ca_cert(self) -> x509.Certificate:
        return self.ca.cert

    @property
    def user(self) -> x509.Certificate:
        return self.jane.cert

    @property
    def key(self) -> PrivateKey:
        return self.jane.key

    @property
    def cred(self) -> Credential:
        return Credential(self.user, self.key, (self.ca_cert,))

    def issue(self, subject: x509.Name | None = None, **kw: Any) -> Credential:
        """Another certificate from the same CA, Jane's DN unless told otherwise."""
        user = self.ca.issue(subject or self.user.subject, **kw)
        return Credential(user.cert, user.key, user.chain)


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca = TestCA("Test CA", country="NL", now=NOW)
    return Pki(ca, ca.issue_user("Jane Doe", email="jane@nikhef.nl", dc=("org", "terena", "tcs")))


def _openssl_verify(tmp_path: Path, pki: Pki, proxy_pem: bytes, *flags: str) -> bool:
    blocks = re.findall(
        rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n", proxy_pem, re.S
    )
    pki.ca.write(tmp_path / "ca.pem")
    (tmp_path / "user.pem").write_bytes(blocks[1])
    (tmp_path / "proxy_cert.pem").write_bytes(blocks[0])
    result = subprocess.run(
        [
            "openssl",
            "verify",
            *flags,
            "-CAfile",
            "ca.pem",
            "-untrusted",
            "user.pem",
            "proxy_cert.pem",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode == 0 and "proxy_cert.pem: OK" in result.stdout


# --- DNs


def test_dirac_dn_is_slash_form_in_certificate_order(pki: Pki) -> None:
    assert dirac_dn(pki.user.subject) == USER_DN
    assert pki.jane.subject_rfc2253 == SCIM_DN  # as IAM's SCIM API writes it


def test_scim_rfc2253_dn_normalises_to_dirac_form() -> None:
    assert normalise_dn(SCIM_DN) == USER_DN
    assert normalise_dn(USER_DN) == USER_DN
    assert normalise_dn("CN=Doe\\, Jane,O=Example") == "/O=Example/CN=Doe, Jane"


# --- loading


def test_pkcs12_with_password_loads(pki: Pki) -> None:
    p12 = pki.jane.pkcs12(PASSWORD)
    cred = load_credential(p12, PASSWORD)
    assert cred.certificate == pki.user
    assert cred.chain == (pki.ca_cert,)
    with pytest.raises(CredentialError, match="wrong or missing password"):
        load_credential(p12, "not it")
    with pytest.raises(CredentialError, match="wrong or missing password"):
        load_credential(p12, None)


def test_pkcs12_without_key_is_refused(pki: Pki) -> None:
    p12 = pkcs12.serialize_key_and_certificates(
        b"jane", None, pki.user, None, serialization.BestAvailableEncryption(PASSWORD.encode())
    )
    with pytest.raises(CredentialError, match="no private key"):
        load_credential(p12, PASSWORD)


@pytest.mark.parametrize(
    "form", [serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL]
)
def test_pem_with_encrypted_key_in_one_blob(pki: Pki, form: serialization.PrivateFormat) -> None:
    key = pki.key.private_bytes(
        serialization.Encoding.PEM, form, serialization.BestAvailableEncryption(PASSWORD.encode())
    )
    blob = key + cert_pem(pki.ca_cert, pki.user)  # any order: the key picks its certificate
    cred = load_credential(blob, PASSWORD)
    assert cred.certificate == pki.user
    assert cred.chain == (pki.ca_cert,)
    with pytest.raises(CredentialError, match="wrong password"):
        load_credential(blob, "not it")
    with pytest.raises(CredentialError, match="encrypted: give its password"):
        load_credential(blob, None)


def test_unencrypted_pem_loads_even_with_a_password(pki: Pki) -> None:
    assert load_credential(pki.jane.pem(), PASSWORD).certificate == pki.user


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"hello, this is not a certificate", "not a certificate file"),
        (b"\x30\x03\x02\x01\x01", "not a certificate file"),  # DER, but no PKCS#12
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "no readable"),
    ],
)
def test_garbage_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(CredentialError, match=message):
        load_credential(data, PASSWORD)


def test_certificate_without_key_is_refused(pki: Pki) -> None:
    with pytest.raises(CredentialError, match="no private key"):
        load_credential(pki.jane.cert_pem, None)


def test_key_of_another_certificate_is_refused(pki: Pki) -> None:
    with pytest.raises(CredentialError, match="does not belong to the certificate"):
        load_credential(pki.jane.cert_pem + key_pem(new_key()), None)


def test_a_proxy_is_not_accepted_as_the_users_credential(pki: Pki) -> None:
    proxy = make_proxy(pki.cred, timedelta(hours=12), NOW)
    with pytest.raises(CredentialError, match="proxy certificate, not your own"):
        load_credential(proxy, None)


# --- checks


def test_valid_credential_of_the_expected_dn_passes(pki: Pki) -> None:
    check_credential(pki.cred, SCIM_DN, NOW)
    check_credential(pki.cred, USER_DN, NOW)
    check_credential(pki.cred, None, NOW)


def test_expired_and_not_yet_valid_are_refused(pki: Pki) -> None:
    expired = pki.issue(start=timedelta(days=-400), end=timedelta(days=-1))
    with pytest.raises(CredentialError, match="expired on"):
        check_credential(expired, None, NOW)
    with pytest.raises(CredentialError, match="expired on"):
        make_proxy(expired, timedelta(hours=1), NOW)
    future = pki.issue(start=timedelta(days=2), end=timedelta(days=300))
    with pytest.raises(CredentialError, match="not valid before"):
        check_credential(future, None, NOW)


def test_certificate_of_another_dn_is_refused_naming_both(pki: Pki) -> None:
    other = pki.issue(dn((NameOID.DOMAIN_COMPONENT, "ch"), (NameOID.COMMON_NAME, "John Roe")))
    with pytest.raises(CredentialError) as err:
        check_credential(other, SCIM_DN, NOW)
    assert "/DC=ch/CN=John Roe" in str(err.value)
    assert USER_DN in str(err.value)


# --- proxies


def test_proxy_verifies_with_openssl(pki: Pki, tmp_path: Path) -> None:
    proxy = make_proxy(pki.cred, timedelta(hours=12), NOW)
    assert _openssl_verify(tmp_path, pki, proxy, "-allow_proxy_certs")
    # Without the flag openssl refuses it: proof that it is seen as a proxy, not a plain cert.
    assert not _openssl_verify(tmp_path, pki, proxy)


def test_tampered_proxy_fails_openssl_verify(pki: Pki, tmp_path: Path) -> None:
    proxy_pem = make_proxy(pki.cred, timedelta(hours=12), NOW)
    proxy = x509.load_pem_x509_certificates(proxy_pem)[0]
    der = bytearray(proxy.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte belongs to the signature
    tampered = x509.load_der_x509_certificate(bytes(der)).public_bytes(serialization.Encoding.PEM)
    rest = proxy_pem[proxy_pem.index(b"-----BEGIN PRIVATE KEY") :]
    assert not _openssl_verify(tmp_path, pki, tampered + rest, "-allow_proxy_certs")
    with pytest.raises(CredentialError, match="forged"):
        proxy_info(tampered + rest, NOW)


def test_proxy_signed_by_another_key_fails(pki: Pki, tmp_path: Path) -> None:
    impostor = Credential(pki.user, new_key(), (pki.ca_cert,))  # right DN, wrong key
    proxy = make_proxy(impostor, timedelta(hours=12), NOW)
    assert not _openssl_verify(tmp_path, pki, proxy, "-allow_proxy_certs")
    with pytest.raises(CredentialError, match="forged"):
        proxy_info(proxy, NOW)


def test_proxy_pem_order_subject_and_key(pki: Pki) -> None:
    pem = make_proxy(pki.cred, timedelta(hours=12), NOW)
    kinds = re.findall(rb"-----BEGIN ([A-Z ]+)-----", pem)
    assert kinds == [b"CERTIFICATE", b"PRIVATE KEY", b"CERTIFICATE", b"CERTIFICATE"]
    proxy, user, ca = x509.load_pem_x509_certificates(pem)
    assert (user, ca) == (pki.user, pki.ca_cert)
    key = serialization.load_pem_private_key(pem, None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    assert key.public_key() == proxy.public_key()
    assert proxy.issuer == pki.user.subject
    assert proxy.subject.rdns[:-1] == pki.user.subject.rdns
    assert dirac_dn(proxy.subject) == f"{USER_DN}/CN={proxy.serial_number}"
    proxy.verify_directly_issued_by(pki.user)


def test_proxy_extensions(pki: Pki) -> None:
    proxy = x509.load_pem_x509_certificates(make_proxy(pki.cred, timedelta(hours=1), NOW))[0]
    pci = proxy.extensions.get_extension_for_oid(PROXY_CERT_INFO_OID)
    assert pci.critical
    assert isinstance(pci.value, x509.UnrecognizedExtension)
    assert pci.value.value == bytes.fromhex("300c300a06082b06010505071501")  # inheritAll
    usage = proxy.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature and usage.value.key_encipherment
    assert not usage.value.key_cert_sign
    with pytest.raises(x509.ExtensionNotFound):
        proxy.extensions.get_extension_for_oid(DIRAC_GROUP_OID)


def test_dirac_group_extension_round_trips(pki: Pki, tmp_path: Path) -> None:
    pem = make_proxy(pki.cred, timedelta(hours=1), NOW, dirac_group="escape_user")
    ext = x509.load_pem_x509_certificates(pem)[0].extensions.get_extension_for_oid(DIRAC_GROUP_OID)
    assert not ext.critical
    assert isinstance(ext.value, x509.UnrecognizedExtension)
    assert ext.value.value == b"\x16\x0bescape_user"  # DER IA5String
    assert proxy_info(pem, NOW).dirac_group == "escape_user"
    assert _openssl_verify(tmp_path, pki, pem, "-allow_proxy_certs")
    with pytest.raises(ValueError, match="not a DIRAC group"):
        make_proxy(pki.cred, timedelta(hours=1), NOW, dirac_group="bad group/é")


def test_proxy_info(pki: Pki) -> None:
    pem = make_proxy(pki.cred, timedelta(hours=12), NOW)
    info = proxy_info(pem, NOW)
    assert info.issuer_dn == USER_DN
    assert info.subject_dn.startswith(USER_DN + "/CN=")
    assert info.not_after == NOW + timedelta(hours=12)
    assert info.seconds_left == 12 * 3600
    assert info.dirac_group is None
    assert proxy_info(pem, NOW + timedelta(days=1)).seconds_left == 0
    with pytest.raises(CredentialError, match="not a proxy"):
        proxy_info(cert_pem(pki.user, pki.ca_cert), NOW)


def test_lifetime_is_capped_by_the_user_certificate(pki: Pki, tmp_path: Path) -> None:
    short = pki.issue(end=timedelta(hours=2))
    pem = make_proxy(short, timedelta(hours=24), NOW)
    proxy = x509.load_pem_x509_certificates(pem)[0]
    assert proxy.not_valid_after_utc == short.certificate.not_valid_after_utc
    assert proxy.not_valid_before_utc == NOW - timedelta(minutes=5)
    assert proxy_info(pem, NOW).seconds_left == 2 * 3600


def test_ec_user_key_gives_ec_proxy(pki: Pki, tmp_path: Path) -> None:
    cred = load_credential(pki.ca.issue(pki.user.subject, key="ec").pem(), None)
    pem = make_proxy(cred, timedelta(hours=1), NOW)
    assert isinstance(serialization.load_pem_private_key(pem, None), ec.EllipticCurvePrivateKey)
    assert _openssl_verify(tmp_path, pki, pem, "-allow_proxy_certs")


def test_bad_lifetime_is_refused(pki: Pki) -> None:
    with pytest.raises(ValueError, match="positive"):
        make_proxy(pki.cred, timedelta(0), NOW)
