'use strict';

// Calls started together, which the store may serve with one query per batch: gets of many
// sids (one multi-row lookup on PostgreSQL and MySQL), and touches and destroys of many sids
// (multi-row statements). Each call must still get its own row and its own count.
const { describe, it, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');

const { KnexSessionStore } = require('..');
const { backends, expiresIn, openStore, quote, rawCount, uniqueTable } = require('./helpers');

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
  describe(`${backend.name} close after writes`, { skip: backend.skip }, () => {
    it('keeps writes started just before close', async () => {
      const ctx = await openStore(backend);
      await ctx.store.ready;
      const writes = [];
      for (let i = 0; i < 20; i += 1) writes.push(ctx.store.set(`w${i}`, live(i)));
      // Same turn of the event loop as the writes, before their commit has run. The pause
      // lets the pool's own close run on its thread before this turn ends.
      const closed = ctx.store.close();
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 200);
      assert.deepEqual(await Promise.all(writes), Array(20).fill(undefined));
      await closed;
      assert.equal(await rawCount(backend, ctx.raw, ctx.tableName), 20);
      await ctx.cleanup();
    });
  });
}

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
