"""One vocabulary: metric specs, the label values code sets and docs/metrics.md agree."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from proxy import metrics as pm

ROOT = Path(__file__).resolve().parent.parent


def test_proxy_metrics_builds_exactly_the_metrics_the_specs_define():
    m = pm.ProxyMetrics()
    built = {metric._name for metric in vars(m).values() if hasattr(metric, "_name")}
    assert built == {spec.base for spec in pm.ALL}
    registered = {family.name for family in m.registry.collect()}
    assert registered == {spec.base for spec in pm.ALL}


def test_every_error_type_is_documented_and_every_documented_one_exists():
    doc = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    table = doc[doc.index("### error_type"):]
    table = table[: table.index("\n\n", table.index("|"))]
    documented = {line.split("`")[1] for line in table.splitlines() if line.startswith("| `")}
    assert documented == set(pm.ERROR_TYPES)
    assert pm.SERVER_SIDE_ERRORS <= set(pm.ErrorType)
    sentence = re.search(r"Server-side failures — (.*?) — are", doc)
    assert sentence and set(re.findall(r"`([a-z_0-9]+)`", sentence[1])) == {e.value for e in pm.SERVER_SIDE_ERRORS}


def string_constants(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and node.body and isinstance(node.body[0], ast.Expr)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


# The modules that decide a request's arm and error type. (The admin API and the state file
# also say "stable" and "canary", as the names of a route's two models, not as arms.)
LABEL_SETTERS = [*sorted((ROOT / "proxy" / "dataplane").glob("*.py")),
                 ROOT / "proxy" / "control" / "routing.py", ROOT / "proxy" / "control" / "breaker.py"]


def test_code_sets_error_types_and_arms_through_their_enums_not_string_literals():
    spelled = ({e.value for e in pm.ErrorType} | {a.value for a in pm.Arm}) - {"none"}
    offenders = []
    for path in LABEL_SETTERS:
        offenders += [f"{path.relative_to(ROOT)}:{line} {value!r}"
                      for line, value in string_constants(path) if value in spelled]
    assert not offenders, "use proxy.metrics.ErrorType / Arm instead of: " + ", ".join(offenders)


def test_the_words_for_not_applicable_are_named_apart_in_code():
    # "none" on the wire means no route, no model, no session or success; in code each
    # has its own name, so no module on the request path spells it out.
    offenders = [f"{path.relative_to(ROOT)}:{line}" for path in LABEL_SETTERS
                 for line, value in string_constants(path) if value in ("none", "other", "unknown")]
    assert not offenders, "use NO_ROUTE / NO_MODEL / NO_SESSION / OVERFLOW / ErrorType.NONE: " + ", ".join(offenders)
