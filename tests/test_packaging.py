"""Packaging facts: the wheel ships the recipes, the README and CI agree, CITATION.cff is valid."""

import datetime
import re
import tomllib
from pathlib import Path

import pytest
from wheels import wheel_names

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_the_recipes_as_package_data(tmp_path):
    pytest.importorskip("hatchling")
    names = wheel_names(ROOT, tmp_path)
    recipes = sorted(p.name for p in (ROOT / "transforms").glob("*.toml"))
    assert recipes and "baseline.toml" in recipes
    for name in recipes:
        assert f"hamjax/transforms/{name}" in names
    assert not any(n.startswith("tests/") or n.startswith("bench/") for n in names)


def test_transforms_folder_holds_only_recipes():
    assert {p.suffix for p in (ROOT / "transforms").iterdir()} == {".toml"}


def test_readme_commands_match_ci():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    assert blocks[0].strip() == "pip install . && hamjax optimize"
    assert blocks[1].strip() == 'pip install ".[test]" && pytest'
    assert 'pip install ".[test]" && pytest' in (ROOT / ".ci" / "run").read_text()


def test_dependencies_do_not_pull_pytorch():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = meta["dependencies"] + [d for extra in meta["optional-dependencies"].values() for d in extra]
    assert not [d for d in deps if re.match(r"torch\b", d)]
    assert meta["requires-python"] == ">=3.11"


def _cff():
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((ROOT / "CITATION.cff").read_text())


def test_citation_cff_is_valid_cff_1_2_0():
    cff = _cff()
    required = {"cff-version", "message", "title", "authors"}
    allowed = required | {
        "abstract",
        "commit",
        "contact",
        "date-released",
        "doi",
        "identifiers",
        "keywords",
        "license",
        "license-url",
        "preferred-citation",
        "references",
        "repository",
        "repository-artifact",
        "repository-code",
        "type",
        "url",
        "version",
    }
    assert required <= set(cff), required - set(cff)
    assert set(cff) <= allowed, set(cff) - allowed
    assert cff["cff-version"] == "1.2.0"
    assert isinstance(cff["message"], str) and cff["message"]
    assert isinstance(cff["authors"], list) and cff["authors"]
    for author in cff["authors"]:
        assert ("name" in author) != ("family-names" in author or "given-names" in author)
    assert cff.get("type", "software") in {"software", "dataset"}
    date = cff["date-released"]
    assert isinstance(date, datetime.date | str)
    datetime.date.fromisoformat(str(date))
    assert re.fullmatch(r"https?://\S+", cff["repository-code"]) and re.fullmatch(r"https?://\S+", cff["url"])
    assert all(isinstance(k, str) for k in cff["keywords"])


def test_readme_bibtex_matches_citation_and_version():
    cff = _cff()
    readme = (ROOT / "README.md").read_text()
    bib = re.search(r"```bibtex\n(.*?)```", readme, re.S).group(1)
    fields = dict(re.findall(r"(\w+) = \{+(.*?)\}+,?\n", bib))
    assert fields["title"] == cff["title"]
    assert fields["version"] == cff["version"]
    assert fields["url"] == cff["url"]
    assert fields["license"] == cff["license"]
    assert fields["author"] == cff["authors"][0]["name"]
    assert fields["year"] == str(cff["date-released"])[:4]
    import hamjax

    assert (
        hamjax.__version__
        == cff["version"]
        == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    )
