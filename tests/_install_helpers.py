"""Helpers for the installer's tests: run install.py, make a cheap engine venv, snapshot folders."""

import importlib.util
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INSTALL_PY = REPO / "install.py"


def load_install_module():
    spec = importlib.util.spec_from_file_location("clipasso_install", INSTALL_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def make_overlay_venv(folder: Path) -> Path:
    """A real, empty virtual environment that also sees this test interpreter's site-packages (torch,
    open_clip, pip, setuptools) through a .pth file: install.py then finds an existing torch and only
    installs the engine, without downloading gigabytes. What it installs lands in `folder` itself."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    if os.name == "nt":
        site = folder / "Lib" / "site-packages"
    else:
        site = folder / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    paths = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "zz_clipasso_test_overlay.pth").write_text("".join(p + "\n" for p in paths))
    return folder


def run_install(*args, env=None, timeout=600):
    """install.py in a subprocess, as a user runs it. Returns the CompletedProcess (text)."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, str(INSTALL_PY), *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=str(REPO.parent))


def snapshot(folder: Path) -> dict:
    """relative path -> (size, mtime_ns) for every file and folder below `folder`."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    return {p.relative_to(folder).as_posix(): (p.is_dir(), 0 if p.is_dir() else p.stat().st_size)
            for p in folder.rglob("*")}
