import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from hamjax import cli, cli_serve


def _args(*argv):
    return cli.build_parser().parse_args(["serve", *argv])


def test_options_become_a_config(tmp_path):
    args = _args(
        "a.onnx",
        "--variant",
        "b=b.onnx",
        "--split",
        "default=3",
        "--split",
        "b=1",
        "--port",
        "9001",
        "--max-batch",
        "16",
        "--max-queue",
        "64",
        "--cache-size",
        "10",
        "--threads",
        "2",
        "--state-dir",
        str(tmp_path),
    )
    config = cli_serve.config_from_args(args)
    assert config.models == {"default": "a.onnx", "b": "b.onnx"} and config.split == {"default": 3.0, "b": 1.0}
    assert (config.port, config.max_batch, config.max_queue, config.cache_size, config.threads) == (9001, 16, 64, 10, 2)
    assert config.token is None and config.state_dir == str(tmp_path)


def test_the_token_comes_from_a_variable_or_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SERVE_TOKEN", "from-env")
    assert cli_serve.config_from_args(_args("m.onnx", "--token-env", "SERVE_TOKEN")).token == "from-env"
    secret = tmp_path / "token"
    secret.write_text("from-file\n")
    assert (
        cli_serve.config_from_args(_args("m.onnx", "--host", "0.0.0.0", "--token-file", str(secret))).token
        == "from-file"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--variant", "a=x.onnx", "--variant", "a=y.onnx"], "the variant 'a' is given twice"),
        ([], "give MODEL or at least one --variant"),
        (["m.onnx", "--host", "0.0.0.0"], "not loopback; give a bearer token"),
        (["m.onnx", "--token-env", "HAMJAX_SURELY_UNSET"], "the environment variable is unset or empty"),
        (["m.onnx", "--token-file", "/nonexistent/token"], "--token-file /nonexistent/token: cannot read it"),
        (["m.onnx", "--max-batch", "0"], "max_batch must be"),
    ],
)
def test_bad_options_exit_2_with_one_line(argv, message, capsys):
    assert cli.main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hamjax serve: error: ") and message in err and err.count("\n") == 1


def test_a_bad_model_exits_2_before_binding(tmp_path, capsys):
    bad = tmp_path / "model.onnx"
    bad.write_text("not onnx")
    port = _free_port()
    assert cli.main(["serve", str(bad), "--port", str(port)]) == 2
    assert "is not a model onnxruntime can run" in capsys.readouterr().err
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # nothing was listening there


def test_malformed_pairs_are_parse_errors(capsys):
    with pytest.raises(SystemExit):
        _args("m.onnx", "--split", "b=heavy")
    assert "is not a float" in capsys.readouterr().err


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port, x, timeout=10.0):
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/predict",
        data=json.dumps({"inputs": x}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, ConnectionError):
        return "refused"


@pytest.mark.slow
def test_sigterm_answers_every_accepted_request(linear_onnx, tmp_path):
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "hamjax.cli", "serve", str(linear_onnx[0]), "--port", str(port)]
    # A long batching wait keeps the accepted requests in flight when SIGTERM arrives.
    command += ["--max-batch", "64", "--max-wait-ms", "400", "--max-queue", "1024"]
    with open(tmp_path / "server.log", "w+") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            accepted, later = _load_and_terminate(server, port)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
        log.seek(0)
        lines = [json.loads(line) for line in log if line.startswith("{")]
    assert accepted == [200] * 24
    assert all(code in (503, "refused") for code in later), later
    predicted = [line for line in lines if line.get("message") == "predict"]
    assert sum(line["status"] == 200 for line in predicted) == 24
    assert any(line.get("message") == "drained" for line in lines)


def _load_and_terminate(server, port):
    """Wait for ready, send 24 concurrent requests, SIGTERM while they wait in the batcher, then 3 more."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    break
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    else:
        raise AssertionError("the server never became ready")
    accepted = []
    threads = [
        threading.Thread(target=lambda i=i: accepted.append(_post(port, [[float(i), 1.0, 2.0, 3.0]])))
        for i in range(24)
    ]
    for t in threads:
        t.start()
    time.sleep(0.2)  # all 24 are read and waiting in the batcher
    server.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    later = [_post(port, [[1.0, 1.0, 1.0, 1.0]], timeout=5) for _ in range(3)]
    for t in threads:
        t.join(30)
    server.wait(30)
    return accepted, later
