'use strict';

// Compatibility with connect-session-knex 5 on one shared table, in both directions. Users switch
// from the old store to ours on the same `sessions` table, and during a rolling deploy old and new
// processes read, touch, destroy and clean up each other's rows.
//
// The old store has known differences that these tests work around on purpose instead of testing:
// - set() derives the expiry from cookie.maxAge only, so every session here carries a maxAge that
//   agrees with its cookie.expires;
// - length() counts expired rows too, so only our length() is checked against live sessions;
// - touch() reads cookie.expires only, so every touch here passes a cookie with expires;
// - on SQLite and MySQL/MariaDB it compares expiries at whole seconds (datetime() and DATETIME
//   strings without fractions), so each wait for an expiry is more than a second past it.

const { describe, it } = require('node:test');
const assert = require('node:assert/strict');
const knexFactory = require('knex');
const Cookie = require('express-session/session/cookie');
const { ConnectSessionKnexStore } = require('connect-session-knex-v5');

const { KnexSessionStore } = require('..');
const { backends, quote, expiresIn, rawCount, sleep, tmpFile, uniqueTable } = require('./helpers');

/** maxAge of sessions that expire during a test, in ms. */
const SHORT_MAX_AGE = 1500;
/** Wait after writing a SHORT_MAX_AGE session until both stores see it as expired, in ms. */
const EXPIRY_WAIT = 2600;
const HOUR = 3600000;

/** Returns a session as express-session hands it to a store, with a real Cookie. */
function sampleSession(maxAge, fields = {}) {
  return {
    cookie: new Cookie({ maxAge, path: '/', httpOnly: true }),
    user: { id: 42, name: 'Zoë "quoted" \\ back\nslash' },
    roles: ['admin', 'ü'],
    flash: null,
    ratio: 3.5,
    ok: true,
    emoji: '🍪',
    ...fields,
  };
}

/** Returns what a store must give back for `session`: its JSON round trip. */
function stored(session) {
  return JSON.parse(JSON.stringify(session));
}

/** Returns a session whose cookie.expires is `ms` from now, the form both stores' touch() reads. */
function touchedSession(ms, fields = {}) {
  return { cookie: { originalMaxAge: ms, expires: new Date(Date.now() + ms), path: '/' }, ...fields };
}

/** Asserts that `low < actual <= high`, naming `what` in the message. */
function assertWithin(actual, low, high, what) {
  assert.ok(actual > low && actual <= high, `${what} is ${actual}, expected more than ${low} and at most ${high}`);
}

/** Sorts sessions by their `n` field, so arrays from all() compare regardless of row order. */
function byN(sessions) {
  return [...sessions].sort((a, b) => a.n - b.n);
}

/** Returns a raw-SQL URL and a knex config for a fresh database target on `backend`. */
function target(backend) {
  if (backend.name === 'sqlite') {
    const filename = tmpFile();
    return {
      url: `sqlite://${filename}`,
      knexConfig: { client: 'better-sqlite3', connection: { filename }, useNullAsDefault: true },
    };
  }
  const url = backend.url();
  return { url, knexConfig: { client: backend.name === 'postgres' ? 'pg' : 'mysql2', connection: url } };
}

/**
 * Opens a knex instance and a raw connection for one fresh table name, with functions that open
 * the old store and ours on that table. Its `close` closes every store and drops the table.
 * @param {import('./helpers').Backend} backend
 */
async function openShared(backend) {
  const { url, knexConfig } = target(backend);
  const knex = knexFactory(knexConfig);
  const tableName = uniqueTable('interop');
  const raw = await backend.raw(url);
  const oldStores = [];
  const ourStores = [];

  return {
    knex,
    raw,
    tableName,
    async openOld(options = {}) {
      const store = new ConnectSessionKnexStore({ knex, tableName, cleanupInterval: 0, ...options });
      oldStores.push(store);
      await store.ready;
      return store;
    },
    async openOurs(options = {}) {
      const store = new KnexSessionStore({ knex, tableName, cleanupInterval: 0, ...options });
      ourStores.push(store);
      await store.ready;
      return store;
    },
    async close() {
      for (const store of ourStores) await store.close();
      for (const store of oldStores) clearTimeout(store.nextDbCleanup);
      await raw.query(`DROP TABLE IF EXISTS ${quote(backend, tableName)}`);
      await raw.close();
      await knex.destroy();
    },
  };
}

/** Returns the table's columns, types and indexes as the database describes them. */
async function tableLayout(backend, raw, tableName) {
  if (backend.name === 'sqlite') {
    return raw.query('SELECT type, name, sql FROM sqlite_master WHERE tbl_name = ? ORDER BY name', [tableName]);
  }
  if (backend.name === 'postgres') {
    const columns = await raw.query(
      'SELECT column_name, data_type, character_maximum_length, is_nullable FROM information_schema.columns ' +
        'WHERE table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position',
      [tableName],
    );
    const indexes = await raw.query(
      'SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = ? ORDER BY indexname',
      [tableName],
    );
    return { columns, indexes };
  }
  const rows = await raw.query(`SHOW CREATE TABLE ${quote(backend, tableName)}`);
  return rows[0]['Create Table'];
}

for (const backend of backends) {
  describe(backend.name, { skip: backend.skip }, () => {
    describe('sessions written by the old store', () => {
      it('read deep-equal by ours', async () => {
        const shared = await openShared(backend);
        try {
          const old = await shared.openOld();
          const ours = await shared.openOurs();
          const first = sampleSession(HOUR, { n: 1 });
          const second = { cookie: { maxAge: HOUR }, n: 2, nested: { list: [1, 'two', { three: 3 }] } };
          await old.set('old-1', first);
          await old.set('old-2', second);

          assert.deepEqual(await ours.get('old-1'), stored(first));
          assert.deepEqual(await ours.get('old-2'), stored(second));
          assert.deepEqual(byN(await ours.all()), [stored(first), stored(second)]);
          assert.equal(await ours.length(), 2);
        } finally {
          await shared.close();
        }
      });

      it('are destroyed by ours', async () => {
        const shared = await openShared(backend);
        try {
          const old = await shared.openOld();
          const ours = await shared.openOurs();
          const kept = sampleSession(HOUR, { n: 2 });
          await old.set('old-gone', sampleSession(HOUR, { n: 1 }));
          await old.set('old-kept', kept);

          assert.equal(await ours.destroy('old-gone'), 1);
          assert.equal(await old.get('old-gone'), null);
          assert.equal(await rawCount(backend, shared.raw, shared.tableName, 'old-gone'), 0);
          assert.deepEqual(await old.get('old-kept'), stored(kept));
        } finally {
          await shared.close();
        }
      });

      it('follow touches by ours', async () => {
        const shared = await openShared(backend);
        try {
          const old = await shared.openOld();
          const ours = await shared.openOurs();
          const lengthened = sampleSession(SHORT_MAX_AGE, { n: 1 });
          await old.set('old-lengthened', lengthened);
          await old.set('old-shortened', sampleSession(HOUR, { n: 2 }));

          await ours.touch('old-lengthened', touchedSession(HOUR));
          await ours.touch('old-shortened', touchedSession(SHORT_MAX_AGE));
          const seconds = await expiresIn(backend, shared.raw, shared.tableName, 'old-lengthened');
          assertWithin(seconds, 3590, 3601, 'seconds until old-lengthened expires');
          await sleep(EXPIRY_WAIT);

          // Our touch changes only the expiry, so the old store still reads the data it wrote.
          assert.deepEqual(await old.get('old-lengthened'), stored(lengthened));
          assert.notEqual(await ours.get('old-lengthened'), null);
          assert.equal(await old.get('old-shortened'), null);
          assert.equal(await ours.get('old-shortened'), null);
        } finally {
          await shared.close();
        }
      });

      it('expire for ours at maxAge', async () => {
        const shared = await openShared(backend);
        try {
          const old = await shared.openOld();
          const ours = await shared.openOurs();
          const live = sampleSession(HOUR, { n: 2 });
          await old.set('old-short', sampleSession(SHORT_MAX_AGE, { n: 1 }));
          await old.set('old-live', live);
          assert.notEqual(await ours.get('old-short'), null, 'a session is visible before its maxAge');

          await sleep(EXPIRY_WAIT);
          assert.equal(await ours.get('old-short'), null);
          assert.deepEqual(await ours.get('old-live'), stored(live));
          assert.deepEqual(await ours.all(), [stored(live)]);
          assert.equal(await ours.length(), 1);
          assert.equal(await rawCount(backend, shared.raw, shared.tableName, 'old-short'), 1);

          // Touching an expired session must not bring it back for either store.
          await ours.touch('old-short', touchedSession(HOUR));
          assert.equal(await ours.get('old-short'), null);
          assert.equal(await old.get('old-short'), null);
        } finally {
          await shared.close();
        }
      });

      it('are removed by our cleanup', async () => {
        const shared = await openShared(backend);
        try {
          const old = await shared.openOld();
          await old.set('old-expired', sampleSession(-60000));
          await old.set('old-live', sampleSession(HOUR));
          await shared.openOurs({ cleanupInterval: 200 });
          await sleep(800);

          assert.equal(await rawCount(backend, shared.raw, shared.tableName, 'old-expired'), 0);
          assert.equal(await rawCount(backend, shared.raw, shared.tableName, 'old-live'), 1);
        } finally {
          await shared.close();
        }
      });
    });

    describe('sessions written by our store', () => {
      it('read deep-equal by the old store', async () => {
        const shared = await openShared(backend);
        try {
          const ours = await shared.openOurs();
          const old = await shared.openOld();
          const first = sampleSession(HOUR, { n: 1 });
          const second = { cookie: { maxAge: HOUR }, n: 2, nested: { list: [1, 'two', { three: 3 }] } };
          await ours.set('new-1', first);
          await ours.set('new-2', second);

          assert.deepEqual(await old.get('new-1'), stored(first));
          assert.deepEqual(await old.get('new-2'), stored(second));
          assert.deepEqual(byN(await old.all()), [stored(first), stored(second)]);
        } finally {
          await shared.close();
        }
      });

      it('are destroyed by the old store', async () => {
        const shared = await openShared(backend);
        try {
          const ours = await shared.openOurs();
          const old = await shared.openOld();
          const kept = sampleSession(HOUR, { n: 2 });
          await ours.set('new-gone', sampleSession(HOUR, { n: 1 }));
          await ours.set('new-kept', kept);

          await old.destroy('new-gone');
          assert.equal(await ours.get('new-gone'), null);
          assert.equal(await rawCount(backend, shared.raw, shared.tableName, 'new-gone'), 0);
          assert.deepEqual(await ours.get('new-kept'), stored(kept));
          assert.equal(await ours.length(), 1);
        } finally {
          await shared.close();
        }
      });

      it('follow touches by the old store', async () => {
        const shared = await openShared(backend);
        try {
          const ours = await shared.openOurs();
          const old = await shared.openOld();
          const lengthened = sampleSession(SHORT_MAX_AGE, { n: 1 });
          await ours.set('new-lengthened', lengthened);
          await ours.set('new-shortened', sampleSession(HOUR, { n: 2 }));

          await old.touch('new-lengthened', touchedSession(HOUR));
          await old.touch('new-shortened', touchedSession(SHORT_MAX_AGE));
          const seconds = await expiresIn(backend, shared.raw, shared.tableName, 'new-lengthened');
          assertWithin(seconds, 3590, 3601, 'seconds until new-lengthened expires');
          await sleep(EXPIRY_WAIT);

          assert.deepEqual(await ours.get('new-lengthened'), stored(lengthened));
          assert.notEqual(await old.get('new-lengthened'), null);
          assert.equal(await ours.get('new-shortened'), null);
          assert.equal(await old.get('new-shortened'), null);
          assert.equal(await ours.length(), 1);
        } finally {
          await shared.close();
        }
      });

      it('expire for the old store', async () => {
        const shared = await openShared(backend);
        try {
          const ours = await shared.openOurs();
          const old = await shared.openOld();
          const live = sampleSession(HOUR, { n: 2 });
          await ours.set('new-short', sampleSession(SHORT_MAX_AGE, { n: 1 }));
          await ours.set('new-live', live);
          assert.notEqual(await old.get('new-short'), null, 'a session is visible before its maxAge');

          await sleep(EXPIRY_WAIT);
          assert.equal(await old.get('new-short'), null);
          assert.deepEqual(await old.get('new-live'), stored(live));
          // The old store's length() counts expired rows too, so it is left unchecked here.
          assert.deepEqual(await old.all(), [stored(live)]);

          // Touching an expired session must not bring it back for either store.
          await old.touch('new-short', touchedSession(HOUR));
          assert.equal(await old.get('new-short'), null);
          assert.equal(await ours.get('new-short'), null);
        } finally {
          await shared.close();
        }
      });

      it('are removed by old store cleanup', async () => {
        const shared = await openShared(backend);
        try {
          const ours = await shared.openOurs();
          await ours.set('new-expired', sampleSession(-60000));
          await ours.set('new-live', sampleSession(HOUR));
          // The old store deletes expired rows once right after `ready`, then every cleanupInterval.
          await shared.openOld({ cleanupInterval: 60000 });
          await sleep(800);

          assert.equal(await rawCount(backend, shared.raw, shared.tableName, 'new-expired'), 0);
          assert.equal(await rawCount(backend, shared.raw, shared.tableName, 'new-live'), 1);
        } finally {
          await shared.close();
        }
      });
    });

    describe('one table shared by both stores', () => {
      it('keeps the last write of either', async () => {
        const shared = await openShared(backend);
        try {
          const old = await shared.openOld();
          const ours = await shared.openOurs();
          const versions = [1, 2, 3, 4].map((version) => sampleSession(HOUR, { version }));
          await old.set('both', versions[0]);
          await ours.set('both', versions[1]);
          assert.deepEqual(await old.get('both'), stored(versions[1]));

          await old.set('both', versions[2]);
          assert.deepEqual(await ours.get('both'), stored(versions[2]));

          await ours.set('both', versions[3]);
          assert.deepEqual(await old.get('both'), stored(versions[3]));
          assert.equal(await rawCount(backend, shared.raw, shared.tableName, 'both'), 1);
        } finally {
          await shared.close();
        }
      });

      it('adopts the old store table unchanged', async () => {
        const shared = await openShared(backend);
        try {
          const old = await shared.openOld();
          const sessions = [1, 2, 3].map((n) => sampleSession(HOUR, { n }));
          for (const [index, session] of sessions.entries()) await old.set(`before-${index}`, session);
          const layoutBefore = await tableLayout(backend, shared.raw, shared.tableName);

          // createTable stays at its default, true, as in an app that only swapped the package.
          const ours = await shared.openOurs();
          assert.deepEqual(await tableLayout(backend, shared.raw, shared.tableName), layoutBefore);
          assert.equal(await rawCount(backend, shared.raw, shared.tableName), 3);
          for (const [index, session] of sessions.entries()) {
            assert.deepEqual(await ours.get(`before-${index}`), stored(session), `before-${index} is still logged in`);
          }
          assert.equal(await ours.length(), 3);

          const added = sampleSession(HOUR, { n: 4 });
          await ours.set('after', added);
          assert.deepEqual(await old.get('after'), stored(added));
        } finally {
          await shared.close();
        }
      });

      it('rolls back to the old store', async () => {
        const shared = await openShared(backend);
        try {
          const ours = await shared.openOurs();
          const sessions = [1, 2].map((n) => sampleSession(HOUR, { n }));
          for (const [index, session] of sessions.entries()) await ours.set(`new-${index}`, session);
          await ours.close();
          const layoutBefore = await tableLayout(backend, shared.raw, shared.tableName);

          const old = await shared.openOld();
          assert.deepEqual(await tableLayout(backend, shared.raw, shared.tableName), layoutBefore);
          for (const [index, session] of sessions.entries()) {
            assert.deepEqual(await old.get(`new-${index}`), stored(session), `new-${index} is still logged in`);
          }
          assert.deepEqual(byN(await old.all()), sessions.map(stored));
          const added = sampleSession(HOUR, { n: 3 });
          await old.set('old-after', added);
          await old.touch('new-0', touchedSession(2 * HOUR));
          await old.destroy('new-1');

          // Rolling forward again: a new process of ours reads what the old one wrote.
          const again = await shared.openOurs();
          assert.deepEqual(await again.get('old-after'), stored(added));
          assert.deepEqual(await again.get('new-0'), stored(sessions[0]));
          assert.equal(await again.get('new-1'), null);
          const seconds = await expiresIn(backend, shared.raw, shared.tableName, 'new-0');
          assertWithin(seconds, 7190, 7201, 'seconds until new-0 expires');
        } finally {
          await shared.close();
        }
      });
    });
  });
}
