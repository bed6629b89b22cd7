import dataclasses
import importlib.util

import pytest

from hamjax import cli, cli_search


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"hamjax {command}: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["search", "--objectives", "accuracy,flops"], "objective 'flops' is not one of"),
        (["search", "--objectives", "params,latency"], "objectives must include 'accuracy'"),
        (["search", "--selection", "nsga"], "invalid choice: 'nsga'"),
        (["search", "--sampler", "cmaes"], "invalid choice: 'cmaes'"),
    ],
)
def test_bad_search_arguments_are_one_line(argv, match, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err


def test_search_passes_objectives_selection_and_sampler(tmp_path, monkeypatch, capsys):
    from hamjax.search import engine

    seen = []

    def run(supernet, dataset, config, **kw):
        seen.append(config)
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "run", run)
    argv = ["search", "--data", "digits", "--out", str(tmp_path), "--quiet", "--objectives", "latency,accuracy"]
    assert cli.main([*argv, "--selection", "pareto", "--sampler", "gp"]) == 130
    assert seen[0].objectives == ("accuracy", "latency") and (seen[0].selection, seen[0].sampler) == ("pareto", "gp")
    assert "interrupted" in capsys.readouterr().err
    if importlib.util.find_spec("torch") is None:  # the Bayesian method refuses the GP sampler before any data
        assert cli.main(["search", "--method", "bayesian", "--sampler", "gp", "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert "needs torch" in err and "\n" not in err and len(seen) == 1


def test_search_tables_show_latency_when_measured(capsys):
    from hamjax.search import engine

    c = engine.Candidate(0, {}, 0.5, 1234, "depth 1: dense/8/relu")
    cli_search.print_candidates("t", [c])
    assert "latency" not in capsys.readouterr().out
    cli_search.print_candidates("t", [c, dataclasses.replace(c, latency_ms=0.123)])
    out = capsys.readouterr().out
    assert "latency p50 @1 (ms)" in out and "0.123" in out


def test_search_refuses_an_out_that_is_a_file_before_searching(tmp_path, monkeypatch, capsys):
    from hamjax.search import engine

    def run(*args, **kwargs):
        raise AssertionError("searched before refusing --out")

    monkeypatch.setattr(engine, "run", run)
    out = tmp_path / "search"
    out.write_text("x")
    assert cli.main(["search", "--data", "digits", "--out", str(out), "--quiet"]) == 2
    assert f"--out must be a directory, got the regular file '{out}'" in _one_line_error(capsys, "search")
