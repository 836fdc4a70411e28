'use strict';

// What is stored: exactly the JSON.stringify text of the session, read back with JSON.parse,
// in the store's own table and in hand-made tables whose sess column is json, jsonb or text.
const { describe, it, before, after, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');

const Cookie = require('express-session/session/cookie');

const { KnexSessionStore } = require('..');
const { backends, openStore, quote, expiresIn, rawCount, sleep, uniqueTable } = require('./helpers');

/** Returns the raw `sess` text of `sid`. */
async function rawSess(backend, raw, tableName, sid) {
  const column = { sqlite: 'sess', postgres: 'sess::text', mysql: 'CAST(sess AS CHAR)' }[backend.name];
  const rows = await raw.query(`SELECT ${column} AS sess FROM ${quote(backend, tableName)} WHERE sid = ?`, [sid]);
  return rows.length === 0 ? undefined : rows[0].sess;
}

/** Opens a store on a fresh table before each test of the enclosing describe and closes it after. */
function freshStore(backend) {
  const ctx = {};
  beforeEach(async () => {
    Object.assign(ctx, await openStore(backend));
    await ctx.store.ready;
  });
  afterEach(() => ctx.cleanup());
  return ctx;
}

/** Asserts that `value` lies in [min, max]. */
function assertBetween(value, min, max) {
  assert.ok(value >= min && value <= max, `expected ${value} to be in [${min}, ${max}]`);
}

function nested(depth) {
  const root = {};
  let node = root;
  for (let i = 1; i < depth; i += 1) {
    node.child = {};
    node = node.child;
  }
  return root;
}

// Sessions whose JSON text the store must keep byte for byte.
const EXACT = {
  'key order': { z: 1, a: 2, m: { y: 1, b: 2 } },
  numbers: { int: 42, neg: -7, float: 0.1, exp: 1e21, tiny: 5e-324, zero: -0 },
  'escaped characters': { s: 'quote " backslash \\ slash / tab \t newline \n' },
  'control characters': { s: '\u0001\u001f\u007f' },
  'line separators': { s: '\u2028\u2029' },
  'non-ASCII text': { s: 'é ß 漢字 עברית \u{1F600} e\u0301' },
  'an escaped NUL': { s: 'a\u0000b' },
  'a lone surrogate': { s: '\u{1F600}'.slice(0, 1) },
  'nulls and booleans': { a: null, b: true, c: false, d: [] },
  'an empty object': {},
  'a 1 MB string': { s: 'x'.repeat(1_000_000) },
  '40 nested objects': nested(40),
};

// Types of `sess` in hand-made tables. Their `expired` column has the type connect-session-knex 5
// created.
const SESS_TYPES = {
  sqlite: ['json', 'text'],
  postgres: ['json', 'jsonb', 'text'],
  mysql: ['json', 'longtext', 'text'],
};
const EXPIRED_TYPE = { sqlite: 'datetime', postgres: 'timestamptz', mysql: 'DATETIME(3)' };
const JSON_TYPE_SQL = {
  sqlite: 'json_type(sess)',
  postgres: 'json_typeof(sess::json)',
  mysql: 'JSON_TYPE(sess)',
};

/** Creates a table by hand with `sess` of `sessType` and opens a store on it with createTable off. */
async function openHandMadeTable(backend, sessType) {
  const url = backend.url();
  const raw = await backend.raw(url);
  const tableName = uniqueTable(`hand_${sessType}`);
  const table = quote(backend, tableName);
  await raw.query(
    `CREATE TABLE ${table} (sid varchar(255) PRIMARY KEY, sess ${sessType} NOT NULL, expired ${EXPIRED_TYPE[backend.name]} NOT NULL)`,
  );
  const store = new KnexSessionStore({ knex: url, tableName, createTable: false, cleanupInterval: 0 });
  // The store switches a SQLite file to WAL mode as it opens it, and raw writes from this
  // process during the switch were seen to fail or go unseen. A failed open is left to the tests.
  await store.ready.catch(() => {});
  return {
    store,
    raw,
    table,
    tableName,
    cleanup: async () => {
      await store.close();
      await raw.query(`DROP TABLE IF EXISTS ${table}`);
      await raw.close();
    },
  };
}

/** Inserts a row with raw SQL that expires in an hour, written the way connect-session-knex 5 did. */
async function insertRaw(backend, ctx, sid, sess) {
  const expired = {
    sqlite: '?',
    postgres: "now() + interval '1 hour'",
    mysql: 'UTC_TIMESTAMP(3) + INTERVAL 1 HOUR',
  }[backend.name];
  const params = backend.name === 'sqlite' ? [sid, sess, new Date(Date.now() + 3600000).toISOString()] : [sid, sess];
  await ctx.raw.query(`INSERT INTO ${ctx.table} (sid, sess, expired) VALUES (?, ?, ${expired})`, params);
}

for (const backend of backends) {
  describe(backend.name, { skip: backend.skip }, () => {
    describe('stored text', () => {
      const ctx = freshStore(backend);

      for (const [name, data] of Object.entries(EXACT)) {
        const session = { cookie: { maxAge: 60000 }, ...data };

        it(`keeps ${name} as JSON.stringify gives`, async () => {
          await ctx.store.set('s', session);
          assert.equal(await rawSess(backend, ctx.raw, ctx.tableName, 's'), JSON.stringify(session));
        });

        it(`reads ${name} back equal`, async () => {
          await ctx.store.set('s', session);
          assert.deepEqual(await ctx.store.get('s'), JSON.parse(JSON.stringify(session)));
        });
      }
    });

    describe('JSON.stringify semantics', () => {
      let ctx;
      let cookie;
      let input;
      let out;

      before(async () => {
        ctx = await openStore(backend);
        cookie = new Cookie({ maxAge: 600000 });
        input = {
          cookie,
          when: new Date(0),
          buf: Buffer.from('hi'),
          u: undefined,
          n: NaN,
          arr: [1, undefined, () => 1],
          custom: {
            toJSON() {
              return 'custom-json';
            },
          },
          nested: { d: new Date('2031-01-02T03:04:05.678Z') },
        };
        await ctx.store.set('types', input);
        out = await ctx.store.get('types');
      });
      after(() => ctx.cleanup());

      it('reads back the JSON round trip', () => {
        assert.deepEqual(out, JSON.parse(JSON.stringify(input)));
      });

      it('keeps cookie.expires as ISO text', () => {
        assert.equal(out.cookie.expires, cookie.expires.toISOString());
      });

      it('keeps only serialised cookie fields', () => {
        const allowed = [
          'originalMaxAge',
          'expires',
          'secure',
          'httpOnly',
          'domain',
          'path',
          'sameSite',
          'partitioned',
          'priority',
        ];
        const extra = Object.keys(out.cookie).filter((key) => !allowed.includes(key));
        assert.deepEqual(extra, []);
      });

      it('drops the Cookie internals', () => {
        for (const key of ['_expires', 'maxAge', 'data']) {
          assert.equal(key in out.cookie, false, `cookie.${key}`);
        }
      });

      it('stores a Date as ISO text', () => {
        assert.equal(out.when, '1970-01-01T00:00:00.000Z');
      });

      it('stores a Buffer through toJSON', () => {
        assert.deepEqual(out.buf, { type: 'Buffer', data: [104, 105] });
      });

      it('drops undefined properties', () => {
        assert.equal('u' in out, false);
      });

      it('stores NaN as null', () => {
        assert.equal(out.n, null);
      });

      it('stores array holes as null', () => {
        assert.deepEqual(out.arr, [1, null, null]);
      });

      it('uses a custom toJSON', () => {
        assert.equal(out.custom, 'custom-json');
      });

      it('stores a nested Date', () => {
        assert.equal(out.nested.d, '2031-01-02T03:04:05.678Z');
      });

      it('takes the expiry from the Cookie', async () => {
        assertBetween(await expiresIn(backend, ctx.raw, ctx.tableName, 'types'), 598, 600);
      });
    });

    describe('unserialisable sessions', () => {
      const ctx = freshStore(backend);

      const unserialisable = {
        'a circular session': () => {
          const session = { cookie: { maxAge: 60000 } };
          session.self = session;
          return session;
        },
        'a BigInt value': () => ({ cookie: { maxAge: 60000 }, n: 10n }),
        'a throwing toJSON': () => ({
          cookie: { maxAge: 60000 },
          bad: {
            toJSON() {
              throw new Error('toJSON failed');
            },
          },
        }),
      };

      for (const [name, build] of Object.entries(unserialisable)) {
        it(`rejects ${name}`, async () => {
          await assert.rejects(ctx.store.set('bad', build()), {
            name: 'TypeError',
            code: 'ERR_SESSION_NOT_SERIALIZABLE',
          });
        });

        it(`calls back once for ${name}`, async () => {
          const calls = [];
          await ctx.store.set('bad', build(), (...args) => calls.push(args));
          await sleep(20);
          assert.equal(calls.length, 1);
          assert.ok(calls[0][0] instanceof TypeError);
          assert.equal(calls[0][0].code, 'ERR_SESSION_NOT_SERIALIZABLE');
        });

        it(`writes no row for ${name}`, async () => {
          await ctx.store.set('bad', build()).catch(() => {});
          await ctx.store.set('bad', build(), () => {});
          assert.equal(await rawCount(backend, ctx.raw, ctx.tableName), 0);
        });

        it(`keeps the old row for ${name}`, async () => {
          await ctx.store.set('bad', { cookie: { maxAge: 60000 }, n: 1 });
          await ctx.store.set('bad', build()).catch(() => {});
          assert.equal((await ctx.store.get('bad'))?.n, 1);
        });
      }

      it('accepts a later valid set', async () => {
        await ctx.store.set('circ', unserialisable['a circular session']()).catch(() => {});
        await ctx.store.set('big', unserialisable['a BigInt value']()).catch(() => {});
        await ctx.store.set('ok', { cookie: { maxAge: 60000 } });
        assert.deepEqual(await ctx.store.get('ok'), { cookie: { maxAge: 60000 } });
      });

      it('lets touch take a circular session', async () => {
        await ctx.store.set('circ', { cookie: { maxAge: 60000 } });
        await ctx.store.touch('circ', unserialisable['a circular session']());
        assert.notEqual(await ctx.store.get('circ'), null);
      });
    });

    for (const sessType of SESS_TYPES[backend.name]) {
      describe(`hand-made table with sess ${sessType}`, () => {
        let ctx;
        const session = { cookie: { maxAge: 60000 }, a: 1 };

        beforeEach(async () => {
          ctx = await openHandMadeTable(backend, sessType);
        });
        afterEach(() => ctx.cleanup());

        it('reads a set session as object', async () => {
          await ctx.store.set('j', session);
          const out = await ctx.store.get('j');
          assert.equal(typeof out, 'object');
          assert.deepEqual(out, session);
        });

        it('stores a JSON object, not a string', async () => {
          await ctx.store.set('j', session);
          const rows = await ctx.raw.query(`SELECT ${JSON_TYPE_SQL[backend.name]} AS t FROM ${ctx.table}`);
          assert.equal(String(rows[0].t).toLowerCase(), 'object');
        });

        if (sessType !== 'jsonb') {
          it('stores the exact JSON text', async () => {
            await ctx.store.set('j', session);
            assert.equal(await rawSess(backend, ctx.raw, ctx.tableName, 'j'), JSON.stringify(session));
          });
        }

        it('reads a raw-inserted row as object', async () => {
          await insertRaw(backend, ctx, 'j', '{"cookie":{},"a":1}');
          const out = await ctx.store.get('j');
          assert.equal(typeof out, 'object');
          assert.equal(out?.a, 1);
        });

        it('replaces a session in place', async () => {
          await ctx.store.set('j', session);
          await ctx.store.set('j', { ...session, a: 2 });
          assert.equal((await ctx.store.get('j'))?.a, 2);
          assert.equal(await rawCount(backend, ctx.raw, ctx.tableName), 1);
        });

        it('lists its sessions in all', async () => {
          await ctx.store.set('j', session);
          await insertRaw(backend, ctx, 'k', '{"cookie":{},"a":2}');
          const values = (await ctx.store.all()).map((entry) => entry.a).sort();
          assert.deepEqual(values, [1, 2]);
        });
      });
    }
  });
}
