'use strict';

// The background cleanup: never more than one DELETE in flight per store, requests still
// served while it waits on a lock, and several stores sharing a table without failures.
const { describe, it } = require('node:test');
const assert = require('node:assert/strict');

const { KnexSessionStore } = require('..');
const { backends, openStore, quote, rawCount, sleep } = require('./helpers');

const postgres = backends.find((backend) => backend.name === 'postgres');

describe('postgres cleanup behind a table lock', { skip: postgres.skip }, () => {
  it('keeps one DELETE in flight', async () => {
    const cleanupErrors = [];
    const ctx = await openStore(postgres, {
      cleanupInterval: 100,
      onDbCleanupError: (error) => cleanupErrors.push(error),
    });
    const locker = await postgres.raw(ctx.url);
    const sampler = await postgres.raw(ctx.url);
    try {
      await ctx.store.set('x', { cookie: { maxAge: 60000 } });
      await ctx.store.set('old', { cookie: { expires: new Date(Date.now() + 100) } });
      const table = quote(postgres, ctx.tableName);
      // EXCLUSIVE mode blocks the cleanup's DELETE but lets reads through.
      await locker.query('BEGIN');
      await locker.query(`LOCK TABLE ${table} IN EXCLUSIVE MODE`);

      let most = 0;
      let sampled = 0;
      const getDuringLock = ctx.store.get('x');
      const until = Date.now() + 3000;
      while (Date.now() < until) {
        const rows = await sampler.query(
          `SELECT count(*) AS n FROM pg_stat_activity WHERE query LIKE ? AND state <> 'idle' AND pid <> pg_backend_pid()`,
          [`DELETE FROM ${table}%`],
        );
        most = Math.max(most, Number(rows[0].n));
        sampled += 1;
        await sleep(100);
      }
      const seen = await Promise.race([getDuringLock, sleep(100).then(() => 'pending')]);
      assert.notEqual(seen, 'pending', 'get finished while the table was locked');
      assert.ok(sampled >= 10, `sampled ${sampled} times`);
      assert.ok(most >= 1, 'the cleanup was seen waiting on the lock');
      assert.ok(most <= 1, `${most} cleanup DELETEs were in flight at once`);

      await locker.query('COMMIT');
      const deadline = Date.now() + 3000;
      while (Date.now() < deadline && (await rawCount(postgres, ctx.raw, ctx.tableName, 'old')) > 0) {
        await sleep(100);
      }
      assert.equal(await rawCount(postgres, ctx.raw, ctx.tableName, 'old'), 0, 'cleanup resumed after the lock');
      assert.equal(await rawCount(postgres, ctx.raw, ctx.tableName, 'x'), 1);
    } finally {
      await locker.query('ROLLBACK').catch(() => {});
      await locker.close();
      await sampler.close();
      await ctx.cleanup();
    }
  });
});

for (const backend of backends) {
  describe(`${backend.name} stores sharing a table`, { skip: backend.skip }, () => {
    it('all sets succeed under three cleanups', async () => {
      const ctx = await openStore(backend, { cleanupInterval: 0 });
      const cleanupErrors = [];
      const others = [1, 2, 3].map(
        () =>
          new KnexSessionStore({
            knex: ctx.url,
            tableName: ctx.tableName,
            cleanupInterval: 100,
            onDbCleanupError: (error) => cleanupErrors.push(error),
          }),
      );
      try {
        await Promise.all(others.map((store) => store.ready));
        const failures = [];
        let written = 0;
        const until = Date.now() + 3000;
        for (let round = 0; Date.now() < until; round += 1) {
          const calls = [];
          for (const [index, store] of others.entries()) {
            for (let i = 0; i < 200; i += 1) {
              // Half expire at once, so every cleanup run has rows to delete.
              const cookie = i % 2 === 0 ? { maxAge: 60000 } : { expires: new Date(Date.now() - 1) };
              calls.push(store.set(`r${round}-${index}-${i}`, { cookie }));
            }
          }
          const results = await Promise.allSettled(calls);
          for (const result of results) {
            if (result.status === 'rejected') failures.push(result.reason);
            else written += 1;
          }
        }
        assert.equal(failures.length, 0, `failed sets: ${failures.slice(0, 3).map(String).join('; ')}`);
        assert.ok(written > 0);
        // A deadlock between cleanups may reach the hook; the next run must then succeed.
        for (const error of cleanupErrors) assert.ok(error.code, `cleanup error without a code: ${error}`);
        await sleep(500);
        const rows = await ctx.raw.query(
          `SELECT COUNT(*) AS n FROM ${quote(backend, ctx.tableName)} WHERE ${
            backend.name === 'sqlite'
              ? "unixepoch(expired, 'subsec') < unixepoch('now', 'subsec')"
              : backend.name === 'postgres'
                ? 'expired < now()'
                : 'expired < UTC_TIMESTAMP(3)'
          }`,
        );
        assert.equal(Number(rows[0].n), 0, 'expired rows are all cleaned up');
      } finally {
        await Promise.all(others.map((store) => store.close()));
        await ctx.cleanup();
      }
    });
  });
}
