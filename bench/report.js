'use strict';

// Formats the results as Markdown tables: one per backend with every store's ops/s and
// p50/p99 latency per phase, and the ratio of ours to each peer on that backend. Stores that
// were skipped get a line after the tables.
const { BACKENDS } = require('./stores');
const { PHASES } = require('./workload');

const PHASE_NAMES = {
  set: 'set (new)',
  get: 'get',
  touch: 'touch',
  'set-changed': 'set (changed)',
  destroy: 'destroy',
};

function formatRate(value) {
  return value === undefined ? '-' : Math.round(value).toLocaleString('en-US');
}

function formatMs(value) {
  if (value === undefined || Number.isNaN(value)) return '-';
  if (value < 10) return value.toFixed(2);
  if (value < 100) return value.toFixed(1);
  return value.toFixed(0);
}

function formatRatio(ours, peer) {
  if (ours === undefined || peer === undefined) return '-';
  return `${(ours.opsPerSec / peer.opsPerSec).toFixed(2)}×`;
}

function renderTable(header, rows) {
  const widths = header.map((cell, column) => Math.max(cell.length, ...rows.map((row) => row[column].length)));
  const line = (cells) => `| ${cells.map((cell, column) => cell.padEnd(widths[column])).join(' | ')} |`;
  const rule = `|${widths.map((width, column) => (column < 2 ? ':' : '-') + '-'.repeat(width) + (column < 2 ? '-' : ':')).join('|')}|`;
  return [line(header), rule, ...rows.map(line)].join('\n');
}

/**
 * Returns the rows of one backend: every phase at every in-flight setting, then HTTP.
 * Each row is [phase, in flight, stats of each store in `stores` order].
 */
function rowsOf(stores, settings) {
  const rows = [];
  for (const mode of settings.modes) {
    for (const phase of PHASES) {
      const inFlight = mode === 'burst' ? `burst of ${settings.sessions}` : String(mode);
      rows.push([PHASE_NAMES[phase], inFlight, stores.map((store) => store.phases[mode] && store.phases[mode][phase])]);
    }
  }
  if (settings.http) {
    rows.push(['HTTP get+set', `${settings.http.connections} connections`, stores.map((store) => store.http)]);
  }
  return rows;
}

/** Renders the table of one backend; `stores` are the results of that backend, ours first. */
function backendTable(backend, stores, settings) {
  const ours = stores.find((store) => store.ours);
  const peers = stores.filter((store) => !store.ours);
  const header = ['phase', 'in flight'];
  for (const store of stores) header.push(`${store.name} ops/s`, `${store.name} p50 / p99 ms`);
  if (ours) for (const peer of peers) header.push(`ours ÷ ${peer.name}`);

  const rows = rowsOf(stores, settings).map(([phase, inFlight, stats]) => {
    const cells = [phase, inFlight];
    for (const value of stats) {
      cells.push(formatRate(value && value.opsPerSec));
      cells.push(value ? `${formatMs(value.p50Ms)} / ${formatMs(value.p99Ms)}` : '-');
    }
    if (ours) {
      const oursStats = stats[stores.indexOf(ours)];
      for (const peer of peers) cells.push(formatRatio(oursStats, stats[stores.indexOf(peer)]));
    }
    return cells;
  });
  return `### ${BACKENDS[backend]}\n\n${renderTable(header, rows)}`;
}

/** Renders every backend's table, in the order of BACKENDS, then the skipped stores. */
function renderReport(results, settings) {
  const sections = [];
  for (const backend of Object.keys(BACKENDS)) {
    const stores = results.filter((store) => store.backend === backend && !store.skipped);
    if (stores.length > 0) sections.push(backendTable(backend, stores, settings));
  }
  for (const store of results.filter((result) => result.skipped)) {
    sections.push(`${store.name} skipped: ${store.skipped}`);
  }
  return sections.join('\n\n');
}

module.exports = { renderReport };
