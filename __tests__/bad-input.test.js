'use strict';

// Bad input, table-driven: every case fails its call with a coded error and writes nothing.
// Also rows that are not JSON, and a fuzz test of set/get round trips.
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');

const { backends, openStore, quote, rawCount, uniqueTable } = require('./helpers');

const live = { cookie: { maxAge: 60000 } };
const circular = { cookie: { maxAge: 60000 } };
circular.self = circular;

/** Each case: a title, the call, and the code and error class it must fail with. */
const cases = [
  { title: 'number sid', call: (s) => s.set(42, live), code: 'ERR_INVALID_ARGUMENT', kind: TypeError },
  { title: 'empty sid', call: (s) => s.set('', live), code: 'ERR_INVALID_ARGUMENT', kind: TypeError },
  { title: 'undefined sid on get', call: (s) => s.get(undefined), code: 'ERR_INVALID_ARGUMENT', kind: TypeError },
  { title: 'object sid on destroy', call: (s) => s.destroy({}), code: 'ERR_INVALID_ARGUMENT', kind: TypeError },
  {
    title: 'sid over 255 characters',
    call: (s) => s.set('s'.repeat(256), live),
    code: 'ERR_INVALID_ARGUMENT',
    kind: RangeError,
  },
  { title: 'sid with NUL', call: (s) => s.set('a\0b', live), code: 'ERR_INVALID_ARGUMENT', kind: TypeError },
  {
    title: 'sid with a lone surrogate',
    call: (s) => s.set('x\uD800', live),
    code: 'ERR_INVALID_ARGUMENT',
    kind: TypeError,
  },
  {
    title: 'destroy of a sid with a lone surrogate',
    call: (s) => s.destroy('x\uDFFF'),
    code: 'ERR_INVALID_ARGUMENT',
    kind: TypeError,
  },
  { title: 'null session', call: (s) => s.set('bad-null', null), code: 'ERR_INVALID_ARGUMENT', kind: TypeError },
  { title: 'string session', call: (s) => s.set('bad-string', '{}'), code: 'ERR_INVALID_ARGUMENT', kind: TypeError },
  { title: 'array session', call: (s) => s.set('bad-array', []), code: 'ERR_INVALID_ARGUMENT', kind: TypeError },
  {
    title: 'circular session',
    call: (s) => s.set('bad-cycle', circular),
    code: 'ERR_SESSION_NOT_SERIALIZABLE',
    kind: TypeError,
  },
  {
    title: 'BigInt in session',
    call: (s) => s.set('bad-bigint', { cookie: { maxAge: 60000 }, n: 10n }),
    code: 'ERR_SESSION_NOT_SERIALIZABLE',
    kind: TypeError,
  },
  {
    title: 'invalid cookie.expires string',
    call: (s) => s.set('bad-expires', { cookie: { expires: 'not a date' } }),
    code: 'ERR_INVALID_ARGUMENT',
    kind: TypeError,
  },
  {
    title: 'Invalid Date cookie.expires',
    call: (s) => s.set('bad-date', { cookie: { expires: new Date(NaN) } }),
    code: 'ERR_INVALID_ARGUMENT',
    kind: TypeError,
  },
  {
    title: 'string cookie.maxAge',
    call: (s) => s.set('bad-maxage', { cookie: { maxAge: '60000' } }),
    code: 'ERR_INVALID_ARGUMENT',
    kind: TypeError,
  },
  {
    title: 'expiry past year 9999',
    call: (s) => s.set('bad-year', { cookie: { expires: new Date('+010000-01-01T00:00:00Z') } }),
    code: 'ERR_INVALID_ARGUMENT',
    kind: Error,
  },
  {
    title: 'touch with invalid expires',
    call: (s) => s.touch('bad-touch', { cookie: { expires: 'soon' } }),
    code: 'ERR_INVALID_ARGUMENT',
    kind: TypeError,
  },
];

const BAD_SIDS = ['bad-null', 'bad-string', 'bad-array', 'bad-cycle', 'bad-bigint', 'bad-expires', 'bad-date'];

for (const backend of backends) {
  describe(backend.name, { skip: backend.skip }, () => {
    let ctx;
    before(async () => {
      ctx = await openStore(backend);
      await ctx.store.ready;
    });
    after(() => ctx.cleanup());

    describe('bad input', () => {
      for (const { title, call, code, kind } of cases) {
        it(`rejects ${title}`, async () => {
          await assert.rejects(call(ctx.store), (error) => {
            assert.ok(error instanceof kind, `${error.name} is a ${kind.name}`);
            assert.equal(error.code, code);
            assert.ok(error.message.length > 20, 'the message explains the error');
            return true;
          });
        });

        it(`calls back once for ${title}`, async () => {
          // The promise of a call with a callback never rejects: the callback gets the error.
          const errors = [];
          const result = await new Promise((resolve) => {
            const store = new Proxy(ctx.store, {
              get: (target, name) =>
                typeof target[name] === 'function'
                  ? (...args) =>
                      target[name](...args, (error) => {
                        errors.push(error);
                        setImmediate(resolve, 'called');
                      })
                  : target[name],
            });
            call(store);
          });
          assert.equal(result, 'called');
          assert.equal(errors.length, 1);
          assert.equal(errors[0].code, code);
        });
      }

      it('writes no row for any bad call', async () => {
        for (const sid of BAD_SIDS) {
          assert.equal(await rawCount(backend, ctx.raw, ctx.tableName, sid), 0, sid);
        }
      });

      it('still serves good calls afterwards', async () => {
        await ctx.store.set('good', live);
        assert.deepEqual(await ctx.store.get('good'), live);
      });
    });

    describe('rows that are not JSON', () => {
      it('reads as no session and reports', async () => {
        const reported = [];
        const options = { onError: (error) => reported.push(error) };
        let local;
        if (backend.name === 'postgres') {
          // A json column rejects invalid JSON, so only a legacy text column can hold such a row.
          const tableName = uniqueTable('corrupt');
          const setup = await backend.raw(backend.url());
          await setup.query(
            `CREATE TABLE "${tableName}" (sid varchar(255) PRIMARY KEY, sess text NOT NULL, expired timestamptz NOT NULL)`,
          );
          await setup.close();
          local = await openStore(backend, { ...options, tableName, createTable: false });
        } else {
          local = await openStore(backend, options);
        }
        try {
          await local.store.ready;
          const table = quote(backend, local.tableName);
          const future = backend.name === 'mysql' ? '2100-01-01 00:00:00' : '2100-01-01T00:00:00.000Z';
          await local.raw.query(`INSERT INTO ${table} (sid, sess, expired) VALUES (?, ?, ?)`, [
            'broken',
            '{"cookie":',
            future,
          ]);
          await local.raw.query(`INSERT INTO ${table} (sid, sess, expired) VALUES (?, ?, ?)`, ['number', '42', future]);
          await local.store.set('fine', live);
          assert.equal(await local.store.get('broken'), null);
          assert.equal(reported.length, 1);
          assert.equal(reported[0].code, 'ERR_CORRUPT_SESSION');
          assert.match(reported[0].message, /stored session broken in table "/);
          assert.equal(await local.store.get('number'), null);
          assert.match(reported[1].message, /is JSON but not an object/);
          assert.deepEqual(await local.store.all(), [live]);
          assert.equal(reported.length, 4);
        } finally {
          await local.cleanup();
          if (backend.name === 'postgres') await ctx.raw.query(`DROP TABLE IF EXISTS "${local.tableName}"`);
        }
      });
    });

    describe('fuzzed round trips', () => {
      it('returns what JSON.parse(JSON.stringify()) gives', async () => {
        const random = seeded(backend.name.length * 7919);
        for (let round = 0; round < 60; round += 1) {
          const sid = randomSid(random);
          const session = { cookie: { maxAge: 60000 }, data: randomValue(random, 0) };
          await ctx.store.set(sid, session);
          const expected = JSON.parse(JSON.stringify(session));
          assert.deepEqual(await ctx.store.get(sid), expected, `sid ${JSON.stringify(sid)}`);
        }
      });
    });
  });
}

/** Returns a deterministic pseudo-random generator (mulberry32), so a failure can be rerun. */
function seeded(seed) {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const ALPHABET = 'abcXYZ019 _%-.\'"\\/\u00e9\u00df\u4e2d\u{1f600}\u0001\t\n';

function randomString(random, max) {
  const chars = [...ALPHABET];
  let text = '';
  const length = Math.floor(random() * max);
  for (let i = 0; i < length; i += 1) text += chars[Math.floor(random() * chars.length)];
  return text;
}

function randomSid(random) {
  // Sids must be non-empty, at most 255 characters and free of NUL.
  return `f${randomString(random, 40)}`;
}

function randomValue(random, depth) {
  const pick = random();
  if (depth > 4 || pick < 0.3) {
    const scalar = random();
    if (scalar < 0.2) return randomString(random, 30);
    if (scalar < 0.4) return Math.floor(random() * 2 ** 40) - 2 ** 39;
    if (scalar < 0.55) return random() * 1e6 - 5e5;
    if (scalar < 0.7) return random() < 0.5;
    if (scalar < 0.8) return null;
    if (scalar < 0.9) return new Date(Math.floor(random() * 4e12));
    return undefined;
  }
  if (pick < 0.6) {
    return Array.from({ length: Math.floor(random() * 5) }, () => randomValue(random, depth + 1));
  }
  const object = {};
  const keys = Math.floor(random() * 5);
  for (let i = 0; i < keys; i += 1) object[randomString(random, 8)] = randomValue(random, depth + 1);
  return object;
}
