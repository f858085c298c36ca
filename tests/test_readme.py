"""The README's commands and example stay true."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_the_readme_starts_with_the_two_set_up_commands():
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1).splitlines()
    install = "pip install -r requirements.txt && "
    assert first_block[0].startswith(install + "python -m runners.quickstart")
    assert first_block[1].startswith(install + "python -m pytest -q")
    ci = (REPO / ".ci" / "run").read_text()
    assert "pip install --quiet -r requirements.txt" in ci and "python -m pytest -q" in ci


def test_the_minimal_fit_example_runs(tmp_path):
    code = re.search(r"## Minimal `fit`\n\n```python\n(.*?)```", README, re.S).group(1)
    # The same program, scaled down to seconds.
    for old, new in (("training_length=1000", "training_length=10"),
                     ("evaluation_span=500", "evaluation_span=5"),
                     ("rampup_length=300, rampdown_length=300",
                      "rampup_length=3, rampdown_length=3"),
                     ("width=32", "width=4"),
                     ('"teacher_savedmodel"', repr(str(tmp_path / "teacher")))):
        assert old in code, old
        code = code.replace(old, new)
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                               text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (tmp_path / "teacher" / "saved_model.pb").exists()


def test_the_conformance_command_names_existing_fixtures():
    block = re.search(r"## Conformance against the TF1 code\n\n```bash\n(.*?)```", README, re.S)
    command = block.group(1)
    assert command.startswith("python -m tensorflow_mean_teacher.conformance")
    pattern = re.search(r"tests/data/reference/\{,eigen_no_onednn/\}\{(.*?)\}\.npz",
                        command).group(1)
    for prefix in ("", "eigen_no_onednn/"):
        for name in pattern.split(","):
            assert (REPO / "tests/data/reference" / f"{prefix}{name}.npz").exists()


def test_the_own_network_example_runs(tmp_path):
    code = re.search(r"## Your own network\n.*?```python\n(.*?)```", README, re.S).group(1)
    for old, new in (("training_length=300", "training_length=4"),
                     ("rampup_length=100, rampdown_length=100",
                      "rampup_length=2, rampdown_length=2"),
                     ("epochs=25", "epochs=1"), ("size=(600,", "size=(200,"),
                     ("np.arange(600)", "np.arange(200)"),
                     ('"mean_teacher.keras"', repr(str(tmp_path / "mt.keras"))),
                     ('"teacher_savedmodel"', repr(str(tmp_path / "teacher")))):
        assert old in code, old
        code = code.replace(old, new)
    code += "\nassert model.teacher is not backbone and model.student is backbone\n"
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                               text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (tmp_path / "mt.keras").exists()
    assert (tmp_path / "teacher" / "saved_model.pb").exists()


def test_the_temporal_ensembling_example_runs():
    section = README.split("## Temporal Ensembling, and four methods side by side", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    for old, new in (("num_epochs=64", "num_epochs=2"), ("epochs=64)", "epochs=2)"),
                     ("width=16", "width=4")):
        assert old in code, old
        code = code.replace(old, new)
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                               text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert 0.0 <= float(completed.stdout.strip().splitlines()[-1]) <= 1.0


def fault_inventory():
    """The rows (fault, behaviour, test) of the README's fault inventory table."""
    section = README.split("### Faults and bad input", 1)[1].split("\n#", 1)[0]
    table = section.split("| fault or bad input | what the program does | test |", 1)[1]
    rows = []
    for line in table.strip().splitlines()[1:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        rows.append(cells)
    return rows


def test_the_fault_inventory_names_real_tests():
    rows = fault_inventory()
    assert len(rows) >= 25
    for fault, behaviour, test in rows:
        assert fault and behaviour, test
        path, _, name = test.strip("`").partition("::")
        source = (REPO / path).read_text()
        assert re.search(rf"^def {re.escape(name)}\(", source, re.MULTILINE), \
            f"{test} (for {fault!r}) is not a test in {path}"
