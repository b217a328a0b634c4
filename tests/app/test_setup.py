"""The README's two commands and the scripts behind them: one copy of the set-up, and a clear failure."""

import re
import shutil
import subprocess

from conftest import ROOT


def readme_block(heading: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split(f"## {heading}", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_commands_are_the_scripts():
    assert readme_block("Set up and run") == ["bash run.sh"]
    assert readme_block("Run the tests") == ["bash .ci/run"]
    for script in ("run.sh", ".ci/run"):  # both make the environment the same way: one copy of it
        text = (ROOT / script).read_text()
        assert ". scripts/venv.sh" in text and "ensure_venv requirements" in text, script
        assert subprocess.run(["bash", "-n", str(ROOT / script)]).returncode == 0
    assert "-r requirements.txt" in (ROOT / "requirements-dev.txt").read_text()


def test_a_python_that_cannot_make_a_venv_gets_one_line(tmp_path):
    for name in ("run.sh", "requirements.txt"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "venv.sh", tmp_path / "scripts" / "venv.sh")
    out = subprocess.run(["bash", str(tmp_path / "run.sh")], capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "PYTHON": "/bin/false"})
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "nullviz: error: /bin/false cannot create a virtual environment; install it with: "
        "sudo apt-get install python3-venv"]
    assert not (tmp_path / ".venv").exists()
