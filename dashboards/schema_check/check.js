// Validates dashboards JSON against Grafana's own types for the pinned version.
// usage: node check.js DASHBOARD.json...
const fs = require('fs');
const Ajv = require('ajv');
const schema = require('./schema.json');
const { defaultDashboard } = require('@grafana/schema');
const pluginVersion = require('@grafana/schema/package.json').version;

const ajv = new Ajv({ allErrors: true, strict: false });
// A deprecated field is a field the next migration may remove: fail on it.
ajv.removeKeyword('deprecated');
ajv.addKeyword({ keyword: 'deprecated', validate: function v(dep) { v.errors = [{ message: 'deprecated: ' + dep }]; return false; }, errors: true });
ajv.addSchema(schema, 'g');
const byType = { timeseries: 'TimeSeriesPanel', stat: 'StatPanel', gauge: 'GaugePanel', bargauge: 'BarGaugePanel', table: 'TablePanel', row: 'Row' };
const v = (name) => ajv.getSchema('g#/definitions/' + name);

let failures = 0;
const report = (where, validate, obj) => {
  if (!validate(obj)) {
    for (const e of validate.errors) {
      if (e.keyword === 'anyOf' || e.keyword === 'if') continue;
      failures++;
      console.log(`${where}${e.instancePath}: ${e.message}${e.params && e.params.additionalProperty ? ' (' + e.params.additionalProperty + ')' : ''}${e.params && e.params.missingProperty ? ' (' + e.params.missingProperty + ')' : ''}`);
    }
  }
};
const fail = (msg) => { failures++; console.log(msg); };

for (const file of process.argv.slice(2)) {
  const d = JSON.parse(fs.readFileSync(file, 'utf8'));
  const name = file.split('/').pop();
  report(`${name}`, v('DashboardTop'), d);
  if (d.schemaVersion !== defaultDashboard.schemaVersion) fail(`${name}: schemaVersion ${d.schemaVersion}, Grafana ${pluginVersion} writes ${defaultDashboard.schemaVersion}`);
  for (const p of d.panels) {
    const t = byType[p.type];
    const where = `${name} panel ${p.id} ${p.type} '${p.title}'`;
    if (!t) { fail(`${where}: panel type not checked`); continue; }
    report(where, v(t), p);
    if (p.type !== 'row' && p.pluginVersion !== pluginVersion) fail(`${where}: pluginVersion ${p.pluginVersion} (Grafana runs the panel's migration unless it is ${pluginVersion})`);
    if ((p.type === 'stat' || p.type === 'gauge' || p.type === 'bargauge') && p.fieldConfig.defaults.custom && Object.keys(p.fieldConfig.defaults.custom).length)
      fail(`${where}: fieldConfig.defaults.custom set on a panel without custom field config`);
  }
  for (const x of d.templating.list) report(`${name} variable '${x.name}'`, v('Variable'), x);
  for (const a of d.annotations.list) report(`${name} annotation '${a.name}'`, v('PromAnnotation'), a);
}
console.log(failures ? `${failures} problem(s)` : `OK: every dashboard, panel, query, variable and annotation matches @grafana/schema@${pluginVersion} (schemaVersion ${defaultDashboard.schemaVersion})`);
process.exit(failures ? 1 : 0);
