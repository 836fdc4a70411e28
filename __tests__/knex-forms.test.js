'use strict';

// The core behaviour, run with each form of the `knex` option users pass: a URL, a knex config
// object and a knex instance. The store reads client and connection from the last two.
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const knexFactory = require('knex');

const { KnexSessionStore } = require('..');
const { backends, expiresIn, rawCount, quote, sleep, uniqueTable } = require('./helpers');

/** Returns the knex config object for `url` on `backend`. */
function knexConfig(backend, url) {
  if (backend.name === 'sqlite') {
    return {
      client: 'better-sqlite3',
      connection: { filename: url.replace(/^sqlite:\/\//, '') },
      useNullAsDefault: true,
    };
  }
  if (backend.name === 'postgres') return { client: 'pg', connection: url };
  return { client: 'mysql2', connection: url };
}

const forms = [
  { name: 'URL', make: (_backend, url) => ({ knex: url }) },
  { name: 'knex config object', make: (backend, url) => ({ knex: knexConfig(backend, url) }) },
  {
    name: 'knex instance',
    make: (backend, url) => {
      const knex = knexFactory(knexConfig(backend, url));
      return { knex, destroy: () => knex.destroy() };
    },
  },
];

const live = (extra = {}) => ({ cookie: { originalMaxAge: 600000, expires: new Date(Date.now() + 600000) }, ...extra });

for (const backend of backends) {
  describe(backend.name, { skip: backend.skip }, () => {
    for (const form of forms) {
      describe(`with a ${form.name}`, () => {
        let store;
        let raw;
        let tableName;
        let made;

        before(async () => {
          const url = backend.url();
          tableName = uniqueTable('form');
          made = form.make(backend, url);
          store = new KnexSessionStore({ knex: made.knex, tableName, cleanupInterval: 0 });
          raw = await backend.raw(url);
          await store.ready;
        });

        after(async () => {
          await store.close();
          await raw.query(`DROP TABLE IF EXISTS ${quote(backend, tableName)}`);
          await raw.close();
          if (made.destroy) await made.destroy();
        });

        it('reads back what set stored', async () => {
          const session = live({ n: 1 });
          await store.set('f1', session);
          assert.deepEqual(await store.get('f1'), JSON.parse(JSON.stringify(session)));
        });

        it('hides a session once expired', async () => {
          await store.set('f2', { cookie: { maxAge: 300 } });
          await sleep(500);
          assert.equal(await store.get('f2'), null);
          assert.equal(await rawCount(backend, raw, tableName, 'f2'), 1);
        });

        it('touch moves the stored expiry', async () => {
          await store.set('f3', { cookie: { maxAge: 60000 } });
          await store.touch('f3', { cookie: { maxAge: 3600000 } });
          const seconds = await expiresIn(backend, raw, tableName, 'f3');
          assert.ok(seconds > 3590, `expires in ${seconds} s`);
          assert.ok(seconds <= 3600, `expires in ${seconds} s`);
        });

        it('counts, lists, destroys and clears', async () => {
          await store.clear();
          await store.set('f4', live({ n: 4 }));
          await store.set('f5', live({ n: 5 }));
          assert.equal(await store.length(), 2);
          assert.equal((await store.all()).length, 2);
          assert.equal(await store.destroy('f4'), 1);
          assert.equal(await store.clear(), 1);
          assert.equal(await store.length(), 0);
        });
      });
    }
  });
}
