"""``ollama-sidecar usage``: per-tenant requests, tokens and GPU time, read from a real
proxy's /metrics and from a real Prometheus scraping two real proxies, with a faithful
fake Ollama behind them (its final objects carry the durations in nanoseconds)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
import yaml
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from proxy.cli import main
from proxy.commands import usage
from proxy.commands.children import Child, free_port
from proxy.metrics import TENANT_REQUESTS
from proxy.monitoring import DEFAULT as MONITORING
from tests.binaries import require_binary
from tests.conftest import running_proxy, wait_for
from tests.ollama_fake import chat_chunks, ndjson

REPO = Path(__file__).resolve().parent.parent
NS = 1_000_000_000
# Two models with different costs, so GPU time and tokens tell the tenants apart.
FINALS = {
    "small:1b": {"prompt_eval_count": 100, "eval_count": 20, "load_duration": int(0.5 * NS),
                 "prompt_eval_duration": int(0.25 * NS), "eval_duration": int(1.0 * NS), "total_duration": 2 * NS},
    "big:70b": {"prompt_eval_count": 1000, "eval_count": 50, "load_duration": 2 * NS,
                "prompt_eval_duration": 3 * NS, "eval_duration": 5 * NS, "total_duration": 11 * NS},
}
GPU = {"small:1b": 1.75, "big:70b": 10.0}  # load + prompt evaluation + generation, in seconds
SUPPORT_KEY, ANALYTICS_KEY = "sk-support-1", "sk-analytics-1"


def tenants(support_limits: dict[str, int] | None = None) -> dict[str, Any]:
    """The issue's shape: a plain key with limits, and a key given as its digest."""
    support: dict[str, Any] = {"keys": [SUPPORT_KEY]}
    if support_limits:
        support["limits"] = support_limits
    digest = "sha256:" + hashlib.sha256(ANALYTICS_KEY.encode()).hexdigest()
    return {"support-bot": support, "analytics": {"keys": [digest]}}


def ollama_chat(request: Request) -> Response:
    """Ollama's /api/chat: NDJSON ending in the final object; 404 for an unknown model."""
    model = json.loads(request.get_data())["model"]
    if model not in FINALS:
        return Response(json.dumps({"error": f"model \"{model}\" not found, try pulling it first"}), status=404,
                        content_type="application/json")
    return Response(ndjson(chat_chunks(model, ["Hi", "!"], final=dict(FINALS[model]))),
                    content_type="application/x-ndjson")


@pytest.fixture
def ollama(httpserver: HTTPServer) -> str:
    httpserver.expect_request("/api/chat").respond_with_handler(ollama_chat)
    httpserver.expect_request("/api/version").respond_with_json({"version": "0.12.6"})
    return httpserver.url_for("/").rstrip("/")


def proxy_settings(upstream: str, **extra: Any) -> dict[str, Any]:
    return {"upstream": upstream, "access_log": False, "auth": {"tenants": tenants()}} | extra


def chat(url: str, key: str, model: str) -> int:
    reply = requests.post(f"{url}/api/chat", headers={"Authorization": f"Bearer {key}"}, timeout=15,
                          json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
    reply.content  # read the whole stream: the request is counted when it ends
    return reply.status_code


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real command line, without the caller's OLLAMA_SIDECAR_* variables."""
    return subprocess.run([sys.executable, "-m", "proxy.cli", "usage", *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env={"PATH": "/usr/bin:/bin", **(env or {})})


def parse_table(stdout: str) -> tuple[str, dict[str, dict[str, str]]]:
    """The header line and the rows by their first cell (columns are 2+ spaces apart)."""
    header, titles, *lines = stdout.splitlines()
    columns = re.split(r"\s{2,}", titles.strip())
    rows = {}
    for line in lines:
        if set(line.strip()) <= {"-", " "}:
            continue
        cells = re.split(r"\s{2,}", line.strip())
        assert len(cells) == len(columns), line
        rows[cells[0]] = dict(zip(columns, cells))
    return header, rows


def number(cell: str) -> float:
    return float(cell.replace(",", "").rstrip("%"))


# --- (a) the proxy's own counters ---------------------------------------------------------------

def test_the_table_gives_each_tenants_requests_refusals_errors_tokens_and_gpu_time(ollama):
    settings = proxy_settings(ollama, auth={"tenants": tenants({"requests_per_minute": 3})})
    with running_proxy(settings) as p:
        statuses = [chat(p.url, SUPPORT_KEY, "small:1b") for _ in range(4)]
        assert statuses == [200, 200, 200, 429]  # the fourth is over requests_per_minute
        assert [chat(p.url, ANALYTICS_KEY, m) for m in ("big:70b", "big:70b", "missing")] == [200, 200, 404]

        done = cli("--proxy", p.url)
    assert done.returncode == 0, done.stderr
    header, rows = parse_table(done.stdout)
    assert header == f"Tenant usage since the proxy started ({p.url}/metrics; this replica only)"
    assert list(rows) == ["analytics", "support-bot", "TOTAL"]  # most GPU time first, the total last
    expected = {
        "analytics": (3, 0, 1, 2000, 100, 2 * GPU["big:70b"]),
        "support-bot": (4, 1, 0, 300, 60, 3 * GPU["small:1b"]),
        "TOTAL": (7, 1, 1, 2300, 160, 2 * GPU["big:70b"] + 3 * GPU["small:1b"]),
    }
    columns = ("REQUESTS", "REFUSED", "ERRORS", "PROMPT TOKENS", "COMPLETION TOKENS", "GPU SECONDS")
    for tenant, figures in expected.items():
        assert tuple(number(rows[tenant][c]) for c in columns) == pytest.approx(figures), tenant
    whole = expected["TOTAL"][-1]
    assert rows["analytics"]["GPU SHARE"] == f"{20 / whole:.1%}" == "79.2%"
    assert rows["support-bot"]["GPU SHARE"] == f"{5.25 / whole:.1%}"
    assert rows["TOTAL"]["GPU SHARE"] == "100.0%"


def test_json_by_model_and_a_metrics_url_that_points_elsewhere(ollama):
    with running_proxy(proxy_settings(ollama)) as p:
        for model in ("small:1b", "big:70b"):
            assert chat(p.url, ANALYTICS_KEY, model) == 200
        assert chat(p.url, SUPPORT_KEY, "small:1b") == 200
        # --metrics-url wins over --proxy (metrics.listen serves /metrics on its own port); a
        # base URL gets /metrics.
        done = cli("--proxy", "http://127.0.0.1:9", "--metrics-url", p.url, "--json", "--by-model")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["source"] == "proxy" and doc["url"] == f"{p.url}/metrics" and doc["since"] is None
    assert "since the proxy started" in doc["period"]
    keyed = {(r["tenant"], r["model"]): r for r in doc["rows"]}
    assert list(keyed) == [("analytics", "big:70b"), ("analytics", "small:1b"), ("support-bot", "small:1b")]
    assert keyed[("analytics", "big:70b")] == {
        "tenant": "analytics", "model": "big:70b", "requests": 1, "refused": 0, "errors": 0, "prompt_tokens": 1000,
        "completion_tokens": 50, "gpu_seconds": 10.0, "gpu_share": pytest.approx(10 / 13.5)}
    assert doc["total"] == {"requests": 3, "refused": 0, "errors": 0, "prompt_tokens": 1200, "completion_tokens": 90,
                            "gpu_seconds": 13.5, "gpu_share": 1.0}


def test_the_metrics_token_is_sent_when_the_proxy_asks_for_one(ollama, tmp_path):
    token = tmp_path / "metrics.token"
    token.write_text("scrape-secret\n")
    with running_proxy(proxy_settings(ollama, metrics={"token_file": str(token)})) as p:
        refused = cli("--proxy", p.url)
        by_env = cli("--proxy", p.url, env={"OLLAMA_SIDECAR_METRICS_TOKEN": "scrape-secret"})
        by_file = cli("--proxy", p.url, "--metrics-token-file", str(token))
    assert refused.returncode == 4 and refused.stdout == ""
    assert "OLLAMA_SIDECAR_METRICS_TOKEN" in refused.stderr and len(refused.stderr.splitlines()) == 1
    for done in (by_env, by_file):
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[1].startswith("no tenant traffic in this period")


def test_metrics_on_another_listener_says_where_to_point(ollama, capsys):
    with running_proxy(proxy_settings(ollama, metrics={"listen": "127.0.0.1:1"})) as p:
        assert main(["usage", "--proxy", p.url]) == 1
    err = capsys.readouterr().err
    assert "metrics.listen" in err and "--metrics-url" in err and len(err.splitlines()) == 1


def test_a_page_that_is_not_the_proxys_metrics_is_refused(httpserver, capsys):
    httpserver.expect_request("/metrics").respond_with_data("# TYPE up gauge\nup 1\n")
    assert main(["usage", "--metrics-url", httpserver.url_for("/metrics")]) == 1
    assert "is it the proxy's /metrics?" in capsys.readouterr().err


# --- (b) Prometheus scraping two replicas ---------------------------------------------------------

@contextmanager
def prometheus_scraping(targets: list[str], workdir: Path) -> Iterator[str]:
    """A real Prometheus scraping ``targets`` (host:port) every 250 ms under the proxies'
    job name, as provisioning/ does; yields its URL."""
    binary = require_binary("prometheus")
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump({"scrape_configs": [{
        "job_name": MONITORING.proxy_job, "scrape_interval": "250ms", "scrape_timeout": "250ms",
        "static_configs": [{"targets": targets}]}]}))
    port = free_port()
    child = Child("prometheus", [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{port}"], workdir / "prometheus.log").start()
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert child.alive(), f"prometheus exited: {child.log_tail()}"
        try:
            return requests.get(f"{url}/-/ready", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    try:
        wait_for(ready, 30, "Prometheus to be ready")
        yield url
    finally:
        child.stop()


def query(url: str, promql: str) -> list[dict[str, Any]]:
    return requests.get(f"{url}/api/v1/query", params={"query": promql}, timeout=5).json()["data"]["result"]


def scalar(url: str, promql: str) -> float:
    result = query(url, promql)
    return float(result[0]["value"][1]) if result else 0.0


def test_prometheus_sums_the_tenants_use_over_every_replica(ollama, tmp_path):
    """Each series exists before Prometheus first scrapes it (a warm-up request per tenant
    and replica), so ``increase()`` counts all of the traffic after it. ``increase()``
    extrapolates by at most half a scrape interval before the first sample and 1.1 of one
    after the last: with 24 or more intervals sampled, a figure lies between the exact one
    and 1.07 times it, and whole requests round to the exact count."""
    job = f'job="{MONITORING.proxy_job}"'
    requests_total = f"{TENANT_REQUESTS.name}{{{job}}}"
    with running_proxy(proxy_settings(ollama)) as a, running_proxy(proxy_settings(ollama)) as b:
        for replica in (a, b):
            assert chat(replica.url, SUPPORT_KEY, "small:1b") == 200
            assert chat(replica.url, ANALYTICS_KEY, "big:70b") == 200
        with prometheus_scraping([a.url.removeprefix("http://"), b.url.removeprefix("http://")], tmp_path) as prom:
            wait_for(lambda: len(query(prom, requests_total)) == 4, 30, "both tenants' series on both replicas")
            # counted: support-bot 2 on a and 1 on b, analytics 1 on b
            assert [chat(a.url, SUPPORT_KEY, "small:1b") for _ in range(2)] == [200, 200]
            assert chat(b.url, SUPPORT_KEY, "small:1b") == 200
            assert chat(b.url, ANALYTICS_KEY, "big:70b") == 200
            wait_for(lambda: scalar(prom, f"sum({requests_total})") == 8
                     and scalar(prom, f"min(count_over_time({requests_total}[5m]))") >= 25,
                     60, "Prometheus to scrape the traffic 25 times")

            table = cli("--prometheus", prom, "--since", "5m")
            as_json = cli("--prometheus", prom, "--since", "5m", "--json")
            single = cli("--proxy", a.url, "--json")
    assert table.returncode == 0, table.stderr
    header, rows = parse_table(table.stdout)
    assert header == f"Tenant usage over the last 5m from Prometheus at {prom} (job {MONITORING.proxy_job}, " \
                     "all instances)"
    assert list(rows) == ["analytics", "support-bot", "TOTAL"]  # 10 GPU seconds against 5.25

    assert as_json.returncode == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    assert doc["source"] == "prometheus" and doc["since"] == 300 and doc["job"] == MONITORING.proxy_job
    got = {r["tenant"]: r for r in doc["rows"]}
    expected = {"support-bot": {"prompt_tokens": 300, "completion_tokens": 60, "gpu_seconds": 3 * GPU["small:1b"]},
                "analytics": {"prompt_tokens": 1000, "completion_tokens": 50, "gpu_seconds": GPU["big:70b"]}}
    assert (got["support-bot"]["requests"], got["analytics"]["requests"]) == (3, 1)
    for tenant, figures in expected.items():
        assert got[tenant]["refused"] == got[tenant]["errors"] == 0
        for name, exact in figures.items():
            assert exact <= got[tenant][name] <= exact * 1.07, (tenant, name, got[tenant][name])
        assert number(rows[tenant]["REQUESTS"]) == got[tenant]["requests"]
    assert got["support-bot"]["gpu_share"] == pytest.approx(5.25 / 15.25, rel=0.07)

    # The proxy's own counters are one replica's, warm-up included.
    assert single.returncode == 0, single.stderr
    mine = {r["tenant"]: r for r in json.loads(single.stdout)["rows"]}
    assert (mine["support-bot"]["requests"], mine["analytics"]["requests"]) == (3, 1)


# --- (c) usage errors and unreachable sources ----------------------------------------------------

def test_since_without_prometheus_is_a_usage_error_saying_why(capsys):
    assert main(["usage", "--since", "1h", "--proxy", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "--since needs --prometheus" in err and "since it started" in err


@pytest.mark.parametrize("since", ["yesterday", "0", "5x"])
def test_a_bad_since_is_a_usage_error(since, capsys):
    assert main(["usage", "--prometheus", "http://127.0.0.1:9", "--since", since]) == 2
    assert "--since" in capsys.readouterr().err


def test_unreachable_prometheus_is_one_clear_line_and_exit_3(capsys):
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["usage", "--prometheus", url, "--timeout", "2"]) == 3
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(f"ollama-sidecar usage: cannot reach Prometheus at {url}")
    assert len(captured.err.splitlines()) == 1 and "api/v1/query" not in captured.err


def test_a_query_prometheus_rejects_exits_1_naming_the_error(httpserver, capsys):
    httpserver.expect_request("/api/v1/query").respond_with_json(
        {"status": "error", "errorType": "bad_data", "error": "parse error"}, status=400)
    assert main(["usage", "--prometheus", httpserver.url_for("/").rstrip("/")]) == 1
    err = capsys.readouterr().err
    assert "rejected a query" in err and "parse error" in err and len(err.splitlines()) == 1


def test_unreachable_proxy_exits_3(capsys):
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["usage", "--proxy", url, "--timeout", "2"]) == 3
    assert f"cannot reach the proxy's metrics at {url}/metrics" in capsys.readouterr().err


def test_queries_sum_over_instances_by_tenant_from_the_metric_specs():
    promql = usage.queries('job="ollama-proxy"', usage.promql_duration(86400), by_model=False)
    assert promql[TENANT_REQUESTS.name] == (f'sum by (tenant, error_type) (increase({TENANT_REQUESTS.name}'
                                            f'{{job="ollama-proxy"}}[86400s]))')
    assert usage.promql_duration(1.5) == "1500ms"
