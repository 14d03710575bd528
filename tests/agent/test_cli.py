"""The CLI contract: exit codes, one error line each naming where, commands that work."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.cli import main
from tests.conftest import Mosquitto, free_port

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120, check=False)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


GOOD = """
[gateway]
id = "gw-1"
data_dir = "{data}"
[uplink]
broker = "mqtt://127.0.0.1:{port}"
[[devices]]
name = "meter-1"
driver = "modbus"
endpoint = "tcp://127.0.0.1:{port}"
profile = "ssc-demo-meter"
"""


def test_validate_ok_exits_0(tmp_path: Path) -> None:
    config = write(tmp_path, GOOD.format(data=tmp_path / "d", port=free_port()))
    done = cli("validate", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert "valid (1 devices" in done.stdout
    assert not (tmp_path / "d").exists(), "validate must not create the data_dir"


def test_validate_reports_every_error_with_where_and_exits_2(tmp_path: Path) -> None:
    config = write(tmp_path, """
[gateway]
id = "gw 1"
[uplink]
broker = "http://x"
[[devices]]
name = "meter-1"
driver = "modbus"
endpoint = "tcp://127.0.0.1:502"
points = [{ name = "a", address = 0, type = "float" }, { name = "b", address = 70000 }]
""")
    done = cli("validate", "--config", str(config))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 4, done.stderr
    assert all(line.startswith("ssc-agent: ") for line in lines)
    text = done.stderr
    assert "gateway.id:" in text
    assert "uplink.broker:" in text
    assert ("devices[0] (name=meter-1, driver=modbus) → points[0].type: must be one of u16, "
            "i16, u32, i32, u64, i64, f32, f64, bool") in text
    assert "devices[0] (name=meter-1, driver=modbus) → points[1].address:" in text


def test_missing_config_and_bad_usage(tmp_path: Path) -> None:
    done = cli("validate", "--config", str(tmp_path / "nope.toml"))
    assert done.returncode == 2
    assert "does not exist" in done.stderr
    assert cli("frobnicate").returncode == 2
    assert cli("validate").returncode == 2  # --config is required


def test_sample_config_validates_as_printed(tmp_path: Path) -> None:
    done = cli("sample-config")
    assert done.returncode == 0
    config = write(tmp_path, done.stdout)
    checked = cli("validate", "--config", str(config))
    assert checked.returncode == 0, checked.stderr


def test_sample_config_for_unknown_driver_is_an_error() -> None:
    done = cli("sample-config", "--driver", "nope")
    assert done.returncode == 2
    assert "installed drivers: iec62056, modbus, pms5003, sds011" in done.stderr


def test_drivers_lists_modbus_with_version_and_origin() -> None:
    done = cli("drivers")
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("modbus"))
    assert "ssc-edge-agent 0.1.0 (drivers.modbus.driver:SPEC)" in line


def test_kpi_replay_from_the_command_line(tmp_path: Path) -> None:
    """docs/kpis.md §6 E1 through the CLI: exit codes and the exact JSON lines."""
    import json

    config = write(tmp_path, """
[gateway]
id = "gw-1"
timezone = "Europe/Berlin"
[[kpis]]
name = "hourly"
source = "s.x"
operator = "mean"
window = "1 h"
sample_interval = "15 min"
""")
    rows = ["time,device,point,value"] + [
        f"2025-01-15T{t}+01:00,s,x,{v}" for t, v in [
            ("08:00:00", "10"), ("08:15:00", "12"), ("08:30:00", ""), ("08:45:00", "14"),
            ("09:00:00", "20"), ("09:15:00", ""), ("09:30:00", ""), ("09:45:00", "22")]]
    csv = tmp_path / "in.csv"
    csv.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out.jsonl"
    done = cli("kpi", "replay", "--config", str(config), "--input", str(csv), "--output",
               str(out))
    assert done.returncode == 0, done.stderr
    first, second = [json.loads(line) for line in out.read_text().splitlines()]
    assert first == {"kpi": "hourly", "src": "s.x", "start": "2025-01-15T08:00:00+01:00",
                     "end": "2025-01-15T09:00:00+01:00", "value": 12.0, "valid": True, "n": 3,
                     "expected": 4, "coverage": 0.75, "unit": None}
    assert (second["valid"], second["value"], second["n"]) == (False, None, 2)
    csv.write_text("time,device,point,value\n2025-01-15T08:00:00,s,x,1\n")
    bad = cli("kpi", "replay", "--config", str(config), "--input", str(csv))
    assert bad.returncode == 1
    assert ":2:" in bad.stderr  # names the line
    bad_config = write(tmp_path, '[gateway]\nid = "g"\n[[kpis]]\nname = "x"\n')
    assert cli("kpi", "replay", "--config", str(bad_config), "--input", str(csv)
               ).returncode == 2


def test_buffer_stats_and_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent.gateway.store import BatchStore
    from agent.readings import Quality, Reading

    data = tmp_path / "d"
    config = write(tmp_path, GOOD.format(data=data, port=free_port()))
    assert main(["buffer", "stats", "--config", str(config)]) == 1
    assert "does not exist yet" in capsys.readouterr().err
    store = BatchStore.open(data / "buffer.db")
    store.start_boot()
    upto = store.append_pending([Reading("m", "p", None, 1, 1, Quality.GOOD)], [])
    store.seal(lambda seq, ev: b"SSC1\x00payload", created=5, n_readings=1, pending_upto=upto)
    # the agent holds its store open, in the middle of a write: stats and export still work
    store._conn.execute("BEGIN IMMEDIATE")
    assert main(["buffer", "stats", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "batches unsent:  1 (1 readings" in out
    # the batch says created=5 (1970): its age is elapsed time, not now minus that
    assert "oldest unsent:   0 s" in out
    assert "boot / next seq: 1 / 2" in out
    assert f"(store {store.identity})" in out
    store._conn.execute("ROLLBACK")
    store.close()
    assert main(["buffer", "export", "--config", str(config), "--output",
                 str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "gw-1-0000000001.ssc1").read_bytes() == b"SSC1\x00payload"


def test_help_names_every_command() -> None:
    done = cli("--help")
    assert done.returncode == 0
    for command in ("run", "validate", "sample-config", "drivers", "simulate", "receive",
                    "buffer", "demo"):
        assert command in done.stdout


def test_simulate_serial_then_scan_and_probe_it(tmp_path: Path) -> None:
    """The technician's path on a (virtual) RS-485 line: simulate, scan, probe."""
    import shutil
    import time

    if shutil.which("socat") is None:
        pytest.fail("socat is needed for serial tests (apt-get install socat)")
    a, b = tmp_path / "ttyA", tmp_path / "ttyB"
    socat = subprocess.Popen(["socat", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
                             stderr=subprocess.DEVNULL)
    sim = None
    try:
        deadline = time.monotonic() + 5
        while not (a.exists() and b.exists()) and time.monotonic() < deadline:
            time.sleep(0.01)
        sim = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "simulate", "ssc-demo-meter", "--serial", str(a),
             "--units", "2,4", "--silent-units", "4", "--duration", "30"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert sim.stdout is not None
        first = sim.stdout.readline()
        assert str(a) in first, first
        scan = cli("scan", "--serial", str(b), "--units", "1-5", "--timeout", "200 ms")
        assert scan.returncode == 0, scan.stdout + scan.stderr
        found = [line for line in scan.stdout.splitlines() if line.startswith("unit")]
        assert [line.split()[1] for line in found] == ["2"], scan.stdout
        probe = cli("probe", "--serial", str(b), "--unit", "2", "--table", "input",
                    "--address", "0", "--count", "4")
        assert probe.returncode == 0, probe.stdout + probe.stderr
        assert "ABCD" in probe.stdout and "0x0000" in probe.stdout.lower()
    finally:
        if sim is not None:
            sim.terminate()
            sim.wait(10)
        socat.terminate()
        socat.wait(5)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--topic-prefix", "a" * 70_000],
         "ssc-agent: --topic-prefix: is 70,000 bytes long: at most 256 bytes of UTF-8"),
        (["--topic-prefix", "$SYS/ssc"],
         "ssc-agent: --topic-prefix: '$SYS/ssc': topics starting with '$' are reserved by the "
         "broker, e.g. 'ssc/v1'"),
        (["--group", "a/b"],
         "ssc-agent: --group: 'a/b': a shared-subscription group is one topic level: no '/', "
         "'+' or '#', not empty"),
    ],
)
def test_receive_refuses_topics_it_cannot_subscribe_to(
    tmp_path: Path, flags: list[str], expected: str
) -> None:
    """Exit 2 with one line at once, never a struct.error or a reconnect loop."""
    done = cli("receive", "--broker", f"mqtt://127.0.0.1:{free_port()}",
               "--sink", f"sqlite:///{tmp_path / 'r.db'}", *flags)
    assert done.returncode == 2, done.stderr[-500:]
    assert done.stderr.splitlines() == [expected]
    assert not (tmp_path / "r.db").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--username", "rx", "--password-file", "/missing/pw"],
         "ssc-agent: --password-file /missing/pw: cannot read it: No such file or directory"),
        (["--password-file", "{tmp}/pw"], "ssc-agent: --password-file: needs --username"),
        (["--ca-file", "/missing/ca.crt"],
         "ssc-agent: --ca-file /missing/ca.crt: cannot load CA certificates: No such file"),
        (["--ca-file", "{tmp}/pw"], "ssc-agent: --ca-file {tmp}/pw: cannot load CA certificates"),
        (["--cert-file", "/missing/c.crt"], "ssc-agent: --cert-file /missing/c.crt: cannot load"),
        (["--key-file", "{tmp}/pw"], "ssc-agent: --key-file: needs --cert-file"),
        (["--sink", "postgres://db/x"], "ssc-agent: --sink: sink 'postgres://db/x': write"),
        (["--sink", "sqlite:////missing/dir/x.db"],
         "ssc-agent: sink /missing/dir/x.db: cannot open the SQLite database"),
        (["--broker", "http://127.0.0.1:1"], "ssc-agent: --broker: 'http://127.0.0.1:1': a broker"),
    ],
)
def test_receive_bad_settings_exit_2_with_one_line(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    (tmp_path / "pw").write_text("secret\n")
    args = {"--broker": "mqtts://127.0.0.1:1", "--sink": f"sqlite:///{tmp_path}/r.db"}
    extra = [x.replace("{tmp}", str(tmp_path)) for x in extra]
    for flag in list(args):
        if flag in extra:
            i = extra.index(flag)
            args[flag] = extra.pop(i + 1)
            extra.pop(i)
    argv = [x for kv in args.items() for x in kv] + extra
    done = cli("receive", *argv)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(message.replace("{tmp}", str(tmp_path))), lines[0]
    assert "secret" not in done.stderr


def test_receive_stops_on_sigterm_with_exit_0_and_a_stop_line(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "--log-json", "receive", "--broker", mosquitto.url,
         "--sink", f"sqlite:///{tmp_path}/r.db"],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            if "mqtt_subscribed" in line:
                break
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    events = [json.loads(x)["event"] for x in err.splitlines() if x.startswith("{")]
    assert events[-2:] == ["receiver_stopping", "receiver_stopped"]
SSC_AGENT = str(Path(sys.executable).parent / "ssc-agent")


def run_with_closed_stdout(*args: str) -> tuple[int, str]:
    """Run ssc-agent with a stdout pipe whose reader is gone before anything is written."""
    proc = subprocess.Popen([SSC_AGENT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=ROOT)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    return proc.wait(timeout=120), err


def kpi_replay_files(tmp_path: Path) -> tuple[Path, Path]:
    config = write(tmp_path, '[gateway]\nid = "gw-1"\n[[kpis]]\nname = "m"\nsource = "s.x"\n'
                   'operator = "mean"\nwindow = "1 min"\nsample_interval = "1 min"\n')
    csv = tmp_path / "in.csv"
    csv.write_text("time,device,point,value\n" + "".join(
        f"2025-01-15T{h:02d}:{m:02d}:00Z,s,x,{m}\n" for h in range(24) for m in range(60)))
    return config, csv


@pytest.mark.parametrize("command", ["sample-config", "drivers", "validate", "kpi replay"])
def test_a_closed_stdout_ends_a_command_quietly_with_141(tmp_path: Path, command: str) -> None:
    config, csv = kpi_replay_files(tmp_path)
    args = {
        "sample-config": ["sample-config"],
        "drivers": ["drivers"],
        "validate": ["validate", "--config", str(ROOT / "config" / "example.toml")],
        "kpi replay": ["kpi", "replay", "--config", str(config), "--input", str(csv)],
    }[command]
    status, err = run_with_closed_stdout(*args)
    assert (status, err) == (141, "")


def test_sample_config_into_head_has_no_traceback() -> None:
    """`ssc-agent sample-config | head -1`, as a shell runs it."""
    agent = subprocess.Popen([SSC_AGENT, "sample-config"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, cwd=ROOT)
    assert agent.stdout is not None and agent.stderr is not None
    head = subprocess.run(["head", "-1"], stdin=agent.stdout, capture_output=True, text=True,
                          check=False, timeout=60)
    agent.stdout.close()
    err = agent.stderr.read().decode()
    status = agent.wait(timeout=60)
    assert head.stdout.startswith("# ssc-agent configuration (TOML)")
    assert head.stdout.count("\n") == 1
    assert err == ""
    assert status in (0, 141)  # 0 when it wrote everything before head went away


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--units", "1-x"], "ssc-agent: --units: '1-x' is not a unit range: write e.g. 1-247 "
                             "or 1,3,10-12"),
        (["--serial", "/dev/null", "--silent-units", "300"],
         "ssc-agent: --silent-units: '300': unit ids go from 0 to 255, the first not above the "
         "last"),
    ],
)
def test_simulate_unit_errors_name_the_flag_given(flags: list[str], expected: str) -> None:
    done = cli("simulate", "ssc-demo-meter", *flags)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [expected]


def test_simulate_takes_unit_ranges_as_scan_does(tmp_path: Path) -> None:
    """simulate --units 1-2 serves units 1 and 2, which scan (same syntax) then finds."""
    port = free_port()
    sim = subprocess.Popen([SSC_AGENT, "simulate", "ssc-demo-meter", "--port", str(port),
                            "--units", "1-2,4", "--duration", "60"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        scan = None
        for _ in range(100):
            scan = cli("scan", "--endpoint", f"tcp://127.0.0.1:{port}", "--units", "1-5",
                       "--timeout", "1 s", "--format", "json")
            if scan.returncode == 0:
                break
            time.sleep(0.2)
        assert scan is not None and scan.returncode == 0, scan and scan.stderr
        found = json.loads(scan.stdout)
        assert found["found"] == [1, 2, 4], found
    finally:
        sim.terminate()
        sim.wait(10)


def test_run_with_a_data_dir_that_cannot_be_created_is_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    data = tmp_path / "a-file" / "data"
    config = write(tmp_path, GOOD.format(data=data, port=free_port()))
    done = cli("run", "--config", str(config))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [f"ssc-agent: data_dir {data}: cannot create it (Not a directory)"], lines
