#!/bin/sh
# Check the committed dashboards against the dashboard schema of the Grafana compose pins.
# Needs node and npm and the npm registry; run by hand after a Grafana bump or a change to
# dashboards/render.py (not in the test suite: it needs the network). See
# docs/monitoring-stack.md, "Dashboards JSON".
#
#   dashboards/schema_check/run.sh [GRAFANA_VERSION]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
version=${1:-$(sed -n 's/^GRAFANA_VERSION = "\([^"]*\)".*/\1/p' "$root/dashboards/render.py")}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$here/types.ts" "$here/check.js" "$here/tsconfig.json" "$work/"
cd "$work"
npm init -y >/dev/null
npm install --no-audit --no-fund --ignore-scripts --legacy-peer-deps --silent \
  typescript@5.4.5 ts-json-schema-generator@2.3.0 ajv@8.20.0 \
  "@grafana/schema@$version" "@grafana/data@$version"
# @grafana/prometheus only for its type declarations (PromQuery): without its UI dependencies.
mkdir -p node_modules/@grafana/prometheus
npm pack --silent "@grafana/prometheus@$version" >/dev/null
tar xzf grafana-prometheus-*.tgz -C node_modules/@grafana/prometheus --strip-components=1
npx ts-json-schema-generator --path types.ts --tsconfig tsconfig.json --type '*' --no-type-check -o schema.json
node check.js "$root"/provisioning/grafana/dashboards/*.json
