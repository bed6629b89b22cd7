"""Sphinx configuration: the API reference from the docstrings, and docs/*.md pages through MyST.

Build: ``pip install ".[docs]" && python -m sphinx -W docs docs/_build``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import ClassVar

from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from sphinx.util.parsing import nested_parse_to_nodes

ROOT = Path(__file__).resolve().parent.parent
# Document the checkout this file sits in, not whichever hamjax is installed.
sys.path.insert(0, str(ROOT))

project = "hamjax"
author = "The hamjax developers"
copyright = "2026, The hamjax developers"
release = importlib.import_module("hamjax").__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Google-style docstrings. An "Attributes:" section becomes :ivar: fields, so a class whose
# fields autodoc also documents (dataclasses, NamedTuples) does not describe them twice.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True

# Members in the order of the package's __all__, signatures without the type noise
# (the types are in each docstring's Args).
autodoc_member_order = "bysource"
autodoc_typehints = "none"
autodoc_preserve_defaults = True

myst_heading_anchors = 3

html_theme = "furo" if importlib.util.find_spec("furo") else "alabaster"
html_title = f"hamjax {release}"
html_static_path: list[str] = []


def _documented(module):
    """The public ``(name, object)`` pairs ``automodule :members:`` describes (``__all__`` when defined)."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n, obj in vars(module).items() if getattr(obj, "__module__", None) == module.__name__]
    return [
        (n, getattr(module, n))
        for n in names
        if not n.startswith("_") and not isinstance(getattr(module, n), ModuleType)
    ]


class PackageAPI(SphinxDirective):
    """``.. package-api:: hamjax.search``: a package's ``__all__``, and every submodule it names.

    A package that re-exports names gets them documented under the package; a
    package whose ``__all__`` names submodules (``hamjax.search.population``)
    gets one section per submodule. Module files that ``__all__`` does not
    name are implementation detail and are not listed, so moving code between
    them never breaks the reference. The top-level ``hamjax`` page passes
    ``:no-submodules:``: every family has a page of its own. ``:also:`` names
    public submodules that the package leaves out of ``__all__`` because they
    are imported on their own (``hamjax.search.engine``).
    """

    required_arguments = 1
    option_spec: ClassVar = {"no-submodules": directives.flag, "also": directives.unchanged}

    def run(self):
        name = self.arguments[0]
        try:
            package = importlib.import_module(name)
        except ImportError as exc:
            raise self.error(f"package-api: cannot import {name}: {exc}") from exc
        lines = [f".. automodule:: {name}", "   :members:", ""]
        subs = []
        if "no-submodules" not in self.options:
            subs = [
                f"{name}.{a}" for a in getattr(package, "__all__", ()) if isinstance(getattr(package, a), ModuleType)
            ]
            subs += [f"{name}.{a}" for a in self.options.get("also", "").split()]
        # Each class or function is described once on a page: under the package when it
        # re-exports it, else under the listed submodule that defines it, else under the first
        # listed submodule that re-exports it.
        seen = {id(obj) for _, obj in _documented(package) if callable(obj)}
        for sub in dict.fromkeys(subs):
            title = f"``{sub}``"
            lines += [title, "-" * len(title), "", f".. automodule:: {sub}", "   :members:"]
            twice = []
            for n, obj in _documented(importlib.import_module(sub)):
                if not callable(obj):
                    continue
                if id(obj) in seen or getattr(obj, "__module__", sub) in set(subs) - {sub}:
                    twice.append(n)
                else:
                    seen.add(id(obj))
            if twice:
                lines.append(f"   :exclude-members: {', '.join(sorted(twice))}")
            lines.append("")
        content = StringList(lines, source=f"<package-api {name}>")
        return nested_parse_to_nodes(self.state, content, allow_section_headings=True)


def _skip_namedtuple_aliases(app, what, name, obj, skip, options):
    """NamedTuple fields carry the docstring "Alias for field number N"; their class documents them."""
    doc = getattr(obj, "__doc__", None) or ""
    if what == "class" and doc.startswith("Alias for field number"):
        return True
    return None


def setup(app):
    app.add_directive("package-api", PackageAPI)
    app.connect("autodoc-skip-member", _skip_namedtuple_aliases)
