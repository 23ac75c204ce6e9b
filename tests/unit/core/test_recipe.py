"""Image recipes: what is refused, how a base is folded in, and what the image id covers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from concordia.core.application import ApplicationDef
from concordia.core.recipe import Recipe, image_id
from concordia.logic.applications import ApplicationCatalog


def app_with(image: dict[str, object], **extra: object) -> ApplicationDef:
    return ApplicationDef.model_validate(
        {"name": "a", "title": "A", "command": "true", "image": image, **extra}
    )


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ({"packagez": ["x"]}, "Extra inputs are not permitted"),
        ({"base": "ubuntu:jammy"}, "base must be debian:SUITE or recipe:APPLICATION"),
        ({"packages": ["Bad Name"]}, "is not a Debian package name"),
        ({"pip": ["-e ."]}, "is not a pip requirement"),
        ({"pip": ["x @ https://example.org/x.whl"]}, "not a URL or an option"),
        ({"files": {"../etc/passwd": "/etc/passwd"}}, "relative path beside the application"),
        ({"files": {"a.sh": "relative/dest"}}, "must be an absolute path in the image"),
        ({"workdir": "/work/../etc"}, "must be an absolute path in the image"),
        ({"env": {"BAD-NAME": "x"}}, "bad name or value"),
        ({"steps": [" "]}, "non-empty shell command"),
        ({"variant": "full"}, "Input should be 'minbase' or 'extract'"),
    ],
)
def test_bad_recipes_are_refused_with_the_reason(recipe: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Recipe.model_validate(recipe)


def test_steps_may_only_use_declared_build_arguments() -> None:
    with pytest.raises(ValidationError, match=r"unknown build argument \{model\}"):
        app_with({"steps": ["make {model}"]})
    with pytest.raises(ValidationError, match="must be a plain name"):
        app_with(
            {"steps": ["echo {model!r}"]}, build_args={"model": {"type": "str", "default": "x"}}
        )
    with pytest.raises(ValidationError, match="need an image recipe"):
        ApplicationDef.model_validate(
            {"name": "a", "title": "A", "command": "true",
             "build_args": {"m": {"type": "str", "default": "x"}}}
        )  # fmt: skip
    ok = app_with({"steps": ["make {model}"]}, build_args={"model": {"type": "enum",
                  "choices": ["qgs", "epos"], "default": "qgs"}})  # fmt: skip
    assert ok.image is not None
    assert ok.image.rendered_steps({"model": "epos; rm -rf /"}) == ["make 'epos; rm -rf /'"]


def test_a_recipe_on_another_is_folded_into_one_build() -> None:
    base = Recipe(packages=["python3"], pip=["numpy"], steps=["a"], env={"A": "1", "B": "1"})
    top = Recipe(base="recipe:base", packages=["python3", "gfortran"], steps=["b"], env={"B": "2"})
    flat = top.on_top_of(base)
    assert flat.base == "debian:bookworm" and flat.base_recipe is None
    assert flat.packages == ["python3", "gfortran"] and flat.pip == ["numpy"]
    assert flat.steps == ["a", "b"] and flat.env == {"A": "1", "B": "2"}


def test_the_image_id_covers_recipe_arguments_files_and_builder() -> None:
    recipe = Recipe(packages=["busybox-static"], steps=["echo {x}"])
    digests = {"/opt/a.sh": "0" * 64}
    same = image_id(recipe, {"x": 1}, digests, "mmdebstrap 1.3.5")
    assert same == image_id(Recipe(packages=["busybox-static"], steps=["echo {x}"]), {"x": 1},
                            dict(digests), "mmdebstrap 1.3.5")  # fmt: skip
    assert len(same) == 64 and int(same, 16) >= 0
    others = {
        image_id(recipe, {"x": 2}, digests, "mmdebstrap 1.3.5"),
        image_id(recipe, {"x": 1}, {"/opt/a.sh": "1" * 64}, "mmdebstrap 1.3.5"),
        image_id(recipe, {"x": 1}, digests, "mmdebstrap 1.3.6"),
        image_id(recipe.model_copy(update={"packages": ["busybox"]}), {"x": 1}, digests,
                 "mmdebstrap 1.3.5"),
    }  # fmt: skip
    assert same not in others and len(others) == 4


def test_the_catalogue_refuses_unknown_or_looping_bases(tmp_path: Path) -> None:
    busybox = "image: {variant: extract, packages: [busybox-static]}"
    files = {
        "base.yaml": f"name: base\ntitle: B\ncommand: 'true'\n{busybox}\n",
        "top.yaml": "name: top\ntitle: T\ncommand: 'true'\nimage: {base: 'recipe:base'}\n",
        "orphan.yaml": "name: orphan\ntitle: O\ncommand: 'true'\nimage: {base: 'recipe:nope'}\n",
        "ping.yaml": "name: ping\ntitle: P\ncommand: 'true'\nimage: {base: 'recipe:pong'}\n",
        "pong.yaml": "name: pong\ntitle: P\ncommand: 'true'\nimage: {base: 'recipe:ping'}\n",
        "typo.yaml": "name: typo\ntitle: T\ncommand: 'true'\nimage: {packges: [x]}\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    catalog = ApplicationCatalog(tmp_path).load()
    assert sorted(catalog.apps) == ["base", "top"]
    assert "'nope', which is no application with a recipe" in catalog.errors["orphan.yaml"]
    assert "loop: ping -> pong -> ping" in catalog.errors["ping.yaml"]
    assert "packges" in catalog.errors["typo.yaml"]


FLAVOUR = {"flavour": {"type": "str", "default": "vanilla"}}


@pytest.mark.parametrize(
    "step",
    [
        "echo 'made with {flavour}' > /etc/proof",
        'echo "{flavour}" > /etc/proof',
        "cat > /etc/proof <<EOF\n{flavour}\nEOF",
    ],
)
def test_a_build_step_quoting_a_placeholder_is_refused(step: str) -> None:
    with pytest.raises(ValidationError) as info:
        app_with({"steps": [step]}, build_args=FLAVOUR)
    assert "application 'a': placeholder {flavour} in its build step" in str(info.value)


def test_a_build_argument_becomes_one_shell_word_of_its_step(tmp_path: Path) -> None:
    app = app_with({"steps": ["printf '[%s]' {flavour} x{flavour} > out"]}, build_args=FLAVOUR)
    assert app.image is not None
    value = "$(touch pwned)'; touch pwned; '"
    [step] = app.image.rendered_steps({"flavour": value})
    subprocess.run(["sh", "-c", step], cwd=tmp_path, check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (tmp_path / "out").read_text() == f"[{value}][x{value}]"
