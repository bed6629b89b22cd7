"""The documentation site: every public package has an API page, and the site builds without a warning."""

import importlib.util
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import hamjax

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _namespaces():
    """Subpackages and modules ``import hamjax`` exposes in ``__all__``, found without importing them."""
    return sorted(n for n in hamjax.__all__ if not n.startswith("_") and importlib.util.find_spec(f"hamjax.{n}"))


def test_every_public_namespace_has_an_api_page_in_the_index():
    pages = {p.stem: p.read_text() for p in (DOCS / "api").glob("*.rst")}
    index = pages.pop("index")
    assert re.search(r"package-api:: hamjax\s*\n\s*:no-submodules:", pages.pop("hamjax"))
    listed = set(re.findall(r"^   (\w+)$", index, flags=re.M))
    for name in _namespaces():
        assert name in pages, f"hamjax.{name} is public but docs/api/{name}.rst does not exist"
        assert f".. package-api:: hamjax.{name}" in pages[name]
        assert name in listed, f"docs/api/index.rst does not list {name}"
    for name in pages:  # hamjax.search is public without being in hamjax.__all__ (it loads on first use)
        assert importlib.util.find_spec(f"hamjax.{name}"), f"docs/api/{name}.rst documents a package that is gone"
        assert name in listed, f"docs/api/index.rst does not list {name}"


def test_readme_says_how_to_build_the_docs():
    readme = (ROOT / "README.md").read_text()
    assert 'pip install ".[docs]" && python -m sphinx -W docs docs/_build' in readme
    assert "docs/_build/" in (ROOT / ".gitignore").read_text().splitlines()


@pytest.mark.slow
def test_site_builds_without_a_warning(tmp_path):
    for module in ("sphinx", "myst_parser"):
        pytest.importorskip(module, reason=f'{module} is not installed (pip install ".[docs]")')
    start = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html", str(DOCS), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    elapsed = time.perf_counter() - start
    assert r.returncode == 0, f"sphinx failed after {elapsed:.0f} s:\n{r.stderr[-6000:]}"
    print(f"docs built in {elapsed:.1f} s")
    for page in ("index", "architecture", "api/index", "api/hamjax", "api/prune", "api/search"):
        assert (tmp_path / f"{page}.html").is_file(), page
    contract = (tmp_path / "api" / "hamjax.html").read_text()
    contract_names = set(hamjax.__all__) - set(_namespaces()) - {"__version__"}
    assert {"functional", "linen_functional", "Transform", "chain", "identity", "fit", "TrainConfig"} <= contract_names
    for name in contract_names:
        assert f'id="hamjax.{name}"' in contract, f"hamjax.{name} is not on the API page"
