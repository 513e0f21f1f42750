"""Test helpers: each alert-rule profile as Prometheus runs it, and promtool unit tests
written from that.

A profile is a shipped Prometheus config (``provisioning/prometheus/prometheus*.yml``) and
the generated rule files its ``rule_files`` load. What a rule sees depends on both: the
samples arrive at the scrape interval of the job they come from, and the rules are
evaluated at their group's interval (else the config's global ``evaluation_interval``).
:class:`Profile` answers those questions from the shipped files, and :func:`promtool_test`
runs input series built at exactly those intervals, carrying the target labels
(``job``, ``instance`` and the static ``host`` label) the shipped config gives them.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = REPO / "provisioning" / "prometheus"
# The Prometheus config each rule profile ships with (compose picks one with
# OLLAMA_SIDECAR_PROMETHEUS_CONFIG; prometheus.yml is the default).
CONFIGS = {
    "production": PROMETHEUS_DIR / "prometheus.yml",
    "fast": PROMETHEUS_DIR / "prometheus-fast.yml",
}
PROXY_JOB = "ollama-proxy"
EXPORTER_JOB = "ollama-exporter"

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(text: str) -> float:
    """A Prometheus duration ('15s', '1m30s') in seconds."""
    parts = re.findall(r"(\d+)(ms|s|m|h|d)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(int(n) * _UNITS[u] for n, u in parts)


def duration(value: float) -> str:
    """Seconds as a promtool duration ('90s'); whole seconds only."""
    assert value == int(value), value
    return f"{int(value)}s"


@dataclass
class Profile:
    name: str
    config_path: Path
    config: dict
    rule_files: list[Path]

    @property
    def groups(self) -> list[dict]:
        return [g for path in self.rule_files for g in yaml.safe_load(path.read_text())["groups"]]

    @property
    def rules(self) -> list[dict]:
        return [rule for group in self.groups for rule in group["rules"]]

    def alert(self, name: str) -> dict:
        [rule] = [r for r in self.rules if r.get("alert") == name]
        return rule

    def job(self, name: str) -> dict:
        [job] = [j for j in self.config["scrape_configs"] if j["job_name"] == name]
        return job

    def scrape_interval(self, job: str) -> float:
        """What Prometheus uses for that job: its own scrape_interval, else the global one
        (else Prometheus's default, 1m)."""
        return seconds(self.job(job).get("scrape_interval")
                       or self.config.get("global", {}).get("scrape_interval", "1m"))

    def eval_interval(self) -> float:
        """The interval every group of the profile is evaluated at (one for all: promtool
        evaluates every group at the test file's single evaluation_interval)."""
        default = self.config.get("global", {}).get("evaluation_interval", "1m")
        intervals = {seconds(g.get("interval", default)) for g in self.groups}
        assert len(intervals) == 1, f"{self.name}: groups evaluated at different intervals {intervals}"
        return intervals.pop()

    def target_labels(self, job: str) -> dict[str, str]:
        """The labels every series scraped from the job's (first) target carries: a static
        target with its static labels, or the proxy replicas' first DNS name with the
        labels the job's relabel_configs set to a constant (``host``)."""
        scrape = self.job(job)
        if "dns_sd_configs" in scrape:
            [dns] = scrape["dns_sd_configs"]
            constants = {r["target_label"]: r["replacement"] for r in scrape.get("relabel_configs", [])
                         if "source_labels" not in r and r.get("action", "replace") == "replace"}
            return {"job": job, "instance": f"{dns['names'][0]}:{dns['port']}", **constants}
        [static] = scrape["static_configs"]
        [target] = static["targets"]
        return {"job": job, "instance": target, **static.get("labels", {})}

    def range_windows(self) -> list[tuple[str, str, float]]:
        """(expression, job, window seconds) for every range selector on a job's series."""
        found = []
        for rule in self.rules:
            for labels, window in re.findall(r"\w+\{([^{}]*)\}\[(\w+)\]", rule["expr"]):
                job = re.search(r'job\s*=\s*"([^"]+)"', labels)
                assert job, f"range selector without a job in {rule['expr']!r}"
                found.append((rule["expr"], job.group(1), seconds(window)))
        return found

    def with_scrape_interval(self, job: str, interval: str) -> "Profile":
        """This profile as if the job were scraped every ``interval`` (another pairing)."""
        config = yaml.safe_load(yaml.safe_dump(self.config))
        [scrape] = [j for j in config["scrape_configs"] if j["job_name"] == job]
        scrape["scrape_interval"] = interval
        scrape.pop("scrape_timeout", None)
        return Profile(f"{self.name}@{job}={interval}", self.config_path, config, self.rule_files)


def load_profile(name: str, config_path: Path | None = None) -> Profile:
    config_path = config_path or CONFIGS[name]
    config = yaml.safe_load(config_path.read_text())
    rule_files = sorted(p for pattern in config.get("rule_files", [])
                        for p in config_path.parent.glob(pattern))
    assert rule_files, f"{config_path.name}: rule_files match no file"
    return Profile(name, config_path, config, rule_files)


def selector(name: str, labels: dict[str, str]) -> str:
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def counter(rate: float, step: float, samples: int, start: int = 0, stop: int | None = None) -> str:
    """promtool values (one per scrape, ``step`` seconds apart, ``samples`` of them) of a
    counter that grows ``rate`` per second between sample ``start`` and ``stop`` (None:
    the last) and stays flat outside."""
    stop = samples if stop is None else stop
    value, values = 0.0, []
    for i in range(samples):
        if start < i <= stop:
            value += rate * step
        values.append(f"{value:g}")
    return " ".join(values)


def promtool_test(profile: Profile, tests: list[dict], tmp_path: Path, name: str = "profile.test.yml"
                  ) -> subprocess.CompletedProcess[str]:
    """Run promtool unit tests against the profile's rule files, evaluated at its interval."""
    from tests.binaries import require_binary

    promtool = require_binary("promtool")
    doc = {"rule_files": [str(p) for p in profile.rule_files],
           "evaluation_interval": duration(profile.eval_interval()),
           "tests": tests}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False, width=1000))
    return subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=300)
