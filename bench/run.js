'use strict';

// Benchmarks this store against connect-session-knex 5, the usual store of each SQL backend and
// connect-redis, with express-session's MemoryStore as the ceiling. See bench/README.md for the
// phases and the environment variables. Prints Markdown tables, writes bench/results/latest.json,
// and exits non-zero when a store call fails or a correctness check does not hold.
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const { runHttp } = require('./http');
const { renderReport } = require('./report');
const {
  BACKENDS,
  SQLITE_PEER_DEFAULTS,
  StoreUnavailableError,
  allStores,
  removeTmp,
  serverVersions,
} = require('./stores');
const { CheckError, makeBatch, meanSessionBytes, runPhases, warmUp } = require('./workload');

function readInteger(name, fallback, least) {
  const text = process.env[name];
  if (text === undefined || text === '') return fallback;
  const value = Number(text);
  if (!Number.isInteger(value) || value < least) {
    throw new Error(`${name} must be an integer of at least ${least}, got ${JSON.stringify(text)}`);
  }
  return value;
}

function readSettings() {
  const sessions = readInteger('BENCH_SESSIONS', 10000, 1);
  const durationSec = readInteger('BENCH_HTTP_DURATION', 5, 0);
  const known = allStores().map((store) => store.id);
  const picked = (process.env.BENCH_STORES || '')
    .split(',')
    .map((id) => id.trim())
    .filter(Boolean);
  for (const id of picked) {
    if (!known.includes(id))
      throw new Error(`BENCH_STORES names an unknown store ${id}: known stores are ${known.join(', ')}`);
  }
  return {
    sessions,
    modes: [1, 16, 'burst'],
    warmUp: readInteger('BENCH_WARMUP', Math.min(500, sessions), 0),
    http:
      durationSec === 0
        ? undefined
        : {
            durationSec,
            connections: readInteger('BENCH_HTTP_CONNECTIONS', 50, 1),
            sessions: readInteger('BENCH_HTTP_SESSIONS', Math.min(1000, sessions), 1),
          },
    stores: picked.length > 0 ? picked : known,
    sqlitePeerDefaults: SQLITE_PEER_DEFAULTS,
  };
}

function log(message) {
  process.stderr.write(`bench: ${message}\n`);
}

/** Returns the installed version of a package, or null when it is not installed. */
function packageVersion(name) {
  try {
    return require(`${name}/package.json`).version;
  } catch {
    // Packages whose `exports` leave out package.json, such as connect-redis 10, are found by
    // walking up from their entry point.
  }
  try {
    let folder = path.dirname(require.resolve(name));
    while (folder !== path.dirname(folder)) {
      const file = path.join(folder, 'package.json');
      if (fs.existsSync(file)) {
        const manifest = JSON.parse(fs.readFileSync(file, 'utf8'));
        if (manifest.name === name) return manifest.version;
      }
      folder = path.dirname(folder);
    }
  } catch {
    // Not installed.
  }
  return null;
}

function gitCommit() {
  try {
    return execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: __dirname, encoding: 'utf8' }).trim();
  } catch {
    return null;
  }
}

async function describeMachine() {
  const addon = path.join(__dirname, '..', 'connect-session-knex.node');
  return {
    date: new Date().toISOString(),
    cpu: os.cpus()[0] && os.cpus()[0].model,
    nproc: os.availableParallelism(),
    memoryGiB: Number((os.totalmem() / 2 ** 30).toFixed(1)),
    os: `${os.type()} ${os.release()}`,
    node: process.version,
    servers: await serverVersions(),
    commit: gitCommit(),
    addonModified: fs.existsSync(addon) ? fs.statSync(addon).mtime.toISOString() : null,
    // A release build is a few MB, a debug build tens of MB, so the size shows which was measured.
    addonBytes: fs.existsSync(addon) ? fs.statSync(addon).size : null,
    packages: Object.fromEntries(
      [
        'connect-session-knex-v5',
        'knex',
        'pg',
        'mysql2',
        'better-sqlite3',
        'connect-pg-simple',
        'express-mysql-session',
        'better-sqlite3-session-store',
        'connect-redis',
        'redis',
        'express-session',
        'express',
        'autocannon',
      ].map((name) => [name, packageVersion(name)]),
    ),
  };
}

/**
 * Runs every phase and the HTTP run against one store. Failures are recorded, not thrown, and a
 * store whose server is not reachable is recorded as skipped.
 */
async function benchStore(entry, settings) {
  const result = { id: entry.id, name: entry.name, backend: entry.backend, ours: entry.ours, phases: {} };
  let opened;
  try {
    opened = await entry.open();
    if (settings.warmUp > 0) await warmUp(opened.store, entry.id, settings.warmUp);
    for (const mode of settings.modes) {
      const label = `${entry.id} [${mode === 'burst' ? 'burst' : `${mode} in flight`}]`;
      result.phases[mode] = await runPhases(opened.store, label, settings.sessions, mode, log);
    }
    if (settings.http) {
      result.http = await runHttp(opened.store, entry.id, settings.http);
      log(`${entry.id} HTTP: ${Math.round(result.http.opsPerSec)} requests/s`);
    }
  } catch (error) {
    if (error instanceof StoreUnavailableError) {
      result.skipped = error.message;
      log(`${entry.id} skipped: ${error.message}`);
      return result;
    }
    result.error = error instanceof CheckError ? `check failed: ${error.message}` : error.message;
    result.errorCode = error.cause && error.cause.code;
    log(`${entry.id} FAILED: ${result.error}`);
  }
  if (opened) {
    try {
      await opened.close();
    } catch (error) {
      result.closeError = error.message;
      log(`${entry.id} close or table drop FAILED: ${error.message}`);
    }
  }
  return result;
}

async function main() {
  try {
    await runAll();
  } finally {
    removeTmp();
  }
}

async function runAll() {
  const settings = readSettings();
  const sessionBytes = meanSessionBytes(makeBatch(Math.min(1000, settings.sessions)).created);
  log(
    `${settings.sessions} sessions of ${Math.round(sessionBytes)} bytes, stores: ${settings.stores.join(', ')}` +
      (settings.http ? `, HTTP ${settings.http.durationSec} s each` : ', no HTTP run'),
  );
  const machine = await describeMachine();

  const results = [];
  for (const entry of allStores()) {
    if (settings.stores.includes(entry.id)) results.push(await benchStore(entry, settings));
  }

  const report = renderReport(results, settings);
  process.stdout.write(`${report}\n`);

  const outputDir = path.join(__dirname, 'results');
  fs.mkdirSync(outputDir, { recursive: true });
  const output = path.join(outputDir, 'latest.json');
  const document = {
    machine,
    settings: { ...settings, sessionBytes: Math.round(sessionBytes) },
    backends: BACKENDS,
    results,
  };
  fs.writeFileSync(output, `${JSON.stringify(document, null, 2)}\n`);
  log(`wrote ${path.relative(process.cwd(), output)}`);

  const failed = results.filter((result) => result.error || result.closeError);
  if (failed.length > 0) {
    process.stderr.write(`\nbench: FAILED for ${failed.length} store(s):\n`);
    for (const result of failed) process.stderr.write(`  ${result.id}: ${result.error || result.closeError}\n`);
    process.exitCode = 1;
  } else {
    log('all correctness checks passed');
  }
  const skipped = results.filter((result) => result.skipped);
  if (skipped.length > 0) log(`skipped, server not reachable: ${skipped.map((result) => result.id).join(', ')}`);
}

main().catch((error) => {
  process.stderr.write(`bench: ${error.stack || error}\n`);
  process.exitCode = 1;
});
