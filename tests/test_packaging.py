"""handgrad outside its source tree: the wheel holds the package, its configs and py.typed, installs into a
fresh virtual environment, and its handgrad-train trains a shipped config from another folder.

The wheel is built without a network (no build isolation when setuptools is at hand) and installed with
--no-deps --no-index into a venv that reads the test's own site-packages (a .pth file) for torch,
Lightning and the rest. About 10 s on the 2-core dev machine.
"""

from __future__ import annotations

import importlib.util
import os
import re
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

from conftest import REPO


def test_pyproject_lists_every_package():
    """setuptools installs the packages listed in pyproject.toml only; a new subpackage must be added there."""
    packages = re.search(r"^packages = \[(.*?)\]", (REPO / "pyproject.toml").read_text(), re.MULTILINE | re.DOTALL)
    listed = set(re.findall(r'"([\w.]+)"', packages[1]))
    found = {".".join(init.parent.relative_to(REPO / "src").parts) for init in (REPO / "src").rglob("__init__.py")}
    assert listed == found | {"handgrad.configs"}, f"add {sorted(found - listed)} to [tool.setuptools] packages"


def run(*command, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=300, **kwargs)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def test_the_wheel_installs_and_trains_from_another_folder(tmp_path):
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    run(sys.executable, "-m", "pip", "wheel", REPO, "-w", tmp_path / "wheels", "--no-deps", "-q", *isolation)
    wheel, = (tmp_path / "wheels").glob("handgrad-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"handgrad/py.typed", "handgrad/cli.py", "handgrad/benchmarks/suite.py",
            "handgrad/functional/linear.py"} <= names
    assert {f"handgrad/configs/{path.name}" for path in (REPO / "configs").glob("*.yaml")} <= names

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    own_site, = run(python, "-c", "import site; print(site.getsitepackages()[0])").stdout.split()
    Path(own_site, "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")  # torch, lightning, ...
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}  # not this clone's src/
    run(python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel, env=env)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = run(env_dir / "bin" / "handgrad-train", "--config", "spirals", "--trainer.max_epochs", "1", cwd=elsewhere,
               env=env)
    assert done.stdout.splitlines()[-1].startswith("test accuracy ") and "run logs/spirals/version_0" in done.stdout
    where = run(python, "-c", "import handgrad; print(handgrad.__file__)", cwd=elsewhere, env=env).stdout
    assert where.startswith(str(env_dir))  # the installed copy, not this clone's
    # the version the wheel carries is the one the package reports, and the one the changelog opens with
    version = run(python, "-c", "import handgrad, importlib.metadata as m; print(handgrad.__version__, "
                  "m.version('handgrad'))", cwd=elsewhere, env=env).stdout.split()
    assert version[0] == version[1] and wheel.name.startswith(f"handgrad-{version[0]}-")
    assert re.search(rf"^## {re.escape(version[0])}\b", (REPO / "CHANGELOG.md").read_text(), re.MULTILINE)
