"""IAM group claims of the three token profiles, and the VO memberships they give."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from concordia.settings import VoConfig

# The WLCG token profile's grammar: group ::= '/' name | group '/' name.
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
_GROUP = re.compile(rf"(/{_NAME})+")
# AARC-G002 entitlements: urn:<nid>:<namespace>:group:<g>[:<subgroup>...][:role=<r>][#<authority>]
_ENTITLEMENT = re.compile(r"urn:[^:#]+(?::[^:#]+)*?:group:([^#]+)")


class Membership(BaseModel):
    """Recognised as a member of a VO through one IAM group."""

    vo: str
    title: str
    group: str
    dirac_group: str


def groups_from_claims(claims: Mapping[str, Any]) -> list[str]:
    """The user's groups as WLCG paths (/escape/cta), from whichever profile's claim is there:
    wlcg.groups (paths), groups (IAM profile: no leading slash), eduperson_entitlement (AARC)."""
    found: list[str] = []
    for value in _strings(claims.get("wlcg.groups")):
        found.append(value)
    for value in _strings(claims.get("groups")):
        found.append(value if value.startswith("/") else "/" + value)
    for value in _strings(claims.get("eduperson_entitlement")):
        match = _ENTITLEMENT.match(value)
        if match:  # the group's path ends where a role (role=...) begins
            names = [n for n in match.group(1).split(":") if "=" not in n]
            found.append("/" + "/".join(names))
    return [g for g in dict.fromkeys(found) if _GROUP.fullmatch(g)]


def _strings(value: object) -> list[str]:
    if isinstance(value, str):  # some IdPs send a single group as a string
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def memberships(vos: Mapping[str, VoConfig], groups: list[str]) -> list[Membership]:
    """The configured VOs the groups make the user a member of, in configuration order."""
    found = []
    for name, vo in vos.items():
        for wanted in vo.groups:
            group = next((g for g in groups if g == wanted or g.startswith(wanted + "/")), None)
            if group is not None:
                found.append(_membership(name, vo, wanted))
                break
    return found


def every_membership(vos: Mapping[str, VoConfig]) -> list[Membership]:
    """Local mode: the machine's user is a member of every VO configured."""
    return [_membership(name, vo, vo.groups[0] if vo.groups else "") for name, vo in vos.items()]


def _membership(name: str, vo: VoConfig, group: str) -> Membership:
    return Membership(
        vo=name, title=vo.title, group=group, dirac_group=vo.dirac_group or f"{name}_user"
    )
