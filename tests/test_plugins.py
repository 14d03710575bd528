"""Third-party drivers, really installed: the example package and a broken one built here.

Each package is built by pip (its own ``pyproject.toml``, hatchling) and installed with
``pip install --target`` into a folder of this module's temporary directory. The agent runs
as a subprocess with that folder on ``PYTHONPATH``, where ``importlib.metadata`` finds the
entry points exactly as in site-packages. The shared venv is never changed, so a test run
killed half-way, or a colleague's test run at the same time, never sees a stray or broken
driver, and there is nothing to uninstall.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from importlib.metadata import distributions
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from agent.endpoints import parse_broker_url
from agent.platform.receiver import ReceiverSettings, ReceiverStats, run_receiver
from agent.platform.sink import SqliteSink
from agent.readings import Quality
from tests.conftest import Mosquitto
from tests.test_driver_folders import full_config, missing_files, readme_problems
from tests.waiting import wait_until_async

# the packages installed once per module (pip) stay on one worker
pytestmark = pytest.mark.xdist_group("plugins")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "ssc-driver-example"
EXAMPLE_PACKAGE = EXAMPLE / "src" / "ssc_driver_example"
SSC_AGENT = Path(sys.executable).with_name("ssc-agent")
GW = "gw-plugin"
BROKEN_DIST = "ssc-broken-drivers"
MISSING_MODULE = "ssc_no_such_module_xyz"


def pip_install(source: Path, target: Path) -> None:
    """Build ``source`` and install it, without dependencies, into the folder ``target``."""
    # Offline when the venv has the build backend; else pip fetches hatchling to build.
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("hatchling") else []
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-input", "--quiet",
         "--disable-pip-version-check", "--target", str(target), *isolation, str(source)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, f"pip install {source} failed:\n{done.stdout}\n{done.stderr}"


def installed_version(site: Path, name: str) -> str:
    """The version of distribution ``name`` as installed in ``site``."""
    found = [d.version for d in distributions(path=[str(site)]) if d.metadata["Name"] == name]
    assert found, f"{name} is not installed in {site}"
    return found[0]


def env_with(*sites: Path) -> dict[str, str]:
    """The environment of an agent subprocess that sees the packages installed in ``sites``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(site) for site in sites] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    return env


def ssc_agent(*args: str, sites: tuple[Path, ...]) -> subprocess.CompletedProcess[str]:
    """Run the ``ssc-agent`` console script of this venv with the plugin sites visible."""
    command = [str(SSC_AGENT)] if SSC_AGENT.exists() else [sys.executable, "-m", "agent.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, cwd=ROOT,
                          env=env_with(*sites), timeout=120, check=False)


@pytest.fixture(scope="module")
def example_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example package, built and installed once for this module."""
    site = tmp_path_factory.mktemp("example-site")
    pip_install(EXAMPLE, site)
    return site


BROKEN_PYPROJECT = f"""\
[build-system]
requires = ["hatchling>=1.18"]
build-backend = "hatchling.build"

[project]
name = "{BROKEN_DIST}"
version = "0.0.1"
description = "Three ways for a third-party driver to be broken"

[project.entry-points."ssc_agent.drivers"]
broken_import = "ssc_broken_drivers.missing_dependency:SPEC"
broken_object = "ssc_broken_drivers.not_a_spec:SPEC"
broken_model = "ssc_broken_drivers.bad_model:SPEC"

[tool.hatch.build.targets.wheel]
packages = ["ssc_broken_drivers"]
"""

BROKEN_MODULES = {
    "__init__.py": '"""Broken on purpose."""\n',
    # The everyday failure: the driver needs a library that is not installed.
    "missing_dependency.py": f"import {MISSING_MODULE}  # noqa: F401\n",
    "not_a_spec.py": 'SPEC = {"name": "broken_object", "version": "1"}\n',
    # A DriverSpec whose config model is a dataclass, not a DeviceConfig.
    "bad_model.py": textwrap.dedent("""\
        from dataclasses import dataclass

        from agent.driver import DriverSpec


        @dataclass
        class BadConfig:
            name: str
            driver: str


        def create(config, context):
            raise AssertionError("never built: the config model is broken")


        SPEC = DriverSpec(name="broken_model", version="0.0.1", description="bad config model",
                          config_model=BadConfig, create=create)
    """),
}


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A package of three broken drivers, written, built and installed for this module."""
    source = tmp_path_factory.mktemp("broken-source")
    (source / "pyproject.toml").write_text(BROKEN_PYPROJECT, encoding="utf-8")
    package = source / "ssc_broken_drivers"
    package.mkdir()
    for name, text in BROKEN_MODULES.items():
        (package / name).write_text(text, encoding="utf-8")
    site = tmp_path_factory.mktemp("broken-site")
    pip_install(source, site)
    return site


@pytest.fixture
def example_modules(example_site: Path) -> Iterator[ModuleType]:
    """The installed example's simulator module, imported in this process for one test."""
    sys.path.insert(0, str(example_site))
    importlib.invalidate_caches()
    try:
        simulator = importlib.import_module("ssc_driver_example.simulator")
        assert Path(simulator.__file__ or "").is_relative_to(example_site), simulator.__file__
        yield simulator
    finally:
        sys.path.remove(str(example_site))
        for name in [n for n in sys.modules if n.split(".")[0] == "ssc_driver_example"]:
            del sys.modules[name]


def driver_lines(stdout: str) -> dict[str, str]:
    """``ssc-agent drivers`` output by driver name."""
    return {line.split()[0]: line for line in stdout.splitlines() if line.strip()}


def device_table(name: str, port: int, interval: str = "1 s") -> str:
    return textwrap.dedent(f"""\
        [[devices]]
        name = "{name}"
        driver = "ascii_tcp"
        endpoint = "tcp://127.0.0.1:{port}"
        interval = "{interval}"
        timeout = "500 ms"
        points = [
            {{ name = "air_temperature", key = "t", unit = "°C" }},
            {{ name = "relative_humidity", key = "rh", unit = "%" }},
            {{ name = "air_pressure", key = "p", unit = "hPa", scale = 0.1 }},
            {{ name = "count", key = "n" }},
        ]
    """)


def agent_config(tmp_path: Path, broker_url: str, devices: str) -> Path:
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[gateway]\nid = "{GW}"\ndata_dir = "{tmp_path / "data"}"\n\n'
        f'[uplink]\nbroker = "{broker_url}"\nbatch_max_age = "2 s"\npublish_timeout = "3 s"\n'
        f'keepalive = "2 s"\n\n' + devices,
        encoding="utf-8",
    )
    return config


# --------------------------------------------------------------------------------------------
# The example package


def test_the_example_has_the_four_files_and_its_readme_shows_the_sample() -> None:
    assert missing_files(EXAMPLE_PACKAGE, ("driver.py", "config.py", "sample.toml")) == []
    assert (EXAMPLE / "README.md").is_file()
    assert readme_problems(EXAMPLE / "README.md", EXAMPLE_PACKAGE / "sample.toml") == []


def test_drivers_lists_the_example_with_its_version_and_origin(example_site: Path) -> None:
    done = ssc_agent("drivers", sites=(example_site,))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = driver_lines(done.stdout)
    version = installed_version(example_site, "ssc-driver-example")
    assert f"ssc-driver-example {version} (ssc_driver_example.driver:SPEC)" in lines["ascii_tcp"]
    assert lines["ascii_tcp"].split()[1] == version, "the spec's version is the package's"
    assert "ssc-edge-agent" in lines["modbus"]


def test_without_the_package_the_agent_does_not_know_the_driver(tmp_path: Path) -> None:
    # The control for the tests above and below: nothing else puts ascii_tcp in the venv.
    config = agent_config(tmp_path, "mqtt://127.0.0.1:1883", device_table("weather-1", 7070))
    done = ssc_agent("validate", "--config", str(config), sites=())
    assert done.returncode == 2, done.stdout + done.stderr
    assert "devices[0] (name=weather-1, driver=ascii_tcp) → driver: unknown driver" in done.stderr


def test_a_config_using_the_example_validates(example_site: Path, tmp_path: Path) -> None:
    sample = (EXAMPLE_PACKAGE / "sample.toml").read_text(encoding="utf-8")
    config = tmp_path / "sample.toml"
    config.write_text(full_config(tmp_path, sample), encoding="utf-8")
    done = ssc_agent("validate", "--config", str(config), sites=(example_site,))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "valid (1 devices" in done.stdout

    printed = ssc_agent("sample-config", "--driver", "ascii_tcp", sites=(example_site,))
    assert printed.returncode == 0, printed.stderr
    assert sample.strip() in printed.stdout, "sample-config shows the package's sample.toml"

    bad = tmp_path / "bad.toml"
    bad.write_text(full_config(tmp_path, sample.replace('timeout = "2 s"', 'timeout = "2"')
                               .replace("tcp://10.0.0.20:7070", "10.0.0.20")), encoding="utf-8")
    done = ssc_agent("validate", "--config", str(bad), sites=(example_site,))
    assert done.returncode == 2, done.stdout + done.stderr
    errors = done.stderr.splitlines()
    assert len(errors) == 2, errors
    assert all("devices[0] (name=weather-1, driver=ascii_tcp) → " in e for e in errors), errors
    assert any("endpoint: " in e and "tcp://HOST:PORT" in e for e in errors), errors
    assert any("timeout: " in e and "is not a duration" in e for e in errors), errors


def test_the_examples_own_tests_pass_against_the_installed_package(example_site: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        capture_output=True, text=True, cwd=EXAMPLE, env=env_with(example_site), timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-2000:]


# --------------------------------------------------------------------------------------------
# The agent runs it


@contextlib.asynccontextmanager
async def receiving(broker: Mosquitto, sink: Path) -> AsyncIterator[ReceiverStats]:
    stats = ReceiverStats()
    stop = asyncio.Event()
    settings = ReceiverSettings(broker=parse_broker_url(broker.url), sink_url=f"sqlite:///{sink}",
                                client_id="plugin-receiver")
    task = asyncio.create_task(run_receiver(settings, stop=stop, stats=stats))
    try:
        yield stats
    finally:
        stop.set()
        await task


def stop_agent(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def log_events(path: Path) -> list[dict[str, Any]]:
    events = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            events.append(json.loads(line))
    return events


@pytest.mark.parametrize("with_broken", [False, True], ids=["example", "example+broken"])
async def test_the_agent_runs_the_example_and_its_readings_reach_the_receiver(
    request: pytest.FixtureRequest, example_site: Path, example_modules: ModuleType,
    mosquitto: Mosquitto, tmp_path: Path, with_broken: bool,
) -> None:
    # With a broken third-party package installed too, a config that does not use its
    # drivers must run all the same.
    sites = (example_site, request.getfixturevalue("broken_site")) if with_broken else (
        example_site,)
    sensor = example_modules.SensorSimulator()
    await sensor.start()
    config = agent_config(tmp_path, mosquitto.url, device_table("weather-1", sensor.port))
    sink = tmp_path / "received.db"
    log = tmp_path / "agent.log"
    try:
        async with receiving(mosquitto, sink) as stats:
            agent = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "--log-json", "run", "--config", str(config)],
                stdout=subprocess.DEVNULL, stderr=log.open("ab"), cwd=ROOT,
                env=env_with(*sites),
            )
            try:
                await wait_until_async(lambda: len(sensor.served) >= 4 and stats.batches >= 1, 20)
            finally:
                stop_agent(agent)
            assert agent.returncode == 0, log.read_text()
            stopped = [e for e in log_events(log) if e.get("event") == "agent_stopped"]
            assert stopped and stopped[0]["unsent_batches"] == 0, log.read_text()
            served = list(sensor.served)
            with SqliteSink.open(f"sqlite:///{sink}") as db:
                # Every answer but perhaps one the agent was stopped before it could read.
                await wait_until_async(lambda: db.count_readings(GW) >= 4 * (len(served) - 1), 10)
    finally:
        await sensor.stop()

    with SqliteSink.open(f"sqlite:///{sink}") as db:
        readings = db.readings_for(GW)
    polls: dict[int, dict[str, Any]] = {}
    for r in readings:
        assert r.device == "weather-1"
        assert r.quality == Quality.GOOD, r
        polls.setdefault(r.t, {})[r.point] = r.value
    assert len(served) >= 4, f"the sensor answered {len(served)} times: {log.read_text()}"
    assert len(polls) >= len(served) - 1, (len(polls), len(served))
    assert all(t % 1000 == 0 for t in polls), "polls on the wall-clock grid of interval 1 s"
    by_n = {answer["n"]: answer for answer in served}
    for t, values in sorted(polls.items()):
        answer = by_n[values["count"]]
        assert values["air_temperature"] == answer["t"], (t, values, answer)
        assert values["relative_humidity"] == answer["rh"], (t, values, answer)
        assert values["air_pressure"] == pytest.approx(answer["p"] * 0.1, abs=1e-9)
    counts = [values["count"] for _, values in sorted(polls.items())]
    assert counts == sorted(counts) and len(set(counts)) == len(counts), counts


async def test_ssc_agent_test_polls_the_example_once_and_shows_what_it_served(
    example_site: Path, example_modules: ModuleType, tmp_path: Path
) -> None:
    sensor = example_modules.SensorSimulator()
    await sensor.start()
    config = tmp_path / "commission.toml"  # no [uplink]: `test` does not need one
    config.write_text(f'[gateway]\nid = "{GW}"\ndata_dir = "{tmp_path / "data"}"\n\n'
                      + device_table("weather-1", sensor.port), encoding="utf-8")
    try:
        command = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent.cli", "test", "--config", str(config), "--json",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env_with(example_site))
        async with asyncio.timeout(120):
            out, errors = await command.communicate()
    finally:
        await sensor.stop()
    assert command.returncode == 0, out.decode() + errors.decode()
    [device] = json.loads(out)["devices"]
    assert device["name"] == "weather-1" and device["driver"] == "ascii_tcp", device
    [answer] = sensor.served  # polled once
    shown = {p["point"]: (p["value"], p["unit"], p["quality"]) for p in device["points"]}
    assert shown == {
        "air_temperature": (answer["t"], "°C", "good"),
        "relative_humidity": (answer["rh"], "%", "good"),
        "air_pressure": (pytest.approx(answer["p"] * 0.1, abs=1e-9), "hPa", "good"),
        "count": (answer["n"], None, "good"),
    }, device


# --------------------------------------------------------------------------------------------
# A broken third-party package


def test_drivers_reports_each_broken_driver_and_still_lists_the_others(
    example_site: Path, broken_site: Path
) -> None:
    done = ssc_agent("drivers", sites=(example_site, broken_site))
    # The CLI: exit 1 when any installed driver is broken, every driver listed either way.
    assert done.returncode == 1, done.stdout + done.stderr
    lines = driver_lines(done.stdout)
    origin = f"{BROKEN_DIST} {installed_version(broken_site, BROKEN_DIST)}"
    for name in ("broken_import", "broken_object", "broken_model"):
        assert name in lines, f"{name} missing from:\n{done.stdout}"
        assert lines[name].split()[1] == "BROKEN", lines[name]
        assert origin in lines[name], lines[name]
    assert f"No module named '{MISSING_MODULE}'" in lines["broken_import"]
    assert "not a DriverSpec" in lines["broken_object"]
    assert "config_model" in lines["broken_model"], lines["broken_model"]
    assert "BROKEN" not in lines["modbus"] and "ssc-edge-agent" in lines["modbus"]
    assert "BROKEN" not in lines["ascii_tcp"] and "ssc-driver-example" in lines["ascii_tcp"]


def test_a_config_that_does_not_use_the_broken_drivers_validates(
    example_site: Path, broken_site: Path, tmp_path: Path
) -> None:
    config = agent_config(tmp_path, "mqtt://127.0.0.1:1883", device_table("weather-1", 7070))
    done = ssc_agent("validate", "--config", str(config), sites=(example_site, broken_site))
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_config_that_uses_a_broken_driver_fails_at_that_device_with_its_error(
    example_site: Path, broken_site: Path, tmp_path: Path
) -> None:
    devices = device_table("weather-1", 7070) + "".join(
        f'\n[[devices]]\nname = "{name}-1"\ndriver = "{name}"\n'
        for name in ("broken_import", "broken_object", "broken_model")
    )
    config = agent_config(tmp_path, "mqtt://127.0.0.1:1883", devices)
    for command in ("validate", "run"):
        done = ssc_agent(command, "--config", str(config), sites=(example_site, broken_site))
        assert done.returncode == 2, f"{command}: {done.stdout}{done.stderr}"
        assert "Traceback" not in done.stderr, done.stderr
        errors = done.stderr.splitlines()
        assert len(errors) == 3, errors
        assert not any("weather-1" in e for e in errors), "the good device has no problem"
        prefix = ("ssc-agent: devices[{i}] (name={name}-1, driver={name}) → driver: driver "
                  "'{name}' could not be loaded: ")
        assert errors[0].startswith(prefix.format(i=1, name="broken_import")), errors
        assert f"No module named '{MISSING_MODULE}'" in errors[0]
        assert errors[1].startswith(prefix.format(i=2, name="broken_object")), errors
        assert "not a DriverSpec" in errors[1]
        assert errors[2].startswith(prefix.format(i=3, name="broken_model")), errors
        assert "config_model" in errors[2]
