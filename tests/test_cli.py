"""The natsmesh command line, run as a user runs it: a real process against a real server."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from procs import TESTS, Proc
from services import Echo

from natsmesh import Mesh, ServiceRunner
from natsmesh.control._controller import Controller
from natsmesh.testing import free_port

pytestmark = pytest.mark.anyio


def natsmesh(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "natsmesh", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(TESTS), **(env or {})},
    )


async def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return await anyio.to_thread.run_sync(lambda: natsmesh(*args, env=env))


async def test_call_prints_the_reply_as_json(nats_url: str) -> None:
    async with ServiceRunner(Echo, nats=nats_url):
        done = await run("call", "echo.echo", '{"id": 1, "name": "a"}', "--nats", nats_url)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"id": 1, "name": "a"}
        # NATS_URL is honoured when --nats is absent
        done = await run("call", "echo.whoami", env={"NATS_URL": nats_url})
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["caller"] == "natsmesh-cli"
        done = await run("call", "echo.slow", "{}", "-H", "x-instance=abc", "--nats", nats_url)
        assert json.loads(done.stdout)["instance"] == "abc"


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["call", "nobody.here"], 3, "no responders"),
        (["call", "echo.echo", '{"id": "x"}'], 5, "422"),
        (
            ["call", "echo.echo", "{not json"],
            2,
            "not valid: key must be a string at line 1 column 2",
        ),
        (["call", "echo.echo", '{"id": 1,\n "name": }'], 2, "at line 2 column 10"),
        (["call", "echo.echo", "[" * 100_000], 2, "nested deeper than 64 levels"),
        (["call", "echo.slow", '{"seconds": 5}', "--timeout", "0.3"], 4, "deadline"),
        (["call", "echo.nothing", "{}"], 5, "404"),
        (["call", "ec*ho.echo"], 2, "invalid service name"),
        (["call", "echo.ec*ho"], 2, "invalid endpoint name"),
        (["call", "echo.echo", "{}", "-H", "bad header=1"], 2, "invalid header name"),
        (["call", "echo.echo", "{}", "-H", "noequals"], 2, "expected 'KEY: VALUE' or KEY=VALUE"),
        (["call", "echo.echo", "{}", "-H", ": empty name"], 2, "expected 'KEY: VALUE'"),
        (["call", "echo.echo", "{}", "-H", "x-a: b\r\nx-b: c"], 2, "must not contain CR"),
        (["call", "echo.echo", "{}", "-H", "Mesh-Budget-Ms=99999"], 2, "set by the mesh"),
        (["call", "echo.echo", "{}", "-H", "Mesh-Budget-Ms: 99999"], 2, "set by the mesh"),
        (["call", "echo.echo", "--timeout", "-1"], 2, "expected seconds"),
        (["call", "echo.echo", "--connect-timeout", "0"], 2, "expected seconds"),
        (["info", "bad.name"], 2, "invalid service name"),
        (["routes", "apply"], 2, "the following arguments are required: FILE"),
        (["routes", "apply", "/nonexistent/routes.toml"], 2, "No such file or directory"),
        (["routes", "show", "a.b"], 2, "invalid service name"),
        (["serve", "nocolon"], 1, "MODULE:ATTR"),
        (["serve", "no_such_module_xyz:Svc"], 1, "cannot import"),
        (["serve", "services:Item"], 1, "not a @service"),
        (["serve", "services:Echo", "--instances", "0"], 2, "within 1..1024"),
        (["serve", "services:Echo", "--workers", "0"], 2, "within 1..1024"),
    ],
)
async def test_failures_are_one_line_and_a_nonzero_exit(
    nats_url: str, args: list[str], code: int, needle: str
) -> None:
    async with ServiceRunner(Echo, nats=nats_url):
        done = await run(*args, "--nats", nats_url)
    assert done.returncode == code, (done.stdout, done.stderr)
    assert needle in done.stderr
    if "usage:" not in done.stderr:  # argparse prints its usage; everything else is one line
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr


async def test_a_header_is_given_as_curl_or_as_key_equals_value(nats_url: str) -> None:
    async with ServiceRunner(Echo, nats=nats_url):
        for form in ("x-instance: abc", "x-instance:abc", "x-instance=abc"):
            done = await run("call", "echo.slow", "{}", "-H", form, "--nats", nats_url)
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["instance"] == "abc", form
        # The first "=" or ":" ends the name; the rest is the value, colons included.
        done = await run("call", "echo.slow", "{}", "-H", "x-instance=a: b", "--nats", nats_url)
        assert json.loads(done.stdout)["instance"] == "a: b"


async def test_a_422_shows_each_field_path_and_reason(nats_url: str) -> None:
    async with ServiceRunner(Echo, nats=nats_url):
        done = await run("call", "echo.echo", '{"id": "x"}', "--nats", nats_url)
    assert done.returncode == 5
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1, line
    assert line.startswith("natsmesh: 422 ")
    assert "id: Input should be a valid integer" in line
    assert "name: Field required" in line


async def test_ls_info_stats(nats_url: str) -> None:
    async with ServiceRunner(Echo, nats=nats_url) as runner:
        await run("call", "echo.echo", '{"id": 2, "name": "b"}', "--nats", nats_url)
        ls = await run("ls", "--nats", nats_url)
        assert runner.id in ls.stdout
        assert "natsmesh" in ls.stdout
        info: list[dict[str, Any]] = json.loads(
            (await run("info", "echo", "--json", "--nats", nats_url)).stdout
        )
        assert info[0]["endpoints"][0]["metadata"]["natsmesh.idempotent"] in {"true", "false"}
        text = (await run("info", "echo", "--nats", nats_url)).stdout
        assert "  echo  " in text
        assert "    request:  {id: integer, name: string}\n" in text
        assert "    response: {instance: string, pid: integer, remaining: number}\n" in text
        assert "    request:  {seconds?: number = 0.0}\n" in text  # slow
        stats = json.loads((await run("stats", "echo", "--json", "--nats", nats_url)).stdout)
        echo = next(e for e in stats[0]["endpoints"] if e["name"] == "echo")
        assert echo["num_requests"] == 1
        table = await run("stats", "echo", "--nats", nats_url)
        assert "REQUESTS" in table.stdout
        assert "in (0 ejections)" in table.stdout  # in its queue group
    missing = await run("info", "ghost", "--nats", nats_url)
    assert missing.returncode == 3
    empty = await run("ls", "--json", "--nats", nats_url)
    assert json.loads(empty.stdout) == []


async def test_nats_command_runs_a_server_in_the_foreground() -> None:
    with Proc("nats", "--port", "0", nats_url="") as proc:
        line = await anyio.to_thread.run_sync(proc.wait_ready)
        url = line.split(" at ")[1].split()[0]
        assert url.startswith("nats://127.0.0.1:")
        assert f"(in other shells: export NATS_URL={url})" in line  # not the usual port
        async with ServiceRunner(Echo, nats=url):
            done = await run("call", "echo.echo", '{"id": 3, "name": "c"}', "--nats", url)
            assert done.returncode == 0
        proc.signal(signal.SIGTERM)
        assert await anyio.to_thread.run_sync(proc.popen.wait, 20) == 0


# -- the event loop -------------------------------------------------------------------------

LOOP_LINE = "natsmesh.loop: event loop: "


async def _loop_line(proc: Proc) -> str:
    lines = await proc.says(LOOP_LINE)
    return lines[0].split(LOOP_LINE)[1].strip()


@pytest.mark.parametrize(
    ("command", "loop", "expected"),
    [
        (["serve", "services:Echo"], None, "uvloop"),
        (["serve", "services:Echo"], "asyncio", "asyncio"),
        (["controller"], "asyncio", "asyncio"),
        (["controller"], "uvloop", "uvloop"),
        (["gateway", "--port", "0"], None, "uvloop"),
        (["gateway", "--port", "0"], "asyncio", "asyncio"),
        (["up"], "asyncio", "asyncio"),
    ],
)
async def test_long_running_commands_run_on_the_loop_asked_for(
    nats_url: str, command: list[str], loop: str | None, expected: str
) -> None:
    args = ["-v", *command, *(["--loop", loop] if loop else [])]
    if command[0] == "up":
        args += ["--port", str(free_port())]  # not 8080: it may be taken
    with Proc(*args, nats_url=nats_url) as proc:
        await anyio.to_thread.run_sync(lambda: proc.wait_ready(60))
        assert (await _loop_line(proc)).split()[0] == expected


async def test_loop_uvloop_without_uvloop_is_one_line() -> None:
    # `import uvloop` fails as where it has no wheels (Windows, PyPy).
    code = "import sys; sys.modules['uvloop'] = None; from natsmesh.cli._main import main; main()"
    for command in (["serve", "services:Echo"], ["gateway"], ["bench"]):
        done = await anyio.to_thread.run_sync(
            lambda c=command: subprocess.run(
                [
                    sys.executable,
                    "-c",
                    code,
                    *c,
                    "--loop",
                    "uvloop",
                    "--nats",
                    "nats://127.0.0.1:1",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                env={**os.environ, "PYTHONPATH": str(TESTS)},
            )
        )
        assert done.returncode == 1, done.stderr
        assert done.stderr.strip() == (
            "natsmesh: --loop uvloop: uvloop is not installed (it has no wheels for Windows"
            " or PyPy); use --loop asyncio"
        )


async def test_an_unknown_loop_is_a_usage_error() -> None:
    done = await run("serve", "services:Echo", "--loop", "trio")
    assert done.returncode == 2
    assert "invalid choice: 'trio'" in done.stderr


# -- bench ---------------------------------------------------------------------------------

ENVIRONMENT = {"python", "loop", "nats_py", "uvicorn", "nats_server", "cpus"}


def _environment(out: dict[str, Any], *, http: bool = False) -> None:
    env = out["environment"]
    assert set(env) == ENVIRONMENT | ({"http"} if http else set())
    assert env["loop"].startswith("uvloop ")
    assert env["nats_server"].count(".") >= 2
    assert env["cpus"] >= 1
    if http:
        assert env["http"].startswith("httptools ")


async def test_bench_reports_both_sides_and_ratios(nats_url: str) -> None:
    done = await run("bench", "--json", "--seconds", "0.3", "--nats", nats_url)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    _environment(out)
    assert [r["concurrency"] for r in out["ratio"]] == [1, 128]
    for side in ("raw", "mesh", "bare"):
        assert all(f["rps"] > 0 and f["p99_ms"] >= f["p50_ms"] > 0 for f in out[side])


async def test_a_bench_too_short_for_a_call_still_has_figures(nats_url: str) -> None:
    # 0.01 s over 7 rounds of 3 kinds: rounds end before their workers start.
    done = await run("bench", "--seconds", "0.01", "--loop", "asyncio", "--nats", nats_url)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("CPython ") or lines[0].startswith("PyPy ")
    assert "| loop asyncio |" in lines[0]
    assert "HTTP" not in lines[0]  # no HTTP in the data bench
    assert [x.split(":")[0] for x in lines[1:4]] == ["raw", "mesh", "bare"]  # the legend
    assert "mesh/raw 128: throughput" in done.stdout
    assert "raise --seconds" in done.stdout
    # The bars, and only those: throughput at 128, p50 alone at 1.
    ratios = {x.split(":")[0]: x for x in lines if x.startswith("mesh/raw")}
    assert "throughput" in ratios["mesh/raw   1"]
    assert ratios["mesh/raw   1"].count("(bar") == 1
    assert "p50" in ratios["mesh/raw   1"].split("(bar")[0]
    assert ratios["mesh/raw 128"].count("(bar") == 1
    assert ratios["mesh/raw 128"].split("(bar")[0].rstrip().split()[-2] == "throughput"


async def test_bench_control_reports_convergence_and_controller_cost(nats_url: str) -> None:
    done = await run(
        "bench", "control", "--json", "--clients", "3", "--applies", "3",
        "--instances", "50", "--seconds", "2.5", "--nats", nats_url,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    _environment(out)
    convergence, scale = out["convergence"], out["scale"]
    assert convergence["clients"] == 3
    assert convergence["p99_ms"] >= convergence["p50_ms"] >= 0
    assert scale["registered"] == 50
    assert scale["controller_rss_mib"] > 0


async def test_bench_traffic_compares_balancers_against_the_healthy_p99(nats_url: str) -> None:
    done = await run("bench", "traffic", "--json", "--seconds", "0.5", "--nats", nats_url)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    _environment(out)
    for mode in ("healthy", "queue", "p2c", "p2c+hedging"):
        assert out[mode]["calls"] > 0
        assert out[mode]["p99_ms"] >= out[mode]["p50_ms"] > 0
    assert set(out["ratio_to_healthy_p99"]) == {"queue", "p2c", "p2c+hedging"}


@pytest.mark.parametrize(
    "args",
    [
        ["traffic"],
        ["control", "--clients", "2", "--applies", "1", "--instances", "10"],
        ["gateway", "--concurrency", "2", "--load", "builtin"],
    ],
)
async def test_every_bench_survives_a_run_too_short_for_a_call(
    nats_url: str, args: list[str]
) -> None:
    done = await run("bench", *args, "--json", "--seconds", "0.01", "--nats", nats_url)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    out = json.loads(done.stdout)
    _environment(out, http=args[0] == "gateway")
    if args[0] == "gateway":
        assert out["load"] == "builtin"
        assert out["keep_alive"]["gateway"]["mean_ms"] > 0
        assert out["gateway"]["errors"] == 0


async def test_bench_gateway_prints_what_it_ran_on(nats_url: str) -> None:
    done = await run(
        "bench", "gateway", "--seconds", "0.01", "--concurrency", "2", "--load", "builtin",
        "--nats", nats_url,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    header = done.stdout.splitlines()[0]
    for part in ("| loop uvloop ", "| HTTP httptools ", "| nats-py ", "| uvicorn ", "CPUs"):
        assert part in header, header
    assert "one keep-alive connection: mean latency" in done.stdout


def test_stats_show_an_instance_the_controller_took_out_of_its_queue_group() -> None:
    from natsmesh.cli._discover import _queue

    assert _queue({"queue_ejected": 1, "queue_ejections": 2}) == "out (2 ejections)"
    assert _queue({"queue_ejected": 0, "queue_ejections": 2}) == "in (2 ejections)"
    assert _queue({"dropped_expired": 0}) == ""  # a micro service in another language
    assert _queue(None) == ""


GREETER = """
from natsmesh import endpoint, service


@service("greeter", version="1.0.0")
class Greeter:
    @endpoint
    async def hello(self, name: str) -> str:
        return f"hello {name}"
"""


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["in-process", "workers"])
async def test_serve_finds_a_module_in_the_working_directory(
    nats_url: str, tmp_path: Path, workers: list[str]
) -> None:
    (tmp_path / "greeter.py").write_text(GREETER)
    with Proc(
        "serve", "greeter:Greeter", *workers, nats_url=nats_url, cwd=tmp_path, console_script=True
    ) as proc:
        line = await anyio.to_thread.run_sync(proc.wait_ready)
        assert "greeter/" in line, line
        async with Mesh(nats_url, tables=False) as mesh:
            assert await mesh.call("greeter.hello", "ada") == "hello ada"
        assert await anyio.to_thread.run_sync(proc.terminate) == 0


def _codes(text: str) -> dict[int, str]:
    """``{code: first word}`` from prose like "0 success, 1 any other failure, ..."."""
    return {int(code): word for code, word in re.findall(r"\b(\d{1,3}) \(?([a-z]+)", text)}


def test_the_exit_codes_agree_in_help_docstring_and_readme() -> None:
    from natsmesh.cli import _main as _cli
    from natsmesh.cli._exit import EXIT_CODES

    wanted = {code: meaning.split()[0].rstrip(":") for code, meaning in EXIT_CODES.items()}
    shown = natsmesh("--help").stdout
    for code, meaning in EXIT_CODES.items():
        assert f"{code:>3}  {meaning}" in shown
    doc = (_cli.__doc__ or "").split("The exit", 1)[1].split("\n\n", 1)[0]
    assert _codes(" ".join(doc.split())) == wanted
    readme = (TESTS.parent / "README.md").read_text()
    section = readme.split("**Exit codes**", 1)[1].split("\n\n", 1)[0]
    assert _codes(" ".join(section.split()).split("):", 1)[1]) == wanted


@pytest.mark.parametrize(
    "args",
    [
        ["stats", "echo", "--json"],
        ["stats", "echo"],
        ["ls", "--json"],
        ["info", "echo"],
        ["call", "echo.echo", '{"id": 1, "name": "a"}'],
        ["--help"],
    ],
    ids=" ".join,
)
async def test_a_reader_that_went_away_gets_no_error_message(
    nats_url: str, args: list[str]
) -> None:
    # `natsmesh stats orders --json | head`: head exits, our next write fails. Here the
    # pipe's read end is closed before the command starts, so every write fails.
    read, write = os.pipe()
    os.close(read)
    try:
        async with ServiceRunner(Echo, nats=nats_url):
            done = await anyio.to_thread.run_sync(
                lambda: subprocess.run(
                    [sys.executable, "-m", "natsmesh", *args, "--nats", nats_url],
                    stdout=write,
                    stderr=subprocess.PIPE,
                    text=True,
                    timeout=60,
                    check=False,
                    env={**os.environ, "PYTHONPATH": str(TESTS)},
                )
            )
    finally:
        os.close(write)
    assert done.stderr == ""
    assert done.returncode in (0, 141)  # argparse's --help ignores the failed write itself
    if args != ["--help"]:
        assert done.returncode == 141


async def test_a_large_reply_into_a_pipe_closed_midway(nats_url: str) -> None:
    # 100 KB (an argument holds at most 128 KiB): beyond a pipe's 64 KiB buffer.
    payload = json.dumps({"id": 1, "name": "x" * 100_000})
    command = [sys.executable, "-m", "natsmesh", "call", "echo.echo", payload, "--nats", nats_url]

    def read_one_line_and_close() -> tuple[int, bytes]:
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
            assert proc.stdout is not None
            assert proc.stderr is not None
            try:
                assert proc.stdout.readline() == b"{\n"
                proc.stdout.close()  # as `| head -1` does
                return proc.wait(60), proc.stderr.read()
            finally:
                if proc.poll() is None:
                    proc.kill()

    async with ServiceRunner(Echo, nats=nats_url):
        code, errors = await anyio.to_thread.run_sync(read_one_line_and_close)
    assert errors == b""
    assert code == 141


@pytest.mark.parametrize(
    ("source", "error"),
    [("def broken(:\n", "SyntaxError: invalid syntax"), ("raise RuntimeError('boom')\n", "boom")],
    ids=["syntax", "raises"],
)
async def test_a_module_that_fails_to_import_is_one_line_naming_where(
    tmp_path: Path, source: str, error: str
) -> None:
    (tmp_path / "mine.py").write_text(source)
    script = str(Path(sys.executable).parent / "natsmesh")
    done = await anyio.to_thread.run_sync(
        lambda: subprocess.run(
            [script, "serve", "mine:Svc"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=tmp_path,
        )
    )
    assert done.returncode == 1
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1, line
    assert line.startswith("natsmesh: cannot import 'mine': ")
    assert error in line
    assert f"({tmp_path / 'mine.py'}, line 1)" in line


async def test_routes_show_of_a_service_without_a_table_says_so(nats_url: str) -> None:
    async with Controller(nats_url):
        done = await run("routes", "show", "nosuch", "--nats", nats_url)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "nosuch: no route table (its calls get the default policy)\n"


async def test_the_payload_can_come_from_standard_input(nats_url: str) -> None:
    command = [sys.executable, "-m", "natsmesh", "call", "echo.echo", "-", "--nats", nats_url]
    async with ServiceRunner(Echo, nats=nats_url):
        done = await anyio.run_process(command, input=b'{"id": 7, "name": "from stdin"}')
        assert json.loads(done.stdout) == {"id": 7, "name": "from stdin"}
        # Just over the limit: the command reads what it allows and stops.
        too_big = await anyio.run_process(command, input=b" " * ((1 << 20) + 8), check=False)
    assert too_big.returncode == 2
    assert b"larger than 1024 KiB" in too_big.stderr


async def test_up_with_services_of_your_own_applies_no_shop_routes() -> None:
    with Proc(
        "up", "--services", "services:Echo", "--nats-port", "0", "--port", "0", nats_url=""
    ) as proc:
        line = await anyio.to_thread.run_sync(proc.wait_ready, 60)
        assert "services echo@1.0.0 |" in line
        url = line.split("nats ", 1)[1].split()[0]
        shown = await run("routes", "show", "--json", "--nats", url)
        assert json.loads(shown.stdout) == {}  # neither the shop's services nor its HTTP routes
        assert (
            await run("call", "echo.echo", '{"id": 1, "name": "a"}', "--nats", url)
        ).returncode == 0
        assert await anyio.to_thread.run_sync(proc.terminate) == 0


async def test_up_with_a_routes_file_that_is_not_there_is_a_usage_error() -> None:
    done = await run("up", "--routes", "/nonexistent/routes.toml", "--port", "0")
    assert done.returncode == 2
    assert done.stderr == "natsmesh: /nonexistent/routes.toml: No such file or directory\n"


@pytest.mark.parametrize(
    ("content", "reason"),
    [(None, "no such file"), ("[[identity]]\nname = 'a'\nkind = 'robot'\n", "kind")],
    ids=["missing", "invalid"],
)
async def test_the_controller_refuses_a_policy_it_cannot_read(
    nats_url: str, tmp_path: Path, content: str | None, reason: str
) -> None:
    policy = tmp_path / "policy.toml"
    if content is not None:
        policy.write_text(content)
    done = await run("controller", "--policy", str(policy), "--nats", nats_url)
    assert done.returncode == 2, done.stderr
    assert reason in done.stderr


def test_a_long_list_of_unchanged_keys_is_summed_up() -> None:
    from natsmesh.cli._control import some_of

    assert some_of([]) == ""
    assert some_of(["routes.a", "routes.b"]) == "routes.a, routes.b"
    many = [f"routes.s{i}" for i in range(1000)]
    line = some_of(many)
    assert line.startswith("routes.s0, routes.s1, ")
    assert line.endswith(" and 990 more")
    assert "routes.s10," not in line
