"""Without the extra ``tether[otel]``: Tether works as before, and says what to install when
asked to trace. Each test runs Python with OpenTelemetry made unimportable, as on a machine
where the extra was never installed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from bench.cluster import ROOT
from tests.helpers.waiting import bound

#: Makes ``import opentelemetry...`` fail, as when the package is not installed.
BLOCK = textwrap.dedent("""
    import sys

    class NoOpenTelemetry:
        def find_spec(self, name, path=None, target=None):
            if name == "opentelemetry" or name.startswith("opentelemetry."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoOpenTelemetry())
""")

RUN = BLOCK + textwrap.dedent("""
    import asyncio, json, urllib.request
    from gateway.app import Gateway
    from gateway.config import Settings
    from worker import App, Event, TriggerEvent, Worker

    app = App("t")

    @app.function(id="f", trigger=TriggerEvent("t/f"))
    async def f(ctx):
        return await ctx.step.run("one", lambda: 1)

    def http(url, body=None, headers=None):  # blocking: called on a thread
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, headers=headers or {},
                                         method="GET" if body is None else "POST")
        return json.loads(urllib.request.urlopen(request, timeout=10).read())

    async def main():
        gateway = Gateway(Settings(host="127.0.0.1", port=0, connect_port=0, dev=True,
                                   db=sys.argv[1]))
        await gateway.start()
        api = f"http://127.0.0.1:{gateway.http_port}"
        worker = Worker([app], gateways=[f"ws://127.0.0.1:{gateway.connect_port}/connect"])
        task = asyncio.create_task(worker.run())
        await worker.link.connected.wait()
        (sent,) = await app.send(Event("t/f"), api_url=api)
        (traced,) = (await asyncio.to_thread(http, f"{api}/e/dev", {"name": "t/f"}, {
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}))["ids"]
        for event_id in (sent, traced):
            for _ in range(500):
                runs = (await asyncio.to_thread(http, f"{api}/v1/events/{event_id}/runs"))["data"]
                if runs and runs[0]["status"] == "Completed":
                    break
                await asyncio.sleep(0.02)
            else:
                raise SystemExit(f"the run of {event_id} did not complete: {runs}")
        await worker.drain()
        await task
        await gateway.stop()
        print("COMPLETED", sorted(m for m in sys.modules if m.startswith("opentelemetry")))

    asyncio.run(main())
""")


def _python(code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=bound(60), env={"PYTHONPATH": str(ROOT),
                                                             "PATH": "/usr/bin:/bin"})


def test_runs_complete_and_opentelemetry_is_never_imported(tmp_path: Path) -> None:
    result = _python(RUN, f"sqlite:///{tmp_path / 'tether.db'}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "COMPLETED []" in result.stdout, result.stdout + result.stderr


def test_asking_for_traces_without_the_extra_says_what_to_install(tmp_path: Path) -> None:
    for module in ("gateway", "worker"):
        args = (["--dev", "--db", f"sqlite:///{tmp_path / 'tether.db'}", "--port", "0",
                 "--connect-port", "0"] if module == "gateway" else ["x:app"])
        code = BLOCK + f"import runpy; sys.argv = ['{module}', *sys.argv[1:]]; " \
            f"runpy.run_module('{module}', run_name='__main__')"
        result = _python(code, *args, "--traces", "otlp", cwd=tmp_path)
        assert result.returncode != 0, (module, result.stdout, result.stderr)
        assert "pip install 'tether[otel]'" in result.stderr, (module, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
