"""The README's two commands, CI and the lock agree: a fresh machine installs the versions the suite passed with."""

import re
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    block = ROOT.joinpath("README.md").read_text().split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]


def _lock() -> dict[str, str]:
    pins = {}
    for line in ROOT.joinpath("requirements", "lock.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    return pins


def test_readme_and_ci_install_with_the_lock():
    run, test = _readme_commands()
    assert "-c requirements/lock.txt" in run and run.endswith("turbo-train")
    assert "-c requirements/lock.txt" in test and test.endswith("pytest")
    ci = [line for line in ROOT.joinpath(".ci", "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == test  # CI runs exactly what a user runs


def test_the_lock_pins_every_dependency_inside_pyproject_ranges():
    project = tomllib.loads(ROOT.joinpath("pyproject.toml").read_text())["project"]
    pins = _lock()
    for spec in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        req = Requirement(spec)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{req.name} is not pinned in requirements/lock.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside {req.specifier}"
