"""Distinguished names in DIRAC's slash form, from a certificate or either written form."""

from __future__ import annotations

import re

from cryptography import x509
from cryptography.x509.oid import NameOID

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
