"""A plain (non-editable) install: the built wheel carries the config groups and trains from outside the source tree."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The project's wheel, built from this checkout and installed (without dependencies) into a fresh folder."""
    wheels, site = tmp_path_factory.mktemp("wheels"), tmp_path_factory.mktemp("site")
    # built from a copy: setuptools builds inside the source folder, and two test workers building at once clash
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "conf", "ganlab", "hydra_plugins"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, source / name)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)]
    subprocess.run(build + [str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("ganlab-*.whl")
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    return site


def run_installed(site: Path, cwd: Path, *arguments: str) -> subprocess.CompletedProcess:
    """A command of the installed copy, with that copy first on the path and the source tree nowhere near."""
    env = os.environ | {"PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    return subprocess.run(list(arguments), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_wheel_ships_every_config_group(installed):
    shipped = {p.relative_to(installed / "ganlab" / "conf") for p in (installed / "ganlab" / "conf").rglob("*.yaml")}
    in_repo = {p.relative_to(REPO / "conf") for p in (REPO / "conf").rglob("*.yaml")}
    assert shipped == in_repo


def test_an_installed_wheel_trains_from_a_folder_outside_the_source_tree(installed, tmp_path, data_root):
    where = run_installed(installed, tmp_path, sys.executable, "-c", "import ganlab.config as c; print(c.CONF_DIR)")
    assert where.stdout.strip() == str(installed / "ganlab" / "conf"), where.stderr
    train = str(installed / "bin" / "ganlab-train")
    searchpath = run_installed(installed, tmp_path, sys.executable, train, "--info", "searchpath")
    assert f"file://{installed / 'ganlab' / 'conf'}" in searchpath.stdout, searchpath.stdout + searchpath.stderr

    overrides = [f"dataset.root={data_root}", "train.steps=3", "train.batch_size=4", "eval.num_samples=8",
                 "log.num_samples=4", "model.hidden=16", "device.threads=1", "log.progress=false"]  # fmt: skip
    result = run_installed(installed, tmp_path, sys.executable, train, *overrides)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    assert '"status": "completed"' in (run_dir / "metrics.json").read_text()


def test_a_users_own_config_group_joins_through_the_searchpath(installed, tmp_path, data_root):
    own = tmp_path / "my_conf" / "model"
    own.mkdir(parents=True)
    (own / "wide_mlp.yaml").write_text("_target_: ganlab.models.mlp.MLP\nhidden: 24\n")
    train = str(installed / "bin" / "ganlab-train")
    result = run_installed(
        installed, tmp_path, sys.executable, train, f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]",
        "model=wide_mlp", "--cfg", "job",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "hidden: 24" in result.stdout


@pytest.mark.parametrize("group", sorted(p.name for p in (REPO / "conf").iterdir() if p.is_dir() and p.name != "hydra"))
def test_the_readme_names_every_option_of_every_group(group):
    """The README is the manual: an option added to conf/ without a word there fails here."""
    readme = (REPO / "README.md").read_text()
    missing = [p.stem for p in (REPO / "conf" / group).glob("*.yaml") if f"`{p.stem}`" not in readme]
    assert not missing, f"README.md does not name {group} options {missing}"
