// Dashboard JSON as Grafana 11.2.0 types it: @grafana/schema@11.2.0 (CUE-generated dashboard
// kind and core panel options) and @grafana/prometheus@11.2.0 (the Prometheus query model).
import type { AnnotationQuery, Dashboard, FieldConfigSource, Panel, RowPanel, VariableModel } from '@grafana/schema';
import type * as timeseries from '@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen';
import type * as stat from '@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen';
import type * as bargauge from '@grafana/schema/dist/esm/raw/composable/bargauge/panelcfg/x/BarGaugePanelCfg_types.gen';
import type * as gauge from '@grafana/schema/dist/esm/raw/composable/gauge/panelcfg/x/GaugePanelCfg_types.gen';
import type * as table from '@grafana/schema/dist/esm/raw/composable/table/panelcfg/x/TablePanelCfg_types.gen';
import type { PromQuery } from '@grafana/prometheus';

type Typed<T extends string, O, C> = Omit<Panel, 'type' | 'options' | 'targets' | 'fieldConfig'> & {
  type: T;
  options: O;
  targets: PromQuery[];
  fieldConfig: FieldConfigSource<C>;
};
// Distinct names: every panel plugin calls its types Options and FieldConfig.
export interface TimeSeriesOptions extends timeseries.Options {}
export interface TimeSeriesFieldConfig extends timeseries.FieldConfig {}
export interface StatOptions extends stat.Options {}
export interface BarGaugeOptions extends bargauge.Options {}
export interface GaugeOptions extends gauge.Options {}
export interface TableOptions extends table.Options {}
export interface TableFieldConfig extends table.FieldConfig {}
export type TimeSeriesPanel = Typed<'timeseries', TimeSeriesOptions, TimeSeriesFieldConfig>;
export type StatPanel = Typed<'stat', StatOptions, Record<string, never>>;
export type BarGaugePanel = Typed<'bargauge', BarGaugeOptions, Record<string, never>>;
export type GaugePanel = Typed<'gauge', GaugeOptions, Record<string, never>>;
export type TablePanel = Typed<'table', TableOptions, TableFieldConfig>;
export type Row = Omit<RowPanel, 'panels'> & { panels: [] };
// The dashboard kind's CUE #AnnotationQuery is open ("datasources ... spread their query into
// the base object"); these are the keys Grafana 11.2's Prometheus datasource reads there.
export type PromAnnotation = AnnotationQuery & {
  expr: string; step?: string; titleFormat?: string; tagKeys?: string; textFormat?: string; useValueForTime?: boolean;
};
export type Variable = VariableModel;
export type DashboardTop = Omit<Dashboard, 'panels' | 'annotations' | 'templating'> & {
  panels: unknown[]; annotations: { list: unknown[] }; templating: { list: unknown[] };
};
