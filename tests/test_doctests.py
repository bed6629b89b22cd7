"""Every docstring example of the installed hamjax package runs, one test per module.

The modules are found by walking the imported package (``pkgutil.walk_packages``),
not the source folder, so CI checks the examples of the wheel it installed. They
run under the strict settings of ``conftest.py`` (rank promotion raises, dtype
promotion is strict). Examples that train for more than a second or need a
backend that is not installed here (TensorRT) carry ``# doctest: +SKIP``.
"""

import doctest
import importlib
import pkgutil

import pytest

import hamjax

MODULES = ["hamjax", *sorted(m.name for m in pkgutil.walk_packages(hamjax.__path__, prefix="hamjax."))]
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def test_the_walk_finds_the_families_and_their_modules():
    for name in ("hamjax.prune.masks", "hamjax.quant.numerics", "hamjax.jaxpr", "hamjax.recipes.steps"):
        assert name in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    # A docstring belongs to the module that defines it: re-exports are not run twice.
    tests = doctest.DocTestFinder().find(module, name)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report = []
    for test in sorted(tests, key=lambda t: t.name):
        runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}:\n" + "".join(report)
