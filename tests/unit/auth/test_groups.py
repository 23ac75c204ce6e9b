"""Group claims of IAM's three token profiles, and the VO memberships they give by configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from concordia.auth.groups import every_membership, groups_from_claims, memberships
from concordia.settings import DEFAULT_VOS, Settings, VoConfig


def test_the_three_profiles_give_the_same_groups() -> None:
    wlcg = {"wlcg.groups": ["/escape", "/escape/cta"]}
    iam = {"groups": ["escape", "escape/cta"], "organisation_name": "escape"}
    aarc = {
        "eduperson_entitlement": [
            "urn:geant:escape.eu:group:escape#iam-escape.cloud.cnaf.infn.it",
            "urn:geant:escape.eu:group:escape:cta:role=member#iam-escape.cloud.cnaf.infn.it",
            "urn:mace:dir:entitlement:common-lib-terms",  # not a group: ignored
        ]
    }
    for claims in (wlcg, iam, aarc):
        assert groups_from_claims(claims) == ["/escape", "/escape/cta"], claims


def test_malformed_group_claims_are_ignored() -> None:
    claims = {
        "wlcg.groups": ["/escape", "no-slash//x", "/bad name", 42, "/escape"],
        "groups": "escape/km3net",  # one group as a string
    }
    assert groups_from_claims(claims) == ["/escape", "/escape/km3net"]
    assert groups_from_claims({"wlcg.groups": {"/escape": 1}}) == []
    assert groups_from_claims({}) == []


def test_memberships_follow_the_configuration_and_subgroups_count() -> None:
    found = memberships(DEFAULT_VOS, ["/escape", "/escape/km3net/production"])
    assert [(m.vo, m.title, m.group, m.dirac_group) for m in found] == [
        ("escape", "ESCAPE", "/escape", "escape_user"),
        ("km3net", "KM3NeT", "/escape/km3net", "km3net_user"),
    ]
    assert memberships(DEFAULT_VOS, ["/escapee", "/cta"]) == []  # no prefix tricks
    vos = {"cta": VoConfig(title="CTA", groups=["/cta", "/escape/cta"], dirac_group="cta_prod")}
    assert [m.dirac_group for m in memberships(vos, ["/escape/cta"])] == ["cta_prod"]
    assert [m.vo for m in every_membership(DEFAULT_VOS)] == ["escape", "cta", "km3net"]


def test_vos_and_iam_settings_come_from_the_toml_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "concordia.toml"
    config.write_text(
        'oidc_issuer = "https://iam.example.org/"\noidc_client_id = "c"\n'
        'proxy_sources = ["iam", "upload"]\noidc_scim_scope = true\n'
        '[vos.lofar]\ntitle = "LOFAR"\ngroups = ["/lofar"]\n'
    )
    monkeypatch.setenv("CONCORDIA_CONFIG_FILE", str(config))
    settings = Settings()
    assert settings.iam_mode and settings.oidc_issuer == "https://iam.example.org"
    assert list(settings.vos) == ["lofar"]
    scopes = settings.login_scopes()
    assert scopes[:5] == ["openid", "profile", "email", "offline_access", "wlcg.groups"]
    assert scopes[5:] == ["scim:read", "proxy:generate"]


def test_an_issuer_needs_a_client_id() -> None:
    with pytest.raises(ValidationError, match="oidc_client_id"):
        Settings(oidc_issuer="https://iam.example.org")
