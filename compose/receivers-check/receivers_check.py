"""Say at start-up, in one line, whether Alertmanager notifies any person.

The compose service `receivers-check` runs this once before Alertmanager starts, on the
very file Alertmanager loads (provisioning/alertmanager/alertmanager.yml, mounted at
/etc/alertmanager). As shipped, the only integration is the proxy's rollback webhook:
the stack rolls a bad canary back but pages nobody, and this prints a WARNING line
(`docker compose -f compose/docker-compose.yml logs receivers-check` shows it later).

A receiver notifies people when the route tree uses it and it has an integration other
than the proxy's webhook (POST …/admin/alertmanager). The script never fails the stack:
it exits 0 whatever it finds, and says so when it cannot read the file.

    python receivers_check.py [ALERTMANAGER_YML]
"""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import urlsplit

import yaml

DEFAULT_PATH = "/etc/alertmanager/alertmanager.yml"
# The proxy's Alertmanager webhook: it acts on rollback alerts, it tells nobody.
PROXY_WEBHOOK_PATH = "/admin/alertmanager"
HOWTO = ('uncomment an example receiver in provisioning/alertmanager/alertmanager.yml '
         '(docs/monitoring-stack.md, "Notifying humans")')


def routed_receivers(route: dict[str, Any]) -> set[str]:
    """Every receiver the route tree can send to."""
    names = {route["receiver"]} if route.get("receiver") else set()
    for child in route.get("routes") or []:
        names |= routed_receivers(child)
    return names


def is_proxy_webhook(kind: str, integration: dict[str, Any]) -> bool:
    url = integration.get("url") if kind == "webhook_configs" else None
    return isinstance(url, str) and urlsplit(url).path.rstrip("/") == PROXY_WEBHOOK_PATH


def human_integrations(receiver: dict[str, Any]) -> list[str]:
    """The receiver's integrations that reach people: 'slack', 'email', …"""
    found = []
    for key, integrations in receiver.items():
        if not key.endswith("_configs") or not isinstance(integrations, list):
            continue
        if any(not is_proxy_webhook(key, i) for i in integrations if isinstance(i, dict)):
            found.append(key.removesuffix("_configs"))
    return found


def human_receivers(config: dict[str, Any]) -> dict[str, list[str]]:
    """Receiver name -> its integrations for people, for the receivers the routes use."""
    used = routed_receivers(config.get("route") or {})
    found = {}
    for receiver in config.get("receivers") or []:
        kinds = human_integrations(receiver)
        if receiver.get("name") in used and kinds:
            found[receiver["name"]] = kinds
    return found


def message(config: dict[str, Any]) -> str:
    humans = human_receivers(config)
    if not humans:
        return ("ollama-sidecar: WARNING: no human receiver is configured in Alertmanager: alerts page "
                f"nobody (rollbacks still happen). To be paged, {HOWTO}.")
    listed = "; ".join(f"{name} ({', '.join(kinds)})" for name, kinds in sorted(humans.items()))
    return f"ollama-sidecar: Alertmanager notifies people through: {listed}."


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else DEFAULT_PATH
    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
        if not isinstance(config, dict):
            raise ValueError("not a YAML mapping")
        line = message(config)
    except Exception as exc:  # noqa: BLE001 - say it, never stop the stack over it
        problem = " ".join(str(exc).split())  # one line, whatever the parser said
        line = f"ollama-sidecar: WARNING: could not check who Alertmanager notifies ({path}: {problem})."
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
