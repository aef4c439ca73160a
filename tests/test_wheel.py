"""The built wheel is self-sufficient: it carries the shipped protocols and the Flower app, and
both load from it outside the source checkout (no path into the source tree)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECK = textwrap.dedent(
    """
    import sys, tomllib, zipfile, io
    from pathlib import Path
    import securefed
    site = Path(sys.argv[1]).resolve()
    assert Path(securefed.__file__).resolve().is_relative_to(site), securefed.__file__
    from securefed.protocol import load_protocol
    from securefed.protocol.shipped import shipped_protocol, shipped_protocols
    assert {"demo", "demo-all-methods", "fets2022-cffl"} <= set(shipped_protocols())
    loaded = load_protocol(shipped_protocol("demo"))
    assert loaded.protocol.study.mode == "simulation"
    from securefed.federation.app import app_dir
    app = app_dir()
    assert app.resolve().is_relative_to(site), app
    cfg = tomllib.loads((app / "pyproject.toml").read_text())
    assert cfg["tool"]["flwr"]["app"]["components"]["clientapp"].startswith("securefed.")
    from flwr.cli.build import build_fab_from_disk
    fab = zipfile.ZipFile(io.BytesIO(build_fab_from_disk(app)))
    names = sorted(fab.namelist())
    assert names == [".info/CONTENT", "pyproject.toml"], names  # the FAB ships no code
    from securefed.federation.server_app import app as server_app
    from securefed.federation.client_app import app as client_app
    print("wheel ok", len(shipped_protocols()))
    """
)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_wheel_ships_protocols_and_flower_app(tmp_path: Path) -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to know the tracked files")
    # Build from the tracked files only (what a clean clone has), outside the checkout.
    src = tmp_path / "src"
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, files):
        rel = Path(os.fsdecode(name))
        target = src / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / rel).is_symlink():
            target.symlink_to(os.readlink(ROOT / rel))
        elif (ROOT / rel).is_file():
            shutil.copy2(ROOT / rel, target)
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(dist), str(src)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = dist.glob("securefed-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        zf.extractall(tmp_path / "site")
    assert "securefed/protocols/demo.toml" in names
    assert "securefed/federation/securefed-app/pyproject.toml" in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/"))]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    proc = subprocess.run(
        [sys.executable, "-c", CHECK, str(tmp_path / "site")],
        cwd=outside, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wheel ok" in proc.stdout
