"""`ollama-sidecar generate`: the committed files are exactly what the code produces."""

from __future__ import annotations

import shutil
from pathlib import Path

from proxy import cli
from proxy.commands.generate import generated_files

ROOT = Path(__file__).resolve().parent.parent


def test_committed_generated_files_match_the_code():
    files = generated_files()
    assert len(files) == 8  # two rule files, four dashboards, the config schema
    stale = [rel for rel, content in files.items()
             if not (ROOT / rel).is_file() or (ROOT / rel).read_text() != content]
    assert not stale, f"run 'ollama-sidecar generate' and commit: {stale}"


def test_generate_into_an_empty_root_writes_byte_identical_files(tmp_path, capsys):
    assert cli.main(["generate", "--root", str(tmp_path)]) == 0
    for rel in generated_files():
        assert (tmp_path / rel).read_bytes() == (ROOT / rel).read_bytes(), rel
    # Twice in a row: nothing changes the second time.
    capsys.readouterr()
    assert cli.main(["generate", "--root", str(tmp_path)]) == 0
    assert "0 changed" in capsys.readouterr().out


def test_check_lists_drifted_files_and_writes_nothing(tmp_path, capsys):
    for rel in generated_files():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / rel, tmp_path / rel)
    assert cli.main(["generate", "--check", "--root", str(tmp_path)]) == 0

    rules = tmp_path / "provisioning/prometheus/rules-fast/ollama-sidecar.rules.yml"
    rules.write_text(rules.read_text().replace("for: 2s", "for: 1m"))
    (tmp_path / "provisioning/grafana/dashboards/sessions.json").unlink()
    capsys.readouterr()
    assert cli.main(["generate", "--check", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "provisioning/prometheus/rules-fast/ollama-sidecar.rules.yml" in err
    assert "provisioning/grafana/dashboards/sessions.json" in err
    assert "rules/ollama-sidecar.rules.yml\n" not in err.replace("rules-fast/", "")  # untouched file not listed
    assert "for: 1m" in rules.read_text()  # --check wrote nothing
    assert not (tmp_path / "provisioning/grafana/dashboards/sessions.json").exists()


def test_a_dashboard_the_code_no_longer_makes_is_reported_then_removed(tmp_path, capsys):
    assert cli.main(["generate", "--root", str(tmp_path)]) == 0
    old = tmp_path / "provisioning/grafana/dashboards/renamed-long-ago.json"
    old.write_text("{}")
    capsys.readouterr()
    assert cli.main(["generate", "--check", "--root", str(tmp_path)]) == 1
    assert "renamed-long-ago.json" in capsys.readouterr().err and old.exists()
    assert cli.main(["generate", "--root", str(tmp_path)]) == 0
    assert not old.exists()
    assert cli.main(["generate", "--check", "--root", str(tmp_path)]) == 0


def test_generate_config_renders_the_proxy_files_decisions_into_the_production_rules(tmp_path, capsys):
    """One vocabulary: the rules judge with the proxy config's `decisions:`; the fast
    profile (the demo) keeps its own."""
    config = tmp_path / "proxy.yaml"
    config.write_text("upstream: http://gpu1:11434\ndecisions: {min_failures: 9, ttft_slo: 5, ttft_margin: 0.1}\n")
    assert cli.main(["generate", "--config", str(config), "--root", str(tmp_path)]) == 0
    production = (tmp_path / "provisioning/prometheus/rules/ollama-sidecar.rules.yml").read_text()
    fast = (tmp_path / "provisioning/prometheus/rules-fast/ollama-sidecar.rules.yml").read_text()
    assert "ratio_rate{arm=\"canary\"}\n" in production and "* 300 >= 9\n" in production
    assert 'le="5.0"' in production and "0.005) + 0.1\n" in production
    assert "* 10 >= 3\n" in fast and 'le="1.0"' in fast
    config.write_text("decisions: {ttft_slo: 3}\n")
    assert cli.main(["generate", "--config", str(config), "--root", str(tmp_path)]) == 2
    assert "decisions.ttft_slo: 3 is not a bucket bound" in capsys.readouterr().err
