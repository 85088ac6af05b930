"""One way to install: pyproject.toml lists every package the project imports, environment.yml
and make install it at the tested torch (constraints.txt), one Python version is stated
everywhere, the notebooks' kernel is the one make registers; the notebooks' setup cell installs
the course on Colab or Kaggle, tested in a fresh environment outside the repository."""
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import nbformat
import pytest
import torch
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from apl_core import setup_cell
from apl_core.repository import course_notebooks, repository_url

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
ENVIRONMENT = yaml.safe_load((ROOT / "environment.yml").read_text())
CONSTRAINTS = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                   if line and not line.startswith("#"))


def requirements() -> list[Requirement]:
    """The project's dependencies and every extra's, the extras naming the project left out."""
    listed = PROJECT["dependencies"] + [r for extra in PROJECT["optional-dependencies"].values()
                                        for r in extra]
    return [Requirement(r) for r in listed if Requirement(r).name != PROJECT["name"]]


def test_environment_yml_installs_the_project_and_holds_only_what_conda_must_provide():
    version = PROJECT["requires-python"].removeprefix(">=")
    assert ENVIRONMENT["dependencies"] == [f"python={version}", "pip",
                                           {"pip": ["-c constraints.txt", "-e .[dev]"]}]


def test_one_python_version_is_stated_everywhere():
    version = PROJECT["requires-python"].removeprefix(">=")
    assert re.fullmatch(r"3\.\d+", version), PROJECT["requires-python"]
    major, minor = version.split(".")
    assert f"sys.version_info >= ({major}, {minor})" in (ROOT / "Makefile").read_text()
    for doc in ("README.md", "docs/testing.md"):
        stated = set(re.findall(r"Python (3\.\d+)", (ROOT / doc).read_text()))
        assert stated == {version}, f"{doc} states Python {stated}"
    assert sys.version_info[:2] == (int(major), int(minor)), "the tests run on another Python"


def test_torch_is_a_range_that_keeps_a_services_torch_and_make_installs_the_tested_pair():
    declared = {r.name: r for r in requirements()}
    for package in ("torch", "torchvision"):
        assert "==" not in str(declared[package].specifier), f"{package} must stay a range"
        assert declared[package].specifier.contains(CONSTRAINTS[package])
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()
    assert Version(torch.__version__).base_version == CONSTRAINTS["torch"], \
        "the tests run on another torch than constraints.txt pins"


def imported_modules() -> dict[str, set[str]]:
    """Top-level module -> the files that import it: the package, the tests, the scripts, the
    notebooks' code, and the site's Sphinx extensions and theme (site/conf.py)."""
    sources = {path: path.read_text() for folder in ("apl_core", "tests", "benchmarks",
                                                     "experiments", "site")
               for path in (ROOT / folder).rglob("*.py")}
    for notebook in (ROOT / "notebooks").glob("*.ipynb"):
        cells = nbformat.read(notebook, as_version=4).cells
        sources[notebook] = "\n".join(c.source for c in cells if c.cell_type == "code")
    modules: dict[str, set[str]] = {}
    for path, source in sources.items():
        for node in ast.walk(ast.parse(source)):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else
                     [])
            for name in names:
                modules.setdefault(name.split(".")[0], set()).add(path.name)
    conf = ast.parse((ROOT / "site" / "conf.py").read_text())
    for node in ast.walk(conf):
        if isinstance(node, ast.Assign) and node.targets[0].id in ("extensions", "html_theme"):
            for value in ast.walk(node.value):
                if isinstance(value, ast.Constant):
                    modules.setdefault(value.value.split(".")[0], set()).add("site/conf.py")
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "find_spec":
            modules.setdefault(node.args[0].value, set()).add("site/conf.py")
    return modules


def test_every_imported_package_is_declared():
    local = {path.stem for folder in ("tests", "benchmarks", "experiments", "tests/scripts")
             for path in (ROOT / folder).glob("*.py")} | {"apl_core"}
    declared = {canonicalize_name(r.name) for r in requirements()}
    distributions = packages_distributions()
    missing = {}
    for module, files in imported_modules().items():
        if module in sys.stdlib_module_names or module in local:
            continue
        provided_by = {canonicalize_name(d) for d in distributions.get(module, [module])}
        if not provided_by & declared:
            missing[module] = sorted(files)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
    assert {"sphinx", "myst-nb", "sphinx-book-theme", "sphinx-mathjax-offline"} <= declared


def test_readme_commands_are_the_makefile_targets_and_ci_runs_the_test_command():
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in ("run", "test", "lab", "site"):
        assert f"make {target}" in readme and f"\n{target}:" in makefile, target
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_make_registers_the_kernel_the_notebooks_name():
    spec = setup_cell.KERNELSPEC
    assert f'KERNEL  := --name {spec["name"]} --display-name "{spec["display_name"]}"' in \
        (ROOT / "Makefile").read_text()
    for name in course_notebooks():
        notebook = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        assert dict(notebook.metadata["kernelspec"]) == spec, name


def test_license_and_citation_say_what_pyproject_says():
    assert PROJECT["license"] == "MIT" and PROJECT["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["license"] == "MIT"
    assert citation["version"] == PROJECT["version"]
    assert citation["repository-code"] == repository_url()


def test_the_repositorys_address_is_one_setting():
    url = repository_url()
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url)  # Colab opens GitHub paths
    readme = (ROOT / "README.md").read_text()
    linked = re.findall(r"https://colab\.research\.google\.com/github/([^)\s]+)", readme)
    assert linked and all(path.startswith(url.removeprefix("https://github.com/") + "/")
                          for path in linked)
    assert f'"{url}"' in setup_cell.cell_source()


# ---------------------------------------------------------------- the notebooks' setup cell

def test_every_notebooks_first_code_cell_is_the_setup_cell():
    done = subprocess.run([sys.executable, "-m", "apl_core.setup_cell", "--check"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_setup_cell_is_written_once_before_the_first_code_cell(tmp_path):
    title = nbformat.v4.new_markdown_cell("# 01 · a notebook")
    parameters = nbformat.v4.new_code_cell('profile = "quick"')
    older = nbformat.v4.new_code_cell(setup_cell.MARK + ": an older text\nimport os")
    path = tmp_path / "01_a.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[title, older, parameters]), path)

    assert setup_cell.write_into(path)
    cells = nbformat.read(path, as_version=4).cells
    assert [c.source for c in cells] == [title.source, setup_cell.cell_source(),
                                         parameters.source]
    assert cells[1].id == "setup" and not cells[1].outputs
    written = path.read_bytes()
    assert not setup_cell.write_into(path) and path.read_bytes() == written
    assert nbformat.read(path, as_version=4).metadata["kernelspec"] == setup_cell.KERNELSPEC


def test_the_setup_cell_is_python_that_names_the_repository():
    source = setup_cell.cell_source()
    compile(source, "setup cell", "exec")
    assert source.startswith(setup_cell.MARK) and "{repository}" not in source
    assert len(source.splitlines()) <= 25, "a short cell"


def test_without_access_to_the_repository_the_setup_cell_says_what_to_upload(tmp_path):
    """A kernel without apl_core (python -S: no site-packages) and a repository it cannot
    reach: one error that names the folder to upload the repository to."""
    env = {**os.environ, "APL_COURSE_SOURCE": str(tmp_path / "nowhere")}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-S", "-c", setup_cell.cell_source()], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    error = done.stderr.strip().splitlines()
    assert error[-2].startswith(f"RuntimeError: could not clone {tmp_path / 'nowhere'}: ")
    assert error[-1] == (f"Without access to it, upload the repository (its zip, unpacked) to "
                         f"{tmp_path / 'apl-course'}, or turn on the notebook's internet "
                         f"access, and run this cell again")
    assert not (tmp_path / "apl-course").exists()


def first_section(notebook: Path, destination: Path) -> None:
    """Notebook 01's cells up to its second section, in the smoke profile, with a last cell
    that prints where torch and apl_core were imported from and where the notebook works."""
    nb = nbformat.read(notebook, as_version=4)
    sections = [i for i, c in enumerate(nb.cells)
                if c.cell_type == "markdown" and c.source.startswith("## ")]
    nb.cells = nb.cells[:sections[1]]
    for cell in nb.cells:
        if "parameters" in cell.metadata.get("tags", []):
            cell.source = cell.source.replace('profile = "quick"', 'profile = "smoke"')
    nb.cells.append(nbformat.v4.new_code_cell(
        "import os, apl_core\nprint(torch.__file__, apl_core.__file__, os.getcwd(), sep='\\n')"))
    nbformat.write(nb, destination)


@pytest.mark.slow  # a fresh environment, an install and a kernel: about 30 s
def test_a_notebook_copied_out_of_the_repository_installs_the_course_where_it_runs(
        tmp_path, monkeypatch):
    """What a Colab or Kaggle user does: open notebook 01 alone in an environment that has the
    service's packages (here: this environment's, through a .pth file) but not the course,
    and run its first section. The setup cell clones the repository (here: the working tree,
    committed to a local repository, named by APL_COURSE_SOURCE; pip offline) and installs
    it, keeping the service's torch; the figures go to the clone's course_output/, wherever
    the notebook was opened."""
    import nbclient

    source = tmp_path / "repository"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for name in files:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    for command in (["init", "--quiet"], ["add", "--all"], ["commit", "--quiet", "-m", "x"]):
        subprocess.run(git + command, cwd=source, check=True, capture_output=True)

    service = tmp_path / "service"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(service)], check=True)
    site_packages = next(service.glob("lib/python3*/site-packages"))
    shared = next(Path(p) for p in sys.path if p.endswith("site-packages")
                  and (Path(p) / "torch").is_dir())
    (site_packages / "service.pth").write_text(f"{shared}\n")
    kernels = tmp_path / "jupyter" / "kernels" / setup_cell.KERNELSPEC["name"]
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [str(service / "bin" / "python"), "-m", "ipykernel_launcher", "-f",
                 "{connection_file}"], "display_name": "the service", "language": "python"}))
    monkeypatch.delenv("PYTHONPATH", raising=False)
    for name, value in {"JUPYTER_PATH": str(tmp_path / "jupyter"), "OMP_NUM_THREADS": "1",
                        "APL_COURSE_SOURCE": str(source), "PIP_NO_INDEX": "1",
                        "PIP_NO_BUILD_ISOLATION": "0"}.items():  # "0": no build isolation
        monkeypatch.setenv(name, value)
    python = str(service / "bin" / "python")
    assert subprocess.run([python, "-c", "import apl_core"], cwd=tmp_path,
                          capture_output=True).returncode, \
        "the service's environment must not have the course"

    opened = tmp_path / "downloads"  # where the student opened the notebook
    opened.mkdir()
    notebook = opened / "01_puzzle_construction.ipynb"
    first_section(ROOT / "notebooks" / notebook.name, notebook)
    executed = nbclient.NotebookClient(
        nbformat.read(notebook, as_version=4), timeout=300,
        kernel_name=setup_cell.KERNELSPEC["name"],
        resources={"metadata": {"path": str(opened)}}).execute()

    errors = [o for c in executed.cells for o in c.get("outputs", [])
              if o.output_type == "error"]
    assert not errors, errors[0]["evalue"]
    printed = executed.cells[-1].outputs[0]["text"].split("\n")
    checkout = opened / "apl-course"
    assert printed[:3] == [str(shared / "torch" / "__init__.py"),
                           str(checkout / "apl_core" / "__init__.py"),
                           str(checkout / "notebooks")]
    assert not list(site_packages.glob("torch*")), "pip installed a torch of its own"
    assert list(site_packages.glob("apl_course-*.dist-info"))
    assert list((checkout / "course_output" / "figures").glob("01_*.png"))
    assert sorted(p.name for p in opened.iterdir()) == ["01_puzzle_construction.ipynb",
                                                        "apl-course"]
