"""The README's two set-up commands come first, and CI runs exactly the README's test command."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _commands():
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_ci_runs_the_readme_test_command():
    main_cmd, test_cmd = _commands()
    ci = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line and not line.startswith(("#", "set ", "cd "))
    ]
    assert ci[-1] == test_cmd  # the README's test command, as written
    # before it, only what the tests need from the system (Shared rules: Debian packages, as root)
    assert all(line.strip().startswith(("if ", "apt-get ", "fi")) for line in ci[:-1]), ci
    assert "pytest" in test_cmd and "ruff check" in test_cmd
    assert "clipedge classify models/demo/examples/" in main_cmd and "torch" not in main_cmd
