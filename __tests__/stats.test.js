'use strict';

// store.stats(): counts and latencies per operation, cleanup totals and pool connections,
// plus the histogram behind the quantiles.
const test = require('node:test');
const assert = require('node:assert/strict');
const { performance } = require('node:perf_hooks');

const { KnexSessionStore } = require('..');
const { StoreStats, OPERATIONS, bucketOf, bucketTop, BUCKETS } = require('../lib/stats');
const { tmpFile, sleep } = require('./helpers');

const session = (maxAge = 60000) => ({ cookie: { maxAge, originalMaxAge: maxAge } });

test('stats start at zero', async (t) => {
  const store = new KnexSessionStore({ knex: `sqlite://${tmpFile()}`, disableDbCleanup: true });
  t.after(() => store.close());
  const stats = store.stats();
  assert.deepEqual(Object.keys(stats.operations), [...OPERATIONS]);
  for (const name of OPERATIONS) {
    assert.deepEqual(stats.operations[name], {
      ok: 0,
      errors: 0,
      errorCodes: {},
      latencyMs: { mean: 0, p50: 0, p90: 0, p99: 0, max: 0 },
    });
  }
  assert.deepEqual(stats.cleanup, { runs: 0, errors: 0, rowsRemoved: 0, lastRunAt: null });
  assert.equal(typeof stats.since, 'string');
  assert.ok(!Number.isNaN(Date.parse(stats.since)));
});

test('stats count both call forms', async (t) => {
  const store = new KnexSessionStore({ knex: `sqlite://${tmpFile()}`, disableDbCleanup: true });
  t.after(() => store.close());
  await store.set('a', session());
  await new Promise((resolve) => store.set('b', session(), resolve));
  await store.get('a');
  await new Promise((resolve) => store.get('missing', resolve));
  await store.touch('a', session());
  await store.all();
  await store.length();
  await store.destroy('b');
  await store.clear();
  await store.get('').catch(() => {});
  await new Promise((resolve) => store.get(42, resolve));

  const { operations, pool } = store.stats();
  assert.equal(operations.set.ok, 2);
  assert.equal(operations.get.ok, 2);
  assert.equal(operations.get.errors, 2);
  assert.deepEqual(operations.get.errorCodes, { ERR_INVALID_ARGUMENT: 2 });
  for (const name of ['touch', 'all', 'length', 'destroy', 'clear']) {
    assert.equal(operations[name].ok, 1, name);
    assert.equal(operations[name].errors, 0, name);
  }
  const latency = operations.set.latencyMs;
  assert.ok(latency.mean > 0);
  assert.ok(latency.p50 > 0);
  assert.ok(latency.p50 <= latency.p90);
  assert.ok(latency.p90 <= latency.p99);
  assert.ok(latency.p99 <= latency.max);
  assert.ok(pool.size >= 1, `pool size ${pool.size}`);
  assert.ok(pool.idle <= pool.size);
});

test('stats count errors after close', async () => {
  const store = new KnexSessionStore({ knex: `sqlite://${tmpFile()}`, disableDbCleanup: true });
  await store.close();
  await store.length().catch(() => {});
  assert.deepEqual(store.stats().operations.length.errorCodes, { ERR_STORE_CLOSED: 1 });
});

test('stats count rows the cleanup removed', async (t) => {
  const store = new KnexSessionStore({ knex: `sqlite://${tmpFile()}`, cleanupInterval: 20 });
  t.after(() => store.close());
  await store.ready;
  await store.set('old-1', { cookie: { expires: new Date(Date.now() - 1000) } });
  await store.set('old-2', { cookie: { expires: new Date(Date.now() - 1000) } });
  await store.set('live', session());
  const deadline = Date.now() + 5000;
  while (store.stats().cleanup.rowsRemoved < 2 && Date.now() < deadline) await sleep(10);
  const { cleanup } = store.stats();
  assert.equal(cleanup.rowsRemoved, 2);
  assert.ok(cleanup.runs >= 1);
  assert.equal(cleanup.errors, 0);
  assert.ok(!Number.isNaN(Date.parse(cleanup.lastRunAt)));
  assert.equal(await store.length(), 1);
});

test('stats() is cheap enough per scrape', async (t) => {
  const store = new KnexSessionStore({ knex: `sqlite://${tmpFile()}`, disableDbCleanup: true });
  t.after(() => store.close());
  await store.set('a', session());
  const started = performance.now();
  for (let i = 0; i < 1000; i += 1) store.stats();
  const perCall = (performance.now() - started) / 1000;
  t.diagnostic(`stats() took ${(perCall * 1000).toFixed(1)} µs per call`);
  assert.ok(perCall < 1, `stats() took ${perCall} ms per call`);
});

test('histogram buckets cover every duration', () => {
  let previous = 0;
  for (const us of [0, 1, 7, 8, 9, 15, 16, 17, 100, 1000, 12345, 999999, 2 ** 31 - 1]) {
    const bucket = bucketOf(us);
    assert.ok(bucket >= previous, `bucket of ${us}`);
    assert.ok(bucket < BUCKETS, `bucket of ${us}`);
    assert.ok(us <= bucketTop(bucket), `top of the bucket of ${us}`);
    if (bucket > 0) assert.ok(us > bucketTop(bucket - 1), `top of the bucket below ${us}`);
    // The top of a bucket is at most 12.5% above any value in it.
    assert.ok(bucketTop(bucket) <= Math.max(us * 1.125, us + 1), `width of the bucket of ${us}`);
    previous = bucket;
  }
});

test('quantiles stay within 12.5%', () => {
  const stats = new StoreStats();
  for (let i = 1; i <= 1000; i += 1) stats.record(0, i / 100); // 0.01 ms to 10 ms
  const { latencyMs } = stats.snapshot({ size: 0, idle: 0 }).operations.get;
  for (const [name, actual] of [
    ['p50', 5],
    ['p90', 9],
    ['p99', 9.9],
  ]) {
    assert.ok(latencyMs[name] >= actual, `${name} ${latencyMs[name]} below ${actual}`);
    assert.ok(latencyMs[name] <= actual * 1.125, `${name} ${latencyMs[name]} far above ${actual}`);
  }
  assert.equal(latencyMs.max, 10);
  assert.equal(latencyMs.mean, 5.005);
});
