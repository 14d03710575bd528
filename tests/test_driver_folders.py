"""hassfest-lite: every folder under ``drivers/`` is a complete, registered driver.

A driver folder (one with ``driver.py`` or ``__init__.py``; ``__pycache__`` and ``_*`` are
skipped) must have ``driver.py``, ``config.py``, ``README.md`` and ``sample.toml``; every
``[[devices]]`` table of the sample must validate through the real config loader; the README
must show the sample verbatim in a code block; and the installed distribution must register
the folder as an ``ssc_agent.drivers`` entry point whose spec ships that same sample.

The checks are plain functions so that ``tests/test_plugins.py`` holds the example package to
the same rules.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from agent.config import load_config
from agent.driver import BUILTIN_DRIVERS, ENTRY_POINT_GROUP, discover
from agent.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
DRIVERS = ROOT / "drivers"
DISTRIBUTION = "ssc-edge-agent"
REQUIRED_FILES = ("driver.py", "config.py", "README.md", "sample.toml")
# What a sample may define besides its devices; [gateway] and [uplink] come from the test.
SAMPLE_SECTIONS = {"devices", "buses"}

_FENCE = re.compile(r"^(?P<fence>```+|~~~+)[^\n]*\n(?P<body>.*?)^(?P=fence)[ \t]*$",
                    re.MULTILINE | re.DOTALL)


def shown(path: Path) -> str:
    """``path`` relative to the repository when it lies in it, for error lines."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def driver_folders(root: Path = DRIVERS) -> list[Path]:
    """The driver folders under ``root``, sorted by name."""
    return sorted(
        path for path in root.iterdir()
        if path.is_dir() and path.name != "__pycache__" and not path.name.startswith("_")
        and ((path / "driver.py").is_file() or (path / "__init__.py").is_file())
    )


def missing_files(folder: Path, required: tuple[str, ...] = REQUIRED_FILES) -> list[str]:
    """The required files that ``folder`` lacks."""
    return [name for name in required if not (folder / name).is_file()]


def sample_problems(sample: Path, driver: str, tmp_path: Path) -> list[str]:
    """Why ``sample`` is not a valid device sample of ``driver`` ([] when it is)."""
    text = sample.read_text(encoding="utf-8")
    where = shown(sample)
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return [f"{where}: not valid TOML: {exc}"]
    problems = [
        f"{where}: [{key}] does not belong in a driver sample (only [[devices]] and the "
        "[[buses]] they use; the agent's sample-config adds [gateway] and [uplink])"
        for key in parsed if key not in SAMPLE_SECTIONS
    ]
    devices = parsed.get("devices")
    if not isinstance(devices, list) or not devices:
        return [*problems, f"{where}: no [[devices]] table: show at least one device"]
    for i, device in enumerate(devices):
        if isinstance(device, dict) and device.get("driver") != driver:
            problems.append(
                f"{where}: devices[{i}] has driver = {device.get('driver')!r}: a sample shows "
                f"its own driver, write driver = {driver!r}"
            )
    if problems:
        return problems
    config = tmp_path / f"sample-{driver}.toml"
    config.write_text(full_config(tmp_path, text), encoding="utf-8")
    try:
        loaded = load_config(config)
    except ConfigError as exc:
        return [f"{where} does not validate: {line}" for line in exc.problems]
    if len(loaded.devices) != len(devices):
        return [f"{where}: {len(devices)} devices in the file, {len(loaded.devices)} validated"]
    return []


def full_config(tmp_path: Path, sample_text: str) -> str:
    """A complete agent config around a driver's sample: [gateway] and [uplink] first."""
    head = (
        f'[gateway]\nid = "gw-hassfest"\ndata_dir = "{tmp_path / "data"}"\n\n'
        '[uplink]\nbroker = "mqtt://127.0.0.1:1883"\n\n'
    )
    return head + sample_text


def code_blocks(markdown: str) -> list[str]:
    """The bodies of the fenced code blocks of a Markdown text."""
    return [match["body"] for match in _FENCE.finditer(markdown)]


def readme_problems(readme: Path, sample: Path) -> list[str]:
    """Why ``readme`` does not show ``sample`` verbatim in a code block ([] when it does)."""
    text = sample.read_text(encoding="utf-8").strip("\n")
    blocks = [block.strip("\n") for block in code_blocks(readme.read_text(encoding="utf-8"))]
    if text in blocks:
        return []
    hint = ""
    close = difflib.get_close_matches(text, blocks, n=1, cutoff=0.5)
    if close:
        diff = difflib.unified_diff(text.splitlines(), close[0].splitlines(), "sample.toml",
                                    "README.md", lineterm="", n=0)
        first = [line for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---")]
        hint = f" (nearest block differs at: {first[0]!r})" if first else ""
    return [
        f"{shown(readme)}: no code block holds {sample.name} verbatim{hint}; paste the file "
        "under a '## Configuration' heading as a ```toml block (again whenever it changes)"
    ]


def registration_problems(
    folder: Path, registered: Mapping[str, str], distribution: str = DISTRIBUTION
) -> list[str]:
    """Why the driver in ``folder`` is not registered as an entry point ([] when it is)."""
    module = f"drivers.{folder.name}."
    names = [name for name, value in registered.items() if value.startswith(module)]
    if names:
        return []
    line = f'{folder.name} = "drivers.{folder.name}.driver:SPEC"'
    return [
        f"drivers/{folder.name} is not registered as an {ENTRY_POINT_GROUP} entry point of "
        f"{distribution}: add\n    {line}\nunder [project.entry-points.\"{ENTRY_POINT_GROUP}\"] "
        "in pyproject.toml, then reinstall (scripts/test does when pyproject.toml changed)"
    ]


def installed_entry_points(distribution: str = DISTRIBUTION) -> dict[str, str]:
    """Entry point name → value, for ``distribution``'s ``ssc_agent.drivers`` entry points."""
    return {
        ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)
        if ep.dist is not None and ep.dist.metadata["Name"] == distribution
    }


def _entry_name(folder: Path, registered: Mapping[str, str]) -> str:
    """The entry point name the folder is registered under (the folder name if none)."""
    module = f"drivers.{folder.name}."
    names = [name for name, value in registered.items() if value.startswith(module)]
    return names[0] if names else folder.name


FOLDERS = driver_folders()


def test_there_are_driver_folders_to_check() -> None:
    assert FOLDERS, f"no driver folder under {DRIVERS}: the walk is broken"
    assert "modbus" in [folder.name for folder in FOLDERS]


def test_the_walk_skips_what_is_not_a_driver(tmp_path: Path) -> None:
    for name, files in [
        ("good", ["driver.py"]), ("pkg", ["__init__.py"]), ("__pycache__", ["driver.py"]),
        ("_private", ["driver.py"]), ("docs", ["notes.md"]),
    ]:
        (tmp_path / name).mkdir()
        for file in files:
            (tmp_path / name / file).write_text("")
    (tmp_path / "serialio.py").write_text("")  # a shared module, not a folder
    assert [p.name for p in driver_folders(tmp_path)] == ["good", "pkg"]
    assert missing_files(tmp_path / "pkg") == list(REQUIRED_FILES)


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_driver_folder_has_the_four_files(folder: Path) -> None:
    missing = missing_files(folder)
    assert not missing, (
        f"drivers/{folder.name} lacks {', '.join(missing)}: every driver folder has "
        f"{', '.join(REQUIRED_FILES)} (docs/writing-a-driver.md)"
    )


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_driver_sample_validates_through_the_config_loader(folder: Path, tmp_path: Path) -> None:
    sample = folder / "sample.toml"
    if not sample.is_file():
        pytest.fail(f"drivers/{folder.name} has no sample.toml")
    problems = sample_problems(sample, _entry_name(folder, installed_entry_points()), tmp_path)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_driver_readme_shows_the_sample_verbatim(folder: Path) -> None:
    readme, sample = folder / "README.md", folder / "sample.toml"
    if not (readme.is_file() and sample.is_file()):
        pytest.fail(f"drivers/{folder.name} needs both README.md and sample.toml")
    problems = readme_problems(readme, sample)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_driver_folder_is_registered_and_ships_its_sample(folder: Path) -> None:
    registered = installed_entry_points()
    problems = registration_problems(folder, registered)
    assert not problems, "\n".join(problems)
    name = _entry_name(folder, registered)
    entry = discover()[name]
    assert entry.spec is not None, f"drivers/{folder.name} ({name}) does not load: {entry.error}"
    sample = (folder / "sample.toml").read_text(encoding="utf-8")
    assert entry.spec.sample_toml == sample, (
        f"drivers/{folder.name}: SPEC.sample_toml is not sample.toml; read the file "
        "(Path(__file__).parent / 'sample.toml') so `ssc-agent sample-config --driver "
        f"{name}` shows the same sample"
    )
    assert entry.spec.name == name, (
        f"drivers/{folder.name}: SPEC.name is {entry.spec.name!r} but the entry point is "
        f"{name!r}; make them the same"
    )


def test_the_built_in_drivers_are_the_registered_ones() -> None:
    # A config naming only these loads them without the entry points (agent.driver): the table
    # must say what pyproject.toml registers, and each load the same spec and origin.
    assert dict(BUILTIN_DRIVERS) == installed_entry_points()
    listed = discover()
    for name in BUILTIN_DRIVERS:
        direct = discover({name})
        assert list(direct) == [name]
        assert direct[name].origin == listed[name].origin
        assert direct[name].spec is listed[name].spec is not None


# The checks themselves must be able to fail: each against a folder that breaks one rule.


def _good_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "drivers" / "fake"
    folder.mkdir(parents=True)
    for name in REQUIRED_FILES:
        (folder / name).write_text("")
    return folder


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    folder = _good_folder(tmp_path)
    (folder / "README.md").unlink()
    assert missing_files(folder) == ["README.md"]


_MODBUS_DEVICE = """\
[[devices]]
name = "m-1"
driver = "modbus"
endpoint = "tcp://127.0.0.1:502"
points = [{ name = "v", address = 0 }]
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (_MODBUS_DEVICE, []),
        (_MODBUS_DEVICE.replace("address = 0", "address = -1"), ["does not validate: devices[0]"]),
        (_MODBUS_DEVICE.replace('"modbus"', '"other"'), ["write driver = 'modbus'"]),
        ('[gateway]\nid = "x"\n' + _MODBUS_DEVICE, ["[gateway] does not belong"]),
        ("# nothing\n", ["no [[devices]] table"]),
        ("[[devices]\n", ["not valid TOML"]),
        (_MODBUS_DEVICE.replace('endpoint = "tcp://127.0.0.1:502"', 'bus = "rs485-9"'),
         ["no bus named 'rs485-9'"]),
        (_MODBUS_DEVICE.replace('endpoint = "tcp://127.0.0.1:502"', 'bus = "rs485-9"')
         + '[[buses]]\nname = "rs485-9"\nport = "/dev/ttyUSB9"\n', []),
    ],
)
def test_sample_problems_are_found(text: str, expected: list[str], tmp_path: Path) -> None:
    sample = tmp_path / "sample.toml"
    sample.write_text(text, encoding="utf-8")
    problems = sample_problems(sample, "modbus", tmp_path)
    assert len(problems) == len(expected), problems
    for problem, fragment in zip(problems, expected, strict=True):
        assert fragment in problem


def test_a_readme_must_hold_the_sample_in_a_code_block(tmp_path: Path) -> None:
    sample = tmp_path / "sample.toml"
    sample.write_text(_MODBUS_DEVICE, encoding="utf-8")
    readme = tmp_path / "README.md"
    readme.write_text(f"# X\n\n## Configuration\n\n```toml\n{_MODBUS_DEVICE}```\n")
    assert readme_problems(readme, sample) == []
    readme.write_text(f"# X\n\n{_MODBUS_DEVICE}\n")  # the text, but not in a code block
    assert readme_problems(readme, sample)
    stale = _MODBUS_DEVICE.replace("m-1", "m-2")
    readme.write_text(f"# X\n\n```toml\n{stale}```\n")
    [problem] = readme_problems(readme, sample)
    assert "nearest block differs at: '-name = \"m-1\"'" in problem


def test_an_unregistered_folder_gets_the_line_to_add(tmp_path: Path) -> None:
    folder = _good_folder(tmp_path)
    [problem] = registration_problems(folder, {"modbus": "drivers.modbus.driver:SPEC"})
    assert 'fake = "drivers.fake.driver:SPEC"' in problem
    assert '[project.entry-points."ssc_agent.drivers"]' in problem
    assert registration_problems(folder, {"fake": "drivers.fake.driver:SPEC"}) == []


def test_installed_entry_points_are_read_from_the_distribution() -> None:
    registered = installed_entry_points()
    assert registered.get("modbus") == "drivers.modbus.driver:SPEC"
    assert installed_entry_points("no-such-distribution") == {}
