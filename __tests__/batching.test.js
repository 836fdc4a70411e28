'use strict';

// Calls started together, which the store may serve with one query per batch: gets of many
// sids (one multi-row lookup on MySQL), and touches and destroys of many sids
// (multi-row statements). Each call must still get its own row and its own count.
const fs = require('node:fs');
const { performance } = require('node:perf_hooks');
const { describe, it, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');

const { KnexSessionStore } = require('..');
const { backends, expiresIn, openStore, quote, rawCount, sleep, uniqueTable } = require('./helpers');

const LIVE = 60;
const EXPIRED = 30;
const MISSING = 30;

function live(k) {
  return { cookie: { maxAge: 60000 }, k };
}

function expired(k) {
  return { cookie: { expires: new Date(Date.now() - 60000).toISOString() }, k };
}

for (const backend of backends) {
  describe(backend.name, { skip: backend.skip }, () => {
    let ctx;
    beforeEach(async () => {
      ctx = await openStore(backend);
      await ctx.store.ready;
      for (let i = 0; i < LIVE; i += 1) await ctx.store.set(`live${i}`, live(i));
      for (let i = 0; i < EXPIRED; i += 1) await ctx.store.set(`old${i}`, expired(i));
    });
    afterEach(() => ctx.cleanup());

    it('gets many sids at once', async () => {
      const calls = [];
      const expected = [];
      for (let i = 0; i < LIVE; i += 1) {
        // Each live sid twice, so one batch may hold a sid more than once.
        calls.push(ctx.store.get(`live${i}`), ctx.store.get(`live${i}`));
        expected.push(i, i);
      }
      for (let i = 0; i < EXPIRED; i += 1) {
        calls.push(ctx.store.get(`old${i}`));
        expected.push(null);
      }
      for (let i = 0; i < MISSING; i += 1) {
        calls.push(ctx.store.get(`none${i}`));
        expected.push(null);
      }
      const found = await Promise.all(calls);
      assert.deepEqual(
        found.map((session) => (session === null ? null : session.k)),
        expected,
      );
    });

    it('destroys stored and missing sids at once', async () => {
      const calls = [];
      for (let i = 0; i < LIVE; i += 1) calls.push(ctx.store.destroy(`live${i}`), ctx.store.destroy(`none${i}`));
      const counts = await Promise.all(calls);
      const expected = [];
      for (let i = 0; i < LIVE; i += 1) expected.push(1, 0);
      assert.deepEqual(counts, expected);
      assert.equal(await rawCount(backend, ctx.raw, ctx.tableName), EXPIRED);
    });

    it('destroys only stored sids at once', async () => {
      const counts = await Promise.all(Array.from({ length: LIVE }, (_, i) => ctx.store.destroy(`live${i}`)));
      assert.deepEqual(counts, Array(LIVE).fill(1));
      assert.equal(await rawCount(backend, ctx.raw, ctx.tableName), EXPIRED);
    });

    it('touches live and expired sessions at once', async () => {
      const later = { cookie: { maxAge: 3600 * 1000 } };
      const calls = [];
      for (let i = 0; i < LIVE; i += 1) calls.push(ctx.store.touch(`live${i}`, later));
      for (let i = 0; i < EXPIRED; i += 1) calls.push(ctx.store.touch(`old${i}`, later));
      await Promise.all(calls);
      for (let i = 0; i < LIVE; i += 1) {
        const seconds = await expiresIn(backend, ctx.raw, ctx.tableName, `live${i}`);
        assert.ok(seconds > 3000, `live${i} expires in ${seconds} s`);
      }
      for (let i = 0; i < EXPIRED; i += 1) {
        const seconds = await expiresIn(backend, ctx.raw, ctx.tableName, `old${i}`);
        assert.ok(seconds < 0, `old${i} expires in ${seconds} s`);
        assert.equal(await ctx.store.get(`old${i}`), null);
      }
    });
  });
}

for (const backend of backends) {
  describe(`${backend.name} close while calls run`, { skip: backend.skip }, () => {
    let ctx;
    beforeEach(async () => {
      ctx = await openStore(backend);
      await ctx.store.ready;
    });
    // A failed check must not leave the raw connection open, or the test process never exits.
    afterEach(() => ctx.cleanup());

    it('settles calls by their order around close', async () => {
      const before = [];
      const after = [];
      for (let i = 0; i < 300; i += 1) before.push(ctx.store.set(`b${i}`, live(i)), ctx.store.get(`b${i}`));
      const closed = ctx.store.close();
      for (let i = 0; i < 300; i += 1) after.push(ctx.store.set(`a${i}`, live(i)), ctx.store.get(`a${i}`));
      const settledAfter = Promise.allSettled(after);
      const failedBefore = (await Promise.allSettled(before)).filter((result) => result.status === 'rejected');
      assert.deepEqual(
        failedBefore.map((result) => result.reason.code),
        [],
      );
      const notClosed = (await settledAfter).filter(
        (result) => result.status !== 'rejected' || result.reason.code !== 'ERR_STORE_CLOSED',
      );
      assert.equal(notClosed.length, 0, `${notClosed.length} calls after close did not fail with ERR_STORE_CLOSED`);
      await closed;
      assert.equal(await rawCount(backend, ctx.raw, ctx.tableName), 300);
    });

    it('keeps writes started just before close', async () => {
      const writes = [];
      for (let i = 0; i < 20; i += 1) writes.push(ctx.store.set(`w${i}`, live(i)));
      // Same turn of the event loop as the writes, before their commit has run. The pause
      // lets the pool's own close run on its thread before this turn ends.
      const closed = ctx.store.close();
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 200);
      assert.deepEqual(await Promise.all(writes), Array(20).fill(undefined));
      await closed;
      assert.equal(await rawCount(backend, ctx.raw, ctx.tableName), 20);
    });
  });
}

// A row lock held by another connection blocks the statements that write that row. The server
// ends such a statement after a quarter of the query timeout, so the lock fails only the
// writes of its row. The writes batched or queued with them go on, the pool keeps its
// connections, and close() does not wait for the lock.
for (const backend of backends.filter((candidate) => candidate.name !== 'sqlite')) {
  describe(`${backend.name} row lock held elsewhere`, { skip: backend.skip, timeout: 60000 }, () => {
    let ctx;
    let locker;
    const lock = async (raw, sid) => {
      await raw.query('BEGIN');
      await raw.query(`SELECT sid FROM ${quote(backend, ctx.tableName)} WHERE sid = ? FOR UPDATE`, [sid]);
    };
    beforeEach(async () => {
      ctx = await openStore(backend, { queryTimeoutMillis: 3000 });
      await ctx.store.set('locked', live(0));
      locker = await backend.raw(ctx.url);
      await lock(locker, 'locked');
    });
    afterEach(async () => {
      await locker.query('ROLLBACK').catch(() => {});
      await locker.close();
      await ctx.cleanup();
    });

    it('stalls later writes no longer than the timeout', async () => {
      const slowLocker = await backend.raw(ctx.url);
      try {
        await ctx.store.set('slow', live(1));
        await lock(slowLocker, 'slow');
        // The write of 'slow' runs first and waits for its lock, so the write of 'locked'
        // queues and runs in the batch after it, where it waits for the other lock.
        const slow = ctx.store.set('slow', live(2));
        await sleep(100);
        const locked = ctx.store.set('locked', live(3));
        await sleep(200);
        await slowLocker.query('COMMIT');
        await slow;
        await assert.rejects(locked, { code: 'ERR_QUERY_TIMEOUT' });
        // The lock is still held, and a write of another sid must not wait for it.
        await ctx.store.set('after', live(4));
        assert.equal((await ctx.store.get('after')).k, 4);
      } finally {
        await slowLocker.query('ROLLBACK').catch(() => {});
        await slowLocker.close();
      }
    });

    it('fails only the locked row', async () => {
      const locked = ctx.store.set('locked', live(1));
      const others = Array.from({ length: 5 }, (_, i) => ctx.store.set(`fresh${i}`, live(i)));
      await assert.rejects(locked, { code: 'ERR_QUERY_TIMEOUT' });
      const settled = await Promise.allSettled(others);
      assert.deepEqual(
        settled.map((result) => (result.status === 'rejected' ? result.reason.code : 'ok')),
        ['ok', 'ok', 'ok', 'ok', 'ok'],
      );
      assert.equal(await rawCount(backend, ctx.raw, ctx.tableName), 6);
    });

    it('keeps the pool usable', async () => {
      // One more timed-out write than the pool has connections.
      for (let i = 0; i < 11; i += 1) {
        await assert.rejects(ctx.store.set('locked', live(i)), { code: 'ERR_QUERY_TIMEOUT' });
      }
      assert.equal(await ctx.store.get('other'), null);
      await ctx.store.set('other', live(1));
      assert.equal(await ctx.store.length(), 2);
    });

    it('closes without waiting for the lock', async () => {
      await assert.rejects(ctx.store.set('locked', live(1)), { code: 'ERR_QUERY_TIMEOUT' });
      const started = performance.now();
      await ctx.store.close();
      const took = performance.now() - started;
      assert.ok(took < 3000, `close() took ${Math.round(took)} ms while the lock was held`);
    });
  });
}

describe('sqlite write-ahead log', () => {
  it('stays bounded under steady writes', async (t) => {
    const sqlite = backends.find((backend) => backend.name === 'sqlite');
    const ctx = await openStore(sqlite);
    await ctx.store.ready;
    const wal = `${ctx.url.replace(/^sqlite:\/\//, '')}-wal`;
    let largest = 0;
    // 16 callers in turn, each writing and reading its sessions, as a busy server does.
    const worker = async (w) => {
      for (let i = 0; i < 1500; i += 1) {
        const sid = `wal${w}_${i % 50}`;
        await ctx.store.set(sid, live(i));
        await ctx.store.get(sid);
        if (i % 100 === 0) largest = Math.max(largest, fs.statSync(wal).size);
      }
    };
    try {
      await Promise.all(Array.from({ length: 16 }, (_, w) => worker(w)));
      largest = Math.max(largest, fs.statSync(wal).size);
    } finally {
      await ctx.cleanup();
    }
    t.diagnostic(`largest -wal file: ${largest} bytes`);
    // 24,000 writes without a checkpoint that restarts the log leave it at about 100 MB.
    assert.ok(largest < 16 * 1024 * 1024, `the -wal file reached ${largest} bytes`);
  });
});

// A table made by connect-session-knex 5 on MySQL has the server's default collation, which
// folds case. Batched calls must still treat sids exactly, as single ones do.
const mysql = backends.find((backend) => backend.name === 'mysql');
describe('mysql case-folding table', { skip: mysql.skip }, () => {
  let store;
  let raw;
  let table;
  beforeEach(async () => {
    raw = await mysql.raw(mysql.url());
    const tableName = uniqueTable('fold');
    table = quote(mysql, tableName);
    await raw.query(
      `CREATE TABLE ${table} (sid varchar(255) COLLATE utf8mb4_general_ci PRIMARY KEY, ` +
        'sess text NOT NULL, expired DATETIME(3) NOT NULL) DEFAULT CHARSET=utf8mb4',
    );
    store = new KnexSessionStore({ knex: mysql.url(), tableName, createTable: false, cleanupInterval: 0 });
    await store.ready;
    for (let i = 0; i < 20; i += 1) await store.set(`fold${i}`, live(i));
  });
  afterEach(async () => {
    await store.close();
    await raw.query(`DROP TABLE IF EXISTS ${table}`);
    await raw.close();
  });

  it('gets exact sids only', async () => {
    const calls = [];
    for (let i = 0; i < 20; i += 1) calls.push(store.get(`FOLD${i}`), store.get(`fold${i}`));
    const found = await Promise.all(calls);
    const expected = [];
    for (let i = 0; i < 20; i += 1) expected.push(null, i);
    assert.deepEqual(
      found.map((session) => (session === null ? null : session.k)),
      expected,
    );
  });

  it('destroys and touches exact sids only', async () => {
    const destroyed = await Promise.all(Array.from({ length: 20 }, (_, i) => store.destroy(`FOLD${i}`)));
    assert.deepEqual(destroyed, Array(20).fill(0));
    await Promise.all(Array.from({ length: 20 }, (_, i) => store.touch(`FOLD${i}`, { cookie: { maxAge: 3600000 } })));
    const rows = await raw.query(`SELECT sid FROM ${table} WHERE expired > UTC_TIMESTAMP(3) + INTERVAL 2 MINUTE`);
    assert.deepEqual(rows, []);
    assert.equal(await rawCount(mysql, raw, table.slice(1, -1)), 20);
  });
});

// PostgreSQL may keep a generic plan made while the table was nearly empty, and for a query
// over many sids that plan can be a full table scan. Without autovacuum the table is never
// analyzed, so nothing replaces the plan as the table grows.
const postgres = backends.find((backend) => backend.name === 'postgres');
describe('postgres table grown after start', { skip: postgres.skip }, () => {
  it('batched calls scan no rows', async () => {
    const tableName = uniqueTable('grow');
    const table = quote(postgres, tableName);
    const store = new KnexSessionStore({ knex: postgres.url(), tableName, cleanupInterval: 0 });
    const raw = await postgres.raw(postgres.url());
    const counters = async () => {
      const rows = await raw.query(
        'SELECT seq_tup_read::int AS scanned, n_tup_upd::int AS updated FROM pg_stat_user_tables WHERE relid = to_regclass(?)',
        [table],
      );
      return rows[0];
    };
    const round = (prefix) =>
      Promise.all(
        Array.from({ length: 16 }, (_, i) => [
          store.get(`${prefix}${i}`),
          store.touch(`${prefix}${i}`, live(i)),
          store.destroy(`${prefix}_missing${i}`),
        ]).flat(),
      );
    try {
      await store.ready;
      // Enough rounds on the empty table for each pooled connection to plan its statements.
      for (let r = 0; r < 20; r += 1) await round('early');
      await raw.query(
        `INSERT INTO ${table} (sid, sess, expired) ` +
          `SELECT 'g' || n, '{"k":0}', now() + interval '1 hour' FROM generate_series(0, 19999) AS n`,
      );
      const before = await counters();

      for (let r = 0; r < 20; r += 1) {
        const results = await round('g');
        assert.deepEqual(results[0], { k: 0 });
      }
      await store.close();

      // The store's connections report their counters when they end; 16 sids touched 20 times.
      let after = await counters();
      for (let wait = 0; wait < 100 && after.updated < 320; wait += 1) {
        await new Promise((resolve) => setTimeout(resolve, 100));
        after = await counters();
      }
      assert.equal(after.updated, 320);
      assert.equal(after.scanned - before.scanned, 0, 'rows read by full table scans');
    } finally {
      await store.close();
      await raw.query(`DROP TABLE IF EXISTS ${table}`);
      await raw.close();
    }
  });
});
