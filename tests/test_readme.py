# SPDX-License-Identifier: Apache-2.0
"""The README's quickstart runs as written and shows what the README says it shows."""

import re
from pathlib import Path

import pyro

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_starts_with_the_two_commands():
    commands = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert "python -m models.dwe" in commands[0]
    assert "python -m pytest -q" in commands[1]
    ci = (README.parent / ".ci" / "run").read_text()
    assert "\npython -m pytest -q\n" in ci


def test_quickstart_removes_the_goldstone_modes(capsys):
    pyro.clear_param_store()
    (code,) = python_blocks()
    namespace = {"__name__": "readme"}
    exec(compile(code, str(README), "exec"), namespace)
    assert "prior energy of the means" in capsys.readouterr().out
    # the README quotes about 28 with GoldstonePyroOptim and 16,000 with Adam alone
    assert float(namespace["energy"]) < 100.0
    pyro.clear_param_store()
