'use strict';

// Calls that overlap: many first writes of one sid, two stores on one table, mixed calls, and
// on SQLite a write lock held by another connection while the store writes.
const { spawn } = require('node:child_process');
const readline = require('node:readline');
const { describe, it, before, after, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');

const { KnexSessionStore } = require('..');
const { backends, openStore, rawCount, sleep } = require('./helpers');

const ROUNDS = 20;
const SETS_PER_ROUND = 50;
const GETS_PER_ROUND = 10;

function reasonsOf(results) {
  return results.filter((result) => result.status === 'rejected').map((result) => String(result.reason));
}

function isWholeSession(value) {
  return (
    value !== null &&
    typeof value === 'object' &&
    Number.isInteger(value.k) &&
    value.cookie !== null &&
    typeof value.cookie === 'object' &&
    value.cookie.maxAge === 60000
  );
}

const HOLD_MS = 2000;

// Runs in a child process: takes the write lock of the SQLite file in argv[2] with
// better-sqlite3, holds it for argv[3] ms, and prints the time just before it commits.
const LOCK_HOLDER = `
const Database = require(process.argv[1]);
const db = new Database(process.argv[2]);
db.exec('BEGIN IMMEDIATE');
console.log('locked');
setTimeout(() => {
  const at = Date.now();
  db.exec('COMMIT');
  db.close();
  console.log('released ' + at);
}, Number(process.argv[3]));
`;

/**
 * Holds the write lock of `file` in a child process for `ms`. Resolves once the lock is taken,
 * with `released`, a promise of the time the child started to commit.
 */
function holdLockInChild(file, ms) {
  const child = spawn(process.execPath, ['-e', LOCK_HOLDER, require.resolve('better-sqlite3'), file, String(ms)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const lines = readline.createInterface({ input: child.stdout });
  let onReleased;
  const released = new Promise((resolve) => {
    onReleased = resolve;
  });
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`lock holder exited with code ${code} before locking`)));
    lines.on('line', (line) => {
      if (line === 'locked') resolve({ released, stop: () => child.kill() });
      const match = /^released (\d+)$/.exec(line);
      if (match) onReleased(Number(match[1]));
    });
  });
}

/** Tests a set and a get that start while `holdLock` holds the write lock of the store's file. */
function describeLockedWrite(backend, holdLock) {
  let ctx;
  let lock;
  let started;
  let set;
  let get;
  let releasedAt;

  before(async () => {
    ctx = await openStore(backend);
    await ctx.store.ready;
    await ctx.store.set('before', { cookie: { maxAge: 60000 } });
    lock = await holdLock(ctx.url.replace(/^sqlite:\/\//, ''), HOLD_MS);
    const timed = (promise) =>
      promise.then(
        (value) => ({ value, at: Date.now() }),
        (error) => ({ error, at: Date.now() }),
      );
    started = Date.now();
    const pendingSet = timed(ctx.store.set('locked', { cookie: { maxAge: 60000 } }));
    const pendingGet = timed(ctx.store.get('before'));
    releasedAt = await lock.released;
    set = await pendingSet;
    get = await pendingGet;
  });
  after(async () => {
    lock?.stop();
    await ctx.cleanup();
  });

  it('lets the set succeed', () => {
    assert.equal(set.error, undefined);
  });

  it('finishes the set after release', () => {
    assert.ok(set.at >= releasedAt, `set settled ${releasedAt - set.at} ms before the lock was released`);
  });

  it('finishes the set within 5 s', () => {
    assert.ok(set.at - started < 5000, `set took ${set.at - started} ms`);
  });

  it('stores the session', async () => {
    assert.notEqual(await ctx.store.get('locked'), null);
  });

  it('lets reads run meanwhile', () => {
    assert.equal(get.error, undefined);
    assert.ok(get.at < releasedAt, `get settled ${get.at - releasedAt} ms after the lock was released`);
  });
}

for (const backend of backends) {
  describe(backend.name, { skip: backend.skip }, () => {
    describe('first sets of one sid at once', () => {
      let ctx;
      const rounds = [];

      before(async () => {
        ctx = await openStore(backend);
        await ctx.store.ready;
        for (let i = 0; i < ROUNDS; i += 1) {
          const sid = `r${i}`;
          const sets = [];
          for (let k = 0; k < SETS_PER_ROUND; k += 1) {
            sets.push(ctx.store.set(sid, { cookie: { maxAge: 60000 }, k }));
          }
          const gets = [];
          for (let g = 0; g < GETS_PER_ROUND; g += 1) gets.push(ctx.store.get(sid));
          const [setResults, getResults] = await Promise.all([Promise.allSettled(sets), Promise.allSettled(gets)]);
          rounds.push({
            sid,
            setResults,
            getResults,
            rows: await rawCount(backend, ctx.raw, ctx.tableName, sid),
            stored: await ctx.store.get(sid),
          });
        }
      });
      after(() => ctx.cleanup());

      it('fulfils every set', () => {
        const reasons = rounds.flatMap((round) => reasonsOf(round.setResults));
        assert.deepEqual(reasons, []);
      });

      it('leaves one row per sid', () => {
        const rows = rounds.map((round) => round.rows);
        assert.deepEqual(rows, Array(ROUNDS).fill(1));
      });

      it('stores one of the written sessions', () => {
        for (const round of rounds) {
          const k = round.stored?.k;
          assert.ok(Number.isInteger(k), `${round.sid}: k is ${k}`);
          assert.ok(k >= 0, `${round.sid}: k is ${k}`);
          assert.ok(k < SETS_PER_ROUND, `${round.sid}: k is ${k}`);
        }
      });

      it('fulfils every overlapping get', () => {
        const reasons = rounds.flatMap((round) => reasonsOf(round.getResults));
        assert.deepEqual(reasons, []);
      });

      it('gets null or a whole session', () => {
        for (const round of rounds) {
          for (const result of round.getResults) {
            if (result.status !== 'fulfilled') continue;
            const value = result.value;
            assert.ok(value === null || isWholeSession(value), `${round.sid}: got ${JSON.stringify(value)}`);
          }
        }
      });
    });

    describe('overlapping calls', () => {
      let ctx;
      beforeEach(async () => {
        ctx = await openStore(backend);
        await ctx.store.ready;
      });
      afterEach(() => ctx.cleanup());

      it('replaces one sid from many sets', async () => {
        await ctx.store.set('s', { cookie: { maxAge: 60000 }, k: -1 });
        const sets = [];
        for (let k = 0; k < SETS_PER_ROUND; k += 1) {
          sets.push(ctx.store.set('s', { cookie: { maxAge: 60000 }, k }));
        }
        assert.deepEqual(reasonsOf(await Promise.allSettled(sets)), []);
        assert.equal(await rawCount(backend, ctx.raw, ctx.tableName, 's'), 1);
        const k = (await ctx.store.get('s'))?.k;
        assert.ok(Number.isInteger(k), `k is ${k}`);
        assert.ok(k >= 0, `k is ${k}`);
        assert.ok(k < SETS_PER_ROUND, `k is ${k}`);
      });

      it('stores 200 distinct sids at once', async () => {
        const sets = [];
        for (let i = 0; i < 200; i += 1) sets.push(ctx.store.set(`d${i}`, { cookie: { maxAge: 60000 }, k: i }));
        assert.deepEqual(reasonsOf(await Promise.allSettled(sets)), []);
        assert.equal(await rawCount(backend, ctx.raw, ctx.tableName), 200);
        assert.equal(await ctx.store.length(), 200);
      });

      it('runs mixed calls side by side', async () => {
        for (let i = 0; i < 20; i += 1) await ctx.store.set(`m${i}`, { cookie: { maxAge: 60000 }, k: i });
        const calls = [];
        for (let i = 0; i < 20; i += 1) {
          calls.push(ctx.store.set(`m${i}`, { cookie: { maxAge: 60000 }, k: i + 100 }));
          calls.push(ctx.store.touch(`m${i}`, { cookie: { maxAge: 120000 } }));
          calls.push(ctx.store.get(`m${i}`));
          calls.push(ctx.store.length());
          calls.push(ctx.store.all());
        }
        assert.deepEqual(reasonsOf(await Promise.allSettled(calls)), []);
        assert.equal(await rawCount(backend, ctx.raw, ctx.tableName), 20);
      });

      it('keeps destroyed sids gone', async () => {
        for (let i = 0; i < 20; i += 1) await ctx.store.set(`x${i}`, { cookie: { maxAge: 60000 }, k: i });
        const calls = [];
        for (let i = 0; i < 20; i += 1) {
          calls.push(ctx.store.destroy(`x${i}`));
          calls.push(ctx.store.get(`x${i}`));
        }
        assert.deepEqual(reasonsOf(await Promise.allSettled(calls)), []);
        assert.equal(await rawCount(backend, ctx.raw, ctx.tableName), 0);
      });
    });

    describe('two stores on one table', () => {
      let ctx;
      let second;
      beforeEach(async () => {
        ctx = await openStore(backend);
        await ctx.store.ready;
        second = new KnexSessionStore({ knex: ctx.url, tableName: ctx.tableName, cleanupInterval: 0 });
        await second.ready;
      });
      afterEach(async () => {
        await second.close();
        await ctx.cleanup();
      });

      it('stores the sets of both', async () => {
        const sets = [];
        for (let i = 0; i < 100; i += 1) {
          sets.push(ctx.store.set(`a${i}`, { cookie: { maxAge: 60000 }, k: i }));
          sets.push(second.set(`b${i}`, { cookie: { maxAge: 60000 }, k: i }));
        }
        assert.deepEqual(reasonsOf(await Promise.allSettled(sets)), []);
        assert.equal(await rawCount(backend, ctx.raw, ctx.tableName), 200);
      });

      it('keeps one row for one sid', async () => {
        const sets = [];
        for (let k = 0; k < 25; k += 1) {
          sets.push(ctx.store.set('same', { cookie: { maxAge: 60000 }, k }));
          sets.push(second.set('same', { cookie: { maxAge: 60000 }, k: k + 25 }));
        }
        assert.deepEqual(reasonsOf(await Promise.allSettled(sets)), []);
        assert.equal(await rawCount(backend, ctx.raw, ctx.tableName, 'same'), 1);
      });

      it('sees the writes of the other', async () => {
        await ctx.store.set('shared', { cookie: { maxAge: 60000 }, k: 1 });
        assert.equal((await second.get('shared'))?.k, 1);
      });
    });

    if (backend.name === 'sqlite') {
      describe('write lock held by another process', () => {
        describeLockedWrite(backend, holdLockInChild);
      });
    }
  });
}
