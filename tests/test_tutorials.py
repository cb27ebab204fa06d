# SPDX-License-Identifier: Apache-2.0
"""Execute the tutorials in ``tutorials/`` with the smoke switch on, so they cannot rot.

Each notebook runs in a fresh ``python3`` kernel with ``tutorials/`` as the working
directory and ``SMOKE_TEST=1`` in the environment, which shrinks the data and the number
of steps; any error in a cell fails the test. The committed notebooks are checked for
stripped metadata and for outputs without warnings (which would carry machine paths).
"""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
CELL_TIMEOUT = 300


def test_tutorials_exist():
    names = [path.name for path in NOTEBOOKS]
    assert names == [
        "01_goldstone_modes.ipynb",
        "02_movielens.ipynb",
        "03_word_embeddings.ipynb",
    ]


def test_committed_outputs_are_stripped():
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        assert set(notebook.metadata) <= {"kernelspec", "language_info"}, path.name
        assert notebook.metadata["kernelspec"]["name"] == "python3"
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        images = [
            o for c in code for o in c.outputs if "image/png" in o.get("data", {})
        ]
        assert len(images) >= 2, f"{path.name} lacks its figures"
        assert "smoke_test" in code[0].source
        for cell in notebook.cells:
            assert not cell.metadata, f"{path.name}: cell metadata {cell.metadata}"
        for index, cell in enumerate(code):
            for output in cell.outputs:
                assert output.get("name") != "stderr", f"{path.name}, cell {index}"
                assert output.output_type != "error", f"{path.name}, cell {index}"
        # nothing that names the machine: no version stamps, no local paths
        assert set(notebook.metadata.get("language_info", {})) <= {"name"}, path.name
        text = nbformat.writes(notebook)
        for local in {str(TUTORIALS.parent), str(Path.home())} - {"/"}:
            assert local not in text, f"{path.name} mentions {local}"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_tutorial_runs(path, monkeypatch):
    # the kernel inherits this process's environment
    monkeypatch.setenv("SMOKE_TEST", "1")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(TUTORIALS)}},
    )
    client.execute()

    # every code cell ran (an error would have raised above)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code)
