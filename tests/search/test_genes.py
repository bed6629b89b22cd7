"""Genes: Int, Float and Choice, and the check every Space runs on them."""

import numpy as np
import pytest

from hamjax.search import evolution, space
from hamjax.search.genes import Choice, Float, Int, check_gene


def test_genes_have_one_definition_reexported_by_space_and_evolution():
    assert (space.Int, space.Float, space.Choice) == (Int, Float, Choice)
    assert (evolution.Int, evolution.Float, evolution.Choice) == (Int, Float, Choice)


def test_check_gene_returns_plain_python_bounds():
    checked = check_gene("n", Int(np.int64(2), np.int32(9)))
    assert checked == Int(2, 9) and type(checked.low) is int and type(checked.high) is int
    checked = check_gene("x", Float(np.float32(0.5), 2, log=np.bool_(True)))
    assert checked == Float(0.5, 2.0, True) and type(checked.high) is float and checked.log is True
    assert check_gene("act", Choice(["a", "b"])).options == ("a", "b")


@pytest.mark.parametrize(
    ("gene", "match"),
    [
        (Int(True, 3), "gene 'g': low must be an int within int32, got True"),
        (Int(0, 2**31), "gene 'g': high must be an int within int32"),
        (Float(0.0, np.nan), "gene 'g': high must be a finite number within float32, got nan"),
        (Float(1.0, 0.0), r"gene 'g': low must be <= high, got low=1.0, high=0.0"),
        (Choice(()), "gene 'g': Choice needs a non-empty tuple of options"),
        ("relu", "gene 'g': expected Int, Float or Choice, got 'relu'"),
    ],
)
def test_check_gene_names_the_gene_and_the_problem(gene, match):
    with pytest.raises(ValueError, match=match):
        check_gene("g", gene)
