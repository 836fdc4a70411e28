'use strict';

// When sessions expire: the rule set and touch use, millisecond precision, and expired rows
// staying invisible while cleanup is off, on every backend.
const { describe, it, before, after, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');

const Cookie = require('express-session/session/cookie');

const { backends, openStore, quote, expiresIn, rawCount, sleep } = require('./helpers');

const HOUR = 3600000;
const FIXED_EXPIRY = '2031-01-02T03:04:05.678Z';

/** Returns the stored expiry of `sid` in epoch milliseconds, read with raw SQL. */
async function storedExpiryMs(backend, raw, tableName, sid) {
  const table = quote(backend, tableName);
  const sql = {
    sqlite: `SELECT CAST(round(unixepoch(expired, 'subsec') * 1000) AS INTEGER) AS ms FROM ${table} WHERE sid = ?`,
    postgres: `SELECT round(extract(epoch FROM expired) * 1000)::float8 AS ms FROM ${table} WHERE sid = ?`,
    mysql: `SELECT TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', expired) DIV 1000 AS ms FROM ${table} WHERE sid = ?`,
  }[backend.name];
  const rows = await raw.query(sql, [sid]);
  return rows.length === 0 ? undefined : Number(rows[0].ms);
}

/** Returns the raw `sess` text of `sid`. */
async function rawSess(backend, raw, tableName, sid) {
  const column = { sqlite: 'sess', postgres: 'sess::text', mysql: 'CAST(sess AS CHAR)' }[backend.name];
  const rows = await raw.query(`SELECT ${column} AS sess FROM ${quote(backend, tableName)} WHERE sid = ?`, [sid]);
  return rows.length === 0 ? undefined : rows[0].sess;
}

/** Opens a store on a fresh table before each test of the enclosing describe and closes it after. */
function freshStore(backend, options = {}) {
  const ctx = {};
  beforeEach(async () => {
    Object.assign(ctx, await openStore(backend, options));
    await ctx.store.ready;
  });
  afterEach(() => ctx.cleanup());
  return ctx;
}

/** Asserts that `value` lies in [min, max]. */
function assertBetween(value, min, max) {
  assert.ok(value >= min && value <= max, `expected ${value} to be in [${min}, ${max}]`);
}

function liveCookie(ms = HOUR) {
  return { originalMaxAge: ms, expires: new Date(Date.now() + ms) };
}

for (const backend of backends) {
  describe(backend.name, { skip: backend.skip }, () => {
    describe('set(sid, session) expiry', () => {
      const ctx = freshStore(backend);
      const secondsLeft = (sid) => expiresIn(backend, ctx.raw, ctx.tableName, sid);
      const storedMs = (sid) => storedExpiryMs(backend, ctx.raw, ctx.tableName, sid);

      it('uses cookie.expires given as Date', async () => {
        await ctx.store.set('e', { cookie: { expires: new Date(FIXED_EXPIRY) } });
        assert.equal(await storedMs('e'), Date.parse(FIXED_EXPIRY));
      });

      it('uses cookie.expires given as string', async () => {
        await ctx.store.set('e', { cookie: { expires: '2031-01-02T04:04:05.678+01:00' } });
        assert.equal(await storedMs('e'), Date.parse(FIXED_EXPIRY));
      });

      it('prefers cookie.expires over maxAge', async () => {
        await ctx.store.set('e', { cookie: { expires: new Date(FIXED_EXPIRY), maxAge: 60000 } });
        assert.equal(await storedMs('e'), Date.parse(FIXED_EXPIRY));
      });

      it('adds maxAge without cookie.expires', async () => {
        await ctx.store.set('e', { cookie: { maxAge: 600000 } });
        assertBetween(await secondsLeft('e'), 598, 600);
      });

      it('adds maxAge when expires is null', async () => {
        await ctx.store.set('e', { cookie: { expires: null, maxAge: 600000 } });
        assertBetween(await secondsLeft('e'), 598, 600);
      });

      it('reads a Cookie instance', async () => {
        await ctx.store.set('e1', { cookie: new Cookie({ maxAge: 600000 }) });
        assertBetween(await secondsLeft('e1'), 598, 600);
      });

      it('reads a cookie from get', async () => {
        const cookie = {
          originalMaxAge: 600000,
          expires: new Date(Date.now() + 600000).toISOString(),
          path: '/',
          httpOnly: true,
        };
        await ctx.store.set('e2', { cookie });
        assertBetween(await secondsLeft('e2'), 598, 600);
      });

      it('falls back to one day', async () => {
        await ctx.store.set('e4', { cookie: { originalMaxAge: null, expires: null } });
        assertBetween(await secondsLeft('e4'), 86398, 86400);
      });

      it('gives a cookieless session one day', async () => {
        await ctx.store.set('e', { n: 1 });
        assertBetween(await secondsLeft('e'), 86398, 86400);
      });

      it('accepts an expiry in the past', async () => {
        await ctx.store.set('e5', { cookie: { maxAge: 60000 } });
        const past = { cookie: { expires: new Date(Date.now() - 60000).toISOString(), originalMaxAge: -60000 } };
        assert.equal(await ctx.store.set('e5', past), undefined);
        assert.equal(await ctx.store.get('e5'), null);
      });

      const invalid = {
        'an unparsable expires': { cookie: { expires: 'not a date', maxAge: 60000 } },
        'an invalid Date': { cookie: { expires: new Date(NaN) } },
        'a numeric expires': { cookie: { expires: Date.now() + 60000 } },
        'a string maxAge': { cookie: { maxAge: '60000' } },
        'an infinite maxAge': { cookie: { maxAge: Infinity } },
        'a string cookie': { cookie: 'max-age=60' },
        'an expiry past 9999': { cookie: { expires: new Date('+010000-01-01T00:00:00Z') } },
        'a maxAge past 9999': { cookie: { maxAge: 1e20 } },
      };
      for (const [name, session] of Object.entries(invalid)) {
        it(`rejects ${name}`, async () => {
          await assert.rejects(ctx.store.set('bad', session), { code: 'ERR_INVALID_ARGUMENT' });
          assert.equal(await rawCount(backend, ctx.raw, ctx.tableName), 0);
        });
      }
    });

    describe('set(sid, session) with ttl', () => {
      const ctx = freshStore(backend, { ttl: 120000 });
      const secondsLeft = (sid) => expiresIn(backend, ctx.raw, ctx.tableName, sid);

      it('uses ttl without maxAge', async () => {
        await ctx.store.set('e', { cookie: { originalMaxAge: null, expires: null } });
        assertBetween(await secondsLeft('e'), 118, 120);
      });

      it('uses ttl without a cookie', async () => {
        await ctx.store.set('e', { n: 1 });
        assertBetween(await secondsLeft('e'), 118, 120);
      });

      it('prefers maxAge over ttl', async () => {
        await ctx.store.set('e', { cookie: { maxAge: 600000 } });
        assertBetween(await secondsLeft('e'), 598, 600);
      });
    });

    describe('touch(sid, session) expiry', () => {
      const ctx = freshStore(backend);
      const secondsLeft = (sid) => expiresIn(backend, ctx.raw, ctx.tableName, sid);
      const storedMs = (sid) => storedExpiryMs(backend, ctx.raw, ctx.tableName, sid);

      it('resolves with undefined', async () => {
        await ctx.store.set('u', { cookie: { maxAge: 60000 } });
        assert.equal(await ctx.store.touch('u', { cookie: liveCookie() }), undefined);
      });

      it('moves expiry to cookie.expires', async () => {
        await ctx.store.set('u', { cookie: { maxAge: 60000 } });
        await ctx.store.touch('u', { cookie: { expires: FIXED_EXPIRY } });
        assert.equal(await storedMs('u'), Date.parse(FIXED_EXPIRY));
      });

      it('moves expiry by maxAge', async () => {
        await ctx.store.set('u', { cookie: { maxAge: 60000 } });
        await ctx.store.touch('u', { cookie: { maxAge: HOUR } });
        assertBetween(await secondsLeft('u'), 3598, 3600);
      });

      it('moves expiry by a Cookie instance', async () => {
        await ctx.store.set('u', { cookie: { maxAge: 60000 } });
        await ctx.store.touch('u', { cookie: new Cookie({ maxAge: HOUR }) });
        assertBetween(await secondsLeft('u'), 3598, 3600);
      });

      it('gives a cookieless touch one day', async () => {
        await ctx.store.set('u', { cookie: { maxAge: 60000 } });
        await ctx.store.touch('u', {});
        assertBetween(await secondsLeft('u'), 86398, 86400);
      });

      it('keeps the stored session text', async () => {
        await ctx.store.set('u', { cookie: liveCookie(60000), n: 1 });
        const before = await rawSess(backend, ctx.raw, ctx.tableName, 'u');
        await ctx.store.touch('u', { cookie: liveCookie(), n: 99, extra: true });
        assert.equal(await rawSess(backend, ctx.raw, ctx.tableName, 'u'), before);
      });

      describe('with a stale copy', () => {
        let stale;

        beforeEach(async () => {
          const T0 = Date.now();
          const saved = (n) => ({ cookie: { originalMaxAge: 60000, expires: new Date(T0 + 60000) }, n });
          stale = { cookie: { originalMaxAge: HOUR, expires: new Date(T0 + HOUR) }, n: 1 };
          await ctx.store.set('u', saved(1));
          await ctx.store.set('u', saved(2));
        });

        it('resolves without error', async () => {
          await assert.doesNotReject(ctx.store.touch('u', stale));
        });

        it('keeps the newer session data', async () => {
          await ctx.store.touch('u', stale);
          assert.equal((await ctx.store.get('u')).n, 2);
        });

        it('moves the expiry to the copy', async () => {
          await ctx.store.touch('u', stale);
          assertBetween(await secondsLeft('u'), 3590, 3600);
        });

        for (const [name, session] of Object.entries({
          'null expiry fields': { cookie: { originalMaxAge: null, expires: null } },
          'an empty session': {},
        })) {
          it(`calls back once for ${name}`, async () => {
            const calls = [];
            await ctx.store.touch('u', session, (...args) => calls.push(args));
            await sleep(20);
            assert.equal(calls.length, 1);
            assert.ifError(calls[0][0]);
          });

          it(`keeps the data for ${name}`, async () => {
            await ctx.store.touch('u', session);
            assert.equal((await ctx.store.get('u')).n, 2);
          });
        }
      });

      it('creates no row for unknown sid', async () => {
        await ctx.store.set('other', { cookie: { maxAge: 60000 } });
        await ctx.store.touch('never-seen', { cookie: liveCookie() });
        assert.equal(await rawCount(backend, ctx.raw, ctx.tableName, 'never-seen'), 0);
        assert.equal(await ctx.store.length(), 1);
      });

      it('does not revive a destroyed session', async () => {
        await ctx.store.set('t2', { cookie: { maxAge: 60000 } });
        await ctx.store.destroy('t2');
        await ctx.store.touch('t2', { cookie: liveCookie() });
        assert.equal(await ctx.store.get('t2'), null);
        assert.equal(await rawCount(backend, ctx.raw, ctx.tableName, 't2'), 0);
      });

      it('does not revive an expired session', async () => {
        await ctx.store.set('t3', { cookie: { expires: new Date(Date.now() - 60000) } });
        await ctx.store.touch('t3', { cookie: liveCookie() });
        assert.equal(await ctx.store.get('t3'), null);
        assert.ok((await secondsLeft('t3')) < 0);
      });

      it('rejects an invalid expiry', async () => {
        await ctx.store.set('u', { cookie: { expires: new Date(FIXED_EXPIRY) } });
        await assert.rejects(ctx.store.touch('u', { cookie: { expires: 'soon' } }), { code: 'ERR_INVALID_ARGUMENT' });
        assert.equal(await storedMs('u'), Date.parse(FIXED_EXPIRY));
      });
    });

    describe('touch(sid, session) with disableTouch', () => {
      const ctx = freshStore(backend, { disableTouch: true });

      it('leaves the expiry alone', async () => {
        await ctx.store.set('u', { cookie: { expires: new Date(FIXED_EXPIRY) } });
        await ctx.store.touch('u', { cookie: liveCookie() });
        assert.equal(await storedExpiryMs(backend, ctx.raw, ctx.tableName, 'u'), Date.parse(FIXED_EXPIRY));
      });
    });

    describe('millisecond precision', () => {
      const ctx = freshStore(backend);

      it('stores expires to the millisecond', async () => {
        const expires = new Date(Date.now() + HOUR + 123);
        await ctx.store.set('p', { cookie: { expires } });
        assert.equal(await storedExpiryMs(backend, ctx.raw, ctx.tableName, 'p'), expires.getTime());
      });

      describe('one millisecond past expiry', () => {
        beforeEach(async () => {
          await ctx.store.set('live', { cookie: { maxAge: HOUR } });
          await ctx.store.set('p', { cookie: { expires: new Date(Date.now() - 1) } });
        });

        it('makes get return null', async () => {
          assert.equal(await ctx.store.get('p'), null);
        });

        it('leaves it out of all', async () => {
          assert.equal((await ctx.store.all()).length, 1);
        });

        it('leaves it out of length', async () => {
          assert.equal(await ctx.store.length(), 1);
        });

        it('makes touch skip it', async () => {
          await ctx.store.touch('p', { cookie: liveCookie() });
          assert.equal(await ctx.store.get('p'), null);
        });
      });

      it('shows a session until expires', async () => {
        await ctx.store.set('p', { cookie: { expires: new Date(Date.now() + 400) } });
        assert.notEqual(await ctx.store.get('p'), null);
        await sleep(500);
        assert.equal(await ctx.store.get('p'), null);
      });
    });

    describe('after the expiry passes', () => {
      let ctx;
      const long = { cookie: { maxAge: HOUR }, n: 'long' };

      before(async () => {
        ctx = await openStore(backend, { cleanupInterval: 0 });
        await ctx.store.set('x-short', { cookie: { maxAge: 1000 } });
        await ctx.store.set('x-long', long);
        await ctx.store.set('e3', {
          cookie: { maxAge: null, originalMaxAge: null, expires: new Date(Date.now() + 1000) },
        });
        await ctx.store.set('t1', { cookie: { maxAge: 1000 } });
        await sleep(1500);
      });
      after(() => ctx.cleanup());

      it('makes get return null', async () => {
        assert.equal(await ctx.store.get('x-short'), null);
      });

      it('hides cookie.expires sessions too', async () => {
        assert.equal(await ctx.store.get('e3'), null);
      });

      it('leaves only live sessions in all', async () => {
        assert.deepEqual(await ctx.store.all(), [long]);
      });

      it('leaves them out of length', async () => {
        assert.equal(await ctx.store.length(), 1);
      });

      it('keeps the rows until cleanup', async () => {
        assert.equal(await rawCount(backend, ctx.raw, ctx.tableName), 4);
      });

      // The tests below touch an expired row, so they run last: if touch wrongly revives it,
      // only they fail.
      it('lets touch resolve without error', async () => {
        await assert.doesNotReject(ctx.store.touch('t1', { cookie: liveCookie() }));
      });

      it('keeps a touched session hidden', async () => {
        await ctx.store.touch('t1', { cookie: liveCookie() });
        assert.equal(await ctx.store.get('t1'), null);
      });

      it('keeps the expiry of a touched session', async () => {
        await ctx.store.touch('t1', { cookie: liveCookie() });
        assert.ok((await expiresIn(backend, ctx.raw, ctx.tableName, 't1')) < 0);
      });
    });
  });
}
