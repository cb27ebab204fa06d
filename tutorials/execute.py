# SPDX-License-Identifier: Apache-2.0
"""Execute the tutorials in full and commit-ready form.

Each notebook runs top to bottom in a fresh ``python3`` kernel with ``tutorials/`` as the
working directory and the smoke switch off (``SMOKE_TEST`` and ``CI`` removed from the
environment), then is written back with its outputs and with the metadata that names a
machine, a kernel version or a run time removed: only the kernel's name and the language
stay, as ``tests/test_tutorials.py`` checks.

Run ``python tutorials/execute.py`` (all notebooks) or name some.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import nbclient
import nbformat

logger = logging.getLogger(__name__)

TUTORIALS = Path(__file__).resolve().parent
CELL_TIMEOUT = 1800


def strip(notebook) -> None:
    """Remove machine-specific metadata from a notebook, in place."""
    notebook.metadata = nbformat.from_dict(
        {
            "kernelspec": {
                "display_name": "Python 3",
                "language": "python",
                "name": "python3",
            },
            "language_info": {"name": "python"},
        }
    )
    for cell in notebook.cells:
        cell.metadata = nbformat.from_dict({})


def execute(path: Path) -> float:
    """Run one notebook in full and write it back stripped; returns the seconds taken."""
    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()
    seconds = time.perf_counter() - start
    strip(notebook)
    temporary = path.with_suffix(".ipynb.tmp")
    nbformat.write(notebook, temporary)
    os.replace(temporary, path)
    return seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("SMOKE_TEST", "CI"):
        os.environ.pop(name, None)
    paths = args.notebooks or sorted(TUTORIALS.glob("*.ipynb"))
    for path in paths:
        logger.info("%s: %.0f s", path.name, execute(path.resolve()))


if __name__ == "__main__":
    main()
