"""README's code blocks work as written, so a newcomer's first hour does not end in an error.

Python blocks are files: each starts with ``# NAME.py`` (or ``# not run: why`` for a snippet
shown only to read). They are written to a directory as those files, imported, and the test
file among them runs under pytest as a user would run it. Shell blocks are checked command by
command: modules, sub-commands and flags must exist (their ``--help`` says so), ``dev.py``
commands must exist, ``curl`` bodies must be events, and the ``MODULE:APP`` a worker is given
must name an App of a README file. The quick start also runs end to end, with real processes.
"""

from __future__ import annotations

import ast
import functools
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.cluster import ROOT, Cluster
from tests.helpers.waiting import bound, wait_until
from worker import App

README = ROOT / "README.md"
NOT_RUN = "# not run:"
PYTHONS = ("python", "python3", ".venv/bin/python")
#: Commands a README shell block may use besides Python ones: they are the user's own tools.
OTHER_TOOLS = {"curl", "source", "pip", "pytest"}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int  # of the opening fence, for messages
    heading: str

    @property
    def where(self) -> str:
        return f"README.md:{self.line} (under {self.heading!r})"

    @property
    def filename(self) -> str | None:
        first = self.text.split("\n", 1)[0].strip()
        match = re.fullmatch(r"#\s*([\w-]+\.py)", first)
        return match.group(1) if match else None


def readme_blocks() -> list[Block]:
    out: list[Block] = []
    heading, lang, start = "", None, 0
    body: list[str] = []
    for number, line in enumerate(README.read_text().splitlines(), 1):
        if lang is None:
            if line.startswith("#"):
                heading = line.lstrip("#").strip()
            elif line.startswith("```"):
                lang, start, body = line[3:].strip() or "text", number, []
        elif line.startswith("```"):
            out.append(Block(lang, "\n".join(body) + "\n", start, heading))
            lang = None
        else:
            body.append(line)
    assert lang is None, f"README.md:{start}: a code block is never closed"
    return out


def python_files() -> dict[str, Block]:
    files = {}
    for block in readme_blocks():
        if block.lang == "python" and not block.text.startswith(NOT_RUN):
            assert block.filename, (
                f"{block.where}: a python block starts with '# NAME.py' (it is run as that file)"
                f" or '{NOT_RUN} why' (it is only shown)")
            assert block.filename not in files, f"{block.where}: {block.filename} twice"
            files[block.filename] = block
    return files


def config_files() -> dict[str, Block]:
    """The configuration files README shows (``toml`` blocks starting with ``# NAME``)."""
    files = {}
    for block in readme_blocks():
        if block.lang == "toml":
            name = block.text.split("\n", 1)[0].lstrip("# ").strip()
            assert re.fullmatch(r"[\w.-]+\.toml", name), f"{block.where}: start with # NAME.toml"
            files[name] = block
    return files


@pytest.fixture
def readme_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """README's python files, written out and importable (fresh modules for each test)."""
    files = python_files()
    for name, block in {**files, **config_files()}.items():
        (tmp_path / name).write_text(block.text)
        sys.modules.pop(name[:-3], None)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in files:
        sys.modules.pop(name[:-3], None)


# --- python blocks -------------------------------------------------------------------------


def test_readme_has_the_files_this_test_expects() -> None:
    assert {"myapp.py", "shop.py", "test_shop.py"} <= set(python_files())


@pytest.mark.parametrize("name", sorted(python_files()))
def test_python_blocks_use_what_they_import(name: str) -> None:
    block = python_files()[name]
    tree = ast.parse(block.text, filename=name)
    imported = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                imported[(alias.asname or alias.name).split(".")[0]] = node.lineno
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    unused = sorted(set(imported) - used)
    assert not unused, f"{block.where}: {name} imports {unused} without using them"


def test_quick_start_module_declares_its_function(readme_dir: Path) -> None:
    myapp = importlib.import_module("myapp")
    assert isinstance(myapp.app, App) and myapp.app.id == "shop"
    assert set(myapp.app.functions) == {"sync-systems"}
    assert myapp.app.functions["sync-systems"].config.retries == 4


def test_writing_functions_module_declares_every_function_it_uses(readme_dir: Path) -> None:
    shop = importlib.import_module("shop")
    assert set(shop.app.functions) == {"fulfil", "fulfil-failure"}
    assert set(shop.billing.functions) == {"make-invoice"}
    # the function fulfil invokes by its full id is declared under that id
    invoked = re.findall(r'function="([^"]+)"', python_files()["shop.py"].text)
    assert invoked == [f"{shop.billing.id}/make-invoice"]


def test_testing_block_passes_under_pytest(readme_dir: Path) -> None:
    # As a user runs it: in their project, with README's pyproject.toml and none of ours.
    assert "pyproject.toml" in config_files()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_shop.py"],
        cwd=readme_dir, capture_output=True, text=True, timeout=bound(120),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "2 passed" in done.stdout, output
    assert "warning" not in output.lower(), output


# --- shell blocks --------------------------------------------------------------------------


@functools.cache
def help_text(*argv: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *argv, "--help"], cwd=ROOT, capture_output=True, text=True,
        timeout=bound(60), env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"},
    )
    assert done.returncode == 0, f"python -m {' '.join(argv)} --help failed:\n{done.stderr}"
    return done.stdout


def help_flags(*argv: str) -> set[str]:
    """The options in the usage line of ``python -m ARGV --help`` (its first paragraph)."""
    usage = help_text(*argv).split("\n\n", 1)[0]
    return set(FLAG.findall(usage)) - {"--help"}


def dev_commands() -> set[str]:
    doc = (ROOT / "dev.py").read_text()
    return set(re.findall(r"python3 dev\.py (\w+)", doc))


def shell_commands(block: Block) -> list[list[str]]:
    """The block's commands, continuation lines joined and comments dropped."""
    out, pending = [], ""
    for raw in block.text.splitlines():
        line = (pending + " " + raw.strip()) if pending else raw.strip()
        if line.endswith("\\"):
            pending = line[:-1]
            continue
        pending = ""
        if line and not line.startswith("#"):
            out.append(shlex.split(line, comments=True))
    return out


def check_module_command(argv: list[str], where: str) -> None:
    """``python -m MODULE [SUB] ...``: the module, sub-command and every flag exist."""
    module, rest = argv[0], argv[1:]
    if module == "bench" and rest and not rest[0].startswith("-"):
        sub, rest = rest[0], rest[1:]
        assert sub in help_text("bench"), f"{where}: python -m bench has no {sub!r}"
        flags = help_flags("bench", sub) if sub != "all" else set()
    elif module == "gateway" and rest and rest[0] in ("migrate", "keys", "send"):
        sub, rest = rest[0], rest[1:]
        assert f"'{sub}'" in help_text("gateway"), f"{where}: gateway has no {sub!r}"
        flags = help_flags("gateway", sub) if sub == "send" else help_flags("gateway")
    else:
        assert module in ("gateway", "worker"), f"{where}: unknown module {module!r}"
        flags = help_flags(module)
    given = set(FLAG.findall(" ".join(rest)))
    assert given <= flags, f"{where}: python -m {module} has no {sorted(given - flags)}"
    if module == "worker":
        for spec in (a for a in rest if ":" in a and not a.startswith(("-", "ws:"))):
            check_app_spec(spec, where)


def check_app_spec(spec: str, where: str) -> None:
    """A ``MODULE:APP`` the README serves is an App of one of its files."""
    name, attr = spec.split(":", 1)
    block = python_files().get(f"{name}.py")
    assert block is not None, f"{where}: the worker serves {spec}, no README file {name}.py"
    assert re.search(rf"^{attr} = App\(", block.text, re.M), \
        f"{where}: {name}.py has no App named {attr!r}"


def check_curl(argv: list[str], where: str) -> None:
    if "-d" in argv:
        body = json.loads(argv[argv.index("-d") + 1])
        events = body if isinstance(body, list) else [body]
        assert all(isinstance(e.get("name"), str) for e in events), f"{where}: not an event"


def shell_blocks() -> list[Block]:
    return [b for b in readme_blocks() if b.lang in ("sh", "bash", "shell")]


@pytest.mark.parametrize("block", shell_blocks(), ids=lambda b: f"line{b.line}")
def test_shell_commands_exist(block: Block) -> None:
    for argv in shell_commands(block):
        where = f"{block.where}: {shlex.join(argv)}"
        if argv[0] in PYTHONS and argv[1] == "-m":
            check_module_command(argv[2:], where)
        elif argv[0] in PYTHONS and argv[1] == "dev.py":
            assert argv[2] in dev_commands(), f"{where}: dev.py has no {argv[2]!r}"
            if argv[2] in ("gateway", "worker", "bench"):
                check_module_command(argv[2:], where)
        elif argv[0] == "curl":
            check_curl(argv, where)
        else:
            assert argv[0] in OTHER_TOOLS, f"{where}: unknown command (teach this test it)"


def synopsis() -> dict[str, str]:
    """The ``Command lines`` block: each command line with its continuation lines."""
    (block,) = [b for b in readme_blocks() if b.heading == "Command lines" and b.lang == "text"]
    commands: dict[str, str] = {}
    key = ""
    for line in block.text.splitlines():
        text = line.split(" # ", 1)[0]
        if text.startswith("python -m "):
            words = text.split()
            key = " ".join(words[2:4] if words[3] in ("migrate", "keys", "send")
                           else words[2:3])
            commands[key] = text
        elif line.startswith(" ") and key:
            commands[key] += " " + text
    return commands


def test_command_synopsis_lists_every_flag_and_only_real_ones() -> None:
    commands = synopsis()
    assert set(commands) == {"gateway", "gateway migrate", "gateway keys", "gateway send",
                             "worker"}
    for module in ("gateway", "worker", "gateway send"):
        shown = set(FLAG.findall(commands[module]))
        real = help_flags(*module.split())
        assert shown == real, (f"README's synopsis of python -m {module}: missing "
                               f"{sorted(real - shown)}, unknown {sorted(shown - real)}")
    assert set(FLAG.findall(commands["gateway migrate"])) <= help_flags("gateway")


# --- the quick start, end to end ------------------------------------------------------------


@pytest.mark.e2e
def test_quick_start_runs_end_to_end(tmp_path: Path) -> None:
    """myapp.py served by a worker, the README's curl commands against a --dev gateway."""
    (start,) = [b for b in shell_blocks() if "curl" in b.text and b.heading == "Quick start"]
    commands = shell_commands(start)
    (worker_cmd,) = [c for c in commands if "worker" in c]
    post, get = [c for c in commands if c[0] == "curl"]
    cluster = Cluster(tmp_path / "quickstart", gateway_args=["--log-format", "json"])
    (cluster.workdir / "myapp.py").write_text(python_files()["myapp.py"].text)
    try:
        cluster.start_gateway()
        cluster.start_worker(worker_cmd[-1])

        def run_curl(argv: list[str]) -> Any:
            argv = [a.replace("localhost:8288", f"127.0.0.1:{cluster.http_port}") for a in argv]
            done = subprocess.run(["curl", "-sS", *argv[1:]], capture_output=True, text=True,
                                  timeout=bound(30))
            assert done.returncode == 0, done.stderr
            return json.loads(done.stdout)

        wait_until(lambda: cluster.get("/v1/workers")["data"], what="the worker to connect")
        (event_id,) = run_curl(post)["ids"]
        get = [a.replace("EVENT_ID", event_id) for a in get]

        def completed() -> Any:
            runs = run_curl(get)["data"]
            return runs if runs and runs[0]["status"] in ("Completed", "Failed") else None

        try:
            (run,) = wait_until(completed, timeout=30, what="the quick start's run to end")
        except AssertionError as exc:
            logs = "\n".join(p.log() for p in (cluster.gateway, *cluster.workers) if p)
            raise AssertionError(f"{exc}\n{logs}") from None
        assert run["status"] == "Completed", run
        assert run["output"] == {"saved": 3}
        assert '"output": {"saved": 3}' in README.read_text()  # what README says it shows
    finally:
        cluster.stop()
