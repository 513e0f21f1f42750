"""The tree reads as the README says: the layout table lists every module, and the
request path and control plane never import the operator commands."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^\| `(?P<dir>[a-z_/]+/)` \| (?P<text>.*) \|$")


def layout_rows() -> dict[str, set[str]]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("## Layout"):]
    rows = {}
    for line in table.splitlines():
        if (m := ROW.match(line)) and (ROOT / m["dir"]).is_dir():
            rows[m["dir"]] = set(re.findall(r"`([a-z_0-9]+\.py)`", m["text"]))
    return rows


def test_the_readme_layout_table_lists_every_module_and_no_other():
    rows = layout_rows()
    packages = {f"{p.parent.relative_to(ROOT)}/" for p in ROOT.glob("*/**/__init__.py")
                if ".venv" not in p.parts and "tests" not in p.parts}
    assert packages <= set(rows), f"packages missing from the README's layout table: {sorted(packages - set(rows))}"
    for folder, listed in rows.items():
        modules = {p.name for p in (ROOT / folder).glob("*.py") if p.name != "__init__.py"}
        assert listed == modules, (f"README layout row {folder}: missing {sorted(modules - listed)}, "
                                   f"not in the tree {sorted(listed - modules)}")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_request_path_and_control_plane_never_import_operator_commands():
    for folder in ("proxy/dataplane", "proxy/control", "proxy/common"):
        for path in (ROOT / folder).glob("*.py"):
            bad = {m for m in imported_modules(path) if m.startswith("proxy.commands")}
            assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
    for name in ("app.py", "config.py", "metrics.py"):
        bad = {m for m in imported_modules(ROOT / "proxy" / name) if m.startswith("proxy.commands")}
        assert not bad, f"proxy/{name} imports {sorted(bad)}"


def test_the_exporter_borrows_only_shared_code_from_the_proxy():
    for path in (ROOT / "exporter").glob("*.py"):
        borrowed = {m for m in imported_modules(path) if m.startswith("proxy")}
        allowed = {m for m in borrowed if m.startswith("proxy.common") or m in ("proxy", "proxy.__version__")}
        assert borrowed == allowed, f"{path.relative_to(ROOT)} reaches into {sorted(borrowed - allowed)}"
