'use strict';

// Size and time limits: maxSessionBytes and queryTimeoutMillis.
const { describe, it } = require('node:test');
const assert = require('node:assert/strict');

const { backends, openStore, quote, rawCount } = require('./helpers');

for (const backend of backends) {
  describe(backend.name, { skip: backend.skip }, () => {
    describe('maxSessionBytes', () => {
      it('rejects a session over the limit', async () => {
        const ctx = await openStore(backend, { maxSessionBytes: 1000 });
        try {
          const session = { cookie: { maxAge: 60000 }, blob: 'x'.repeat(1000) };
          await assert.rejects(ctx.store.set('big', session), (error) => {
            assert.equal(error.code, 'ERR_SESSION_TOO_LARGE');
            assert.match(error.message, /maxSessionBytes \(1000\)/);
            return true;
          });
          await ctx.store.ready;
          assert.equal(await rawCount(backend, ctx.raw, ctx.tableName, 'big'), 0);
        } finally {
          await ctx.cleanup();
        }
      });

      it('counts UTF-8 bytes, not characters', async () => {
        const ctx = await openStore(backend, { maxSessionBytes: 1000 });
        try {
          // 400 characters of 3 bytes each: 1,200 bytes once encoded.
          const session = { cookie: { maxAge: 60000 }, text: '€'.repeat(400) };
          await assert.rejects(ctx.store.set('wide', session), { code: 'ERR_SESSION_TOO_LARGE' });
        } finally {
          await ctx.cleanup();
        }
      });

      it('accepts anything when set to 0', async () => {
        const ctx = await openStore(backend, { maxSessionBytes: 0 });
        try {
          const session = { cookie: { maxAge: 60000 }, blob: 'x'.repeat(2 * 1024 * 1024) };
          await ctx.store.set('huge', session);
          assert.equal((await ctx.store.get('huge')).blob.length, 2 * 1024 * 1024);
        } finally {
          await ctx.cleanup();
        }
      });
    });

    describe('expiry range', () => {
      it('stores expiries after 2038', async () => {
        const ctx = await openStore(backend);
        try {
          const far = { cookie: { expires: new Date('2040-06-01T00:00:00.000Z') }, n: 1 };
          await ctx.store.set('far', far);
          assert.deepEqual(await ctx.store.get('far'), JSON.parse(JSON.stringify(far)));
          const fifteenYears = { cookie: { maxAge: 15 * 365 * 86400000 }, n: 2 };
          await ctx.store.set('long', fifteenYears);
          await ctx.store.touch('long', fifteenYears);
          assert.equal((await ctx.store.get('long')).n, 2);
        } finally {
          await ctx.cleanup();
        }
      });

      it('rejects expiries before year 1000', async () => {
        const ctx = await openStore(backend);
        try {
          const ancient = { cookie: { expires: new Date('0999-12-31T00:00:00.000Z') } };
          await assert.rejects(ctx.store.set('ancient', ancient), (error) => {
            assert.ok(error instanceof RangeError);
            assert.equal(error.code, 'ERR_INVALID_ARGUMENT');
            assert.match(error.message, /session\.cookie\.expires/);
            return true;
          });
          await assert.rejects(ctx.store.set('huge', { cookie: { maxAge: 1e300 } }), /session\.cookie\.maxAge/);
        } finally {
          await ctx.cleanup();
        }
      });
    });

    describe(
      'queryTimeoutMillis',
      { skip: backend.name === 'sqlite' && 'a lock from this process is not seen by the store' },
      () => {
        it('fails a call blocked by a lock', async () => {
          const ctx = await openStore(backend, { queryTimeoutMillis: 500 });
          const locker = await backend.raw(ctx.url);
          try {
            await ctx.store.set('locked', { cookie: { maxAge: 60000 } });
            const table = quote(backend, ctx.tableName);
            if (backend.name === 'postgres') {
              await locker.query('BEGIN');
              await locker.query(`LOCK TABLE ${table} IN ACCESS EXCLUSIVE MODE`);
            } else {
              await locker.query(`LOCK TABLES ${table} WRITE`);
            }
            const started = Date.now();
            await assert.rejects(ctx.store.get('locked'), (error) => {
              assert.equal(error.code, 'ERR_QUERY_TIMEOUT');
              // The store's own timer, or the server's lock or statement limit set from it.
              assert.match(error.message, /get timed out after 500 ms|get was stopped by/);
              return true;
            });
            assert.ok(Date.now() - started < 5000, 'the call settled within 5 s');
          } catch (error) {
            // A failed check must not leave the store open, or the test process never exits.
            await locker.query(backend.name === 'postgres' ? 'ROLLBACK' : 'UNLOCK TABLES');
            await locker.close();
            await ctx.cleanup();
            throw error;
          }
          await locker.query(backend.name === 'postgres' ? 'ROLLBACK' : 'UNLOCK TABLES');
          await locker.close();
          try {
            assert.equal((await ctx.store.get('locked')) !== null, true);
          } finally {
            await ctx.cleanup();
          }
        });
      },
    );
  });
}
