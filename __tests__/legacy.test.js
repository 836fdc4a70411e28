'use strict';

// Tables made before this store: created by hand or by older stores with other column types, rows
// in older date forms, and servers whose time zone is not UTC. Each table is made with raw SQL and
// opened with `createTable: false`, except where the store creates the table itself.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const knexFactory = require('knex');
const Cookie = require('express-session/session/cookie');
const { ConnectSessionKnexStore } = require('connect-session-knex-v5');

const { KnexSessionStore } = require('..');
const { backends, quote, expiresIn, rawCount, sleep, uniqueTable } = require('./helpers');

const HOUR = 3600000;
const MINUTE = 60000;

const sqlite = backends.find((backend) => backend.name === 'sqlite');
const postgres = backends.find((backend) => backend.name === 'postgres');
const mysql = backends.find((backend) => backend.name === 'mysql');

/** Column types of legacy tables, per backend. */
const LAYOUTS = {
  sqlite: [
    { title: 'json sess, datetime expired', sess: 'json', expired: 'datetime' },
    { title: 'text sess, text expired', sess: 'text', expired: 'text' },
  ],
  postgres: [
    { title: 'json sess, timestamptz expired', sess: 'json', expired: 'timestamptz' },
    { title: 'jsonb sess', sess: 'jsonb', expired: 'timestamptz' },
    { title: 'text sess', sess: 'text', expired: 'timestamptz' },
    { title: 'timestamp without time zone expired', sess: 'json', expired: 'timestamp(6) without time zone' },
  ],
  mysql: [
    { title: 'JSON sess, DATETIME expired', sess: 'JSON', expired: 'DATETIME' },
    { title: 'TEXT sess', sess: 'TEXT', expired: 'DATETIME' },
    { title: 'LONGTEXT sess', sess: 'LONGTEXT', expired: 'DATETIME' },
    { title: 'TIMESTAMP expired', sess: 'JSON', expired: 'TIMESTAMP' },
  ],
};

/** Returns a session as express-session hands it to a store, with a real Cookie. */
function sampleSession(maxAge, fields = {}) {
  return {
    cookie: new Cookie({ maxAge, path: '/', httpOnly: true }),
    user: { id: 42, name: 'Zoë "quoted" \\ back' },
    emoji: '🍪',
    ...fields,
  };
}

/** Returns what a store must give back for `session`: its JSON round trip. */
function stored(session) {
  return JSON.parse(JSON.stringify(session));
}

/** Returns a session whose cookie.expires is `ms` from now. */
function touchedSession(ms) {
  return { cookie: { originalMaxAge: ms, expires: new Date(Date.now() + ms), path: '/' } };
}

/** Sorts sessions by their `n` field, so arrays from all() compare regardless of row order. */
function byN(sessions) {
  return [...sessions].sort((a, b) => a.n - b.n);
}

/** Returns the statements that create a sessions table with the given column types. */
function createTableSql(backend, tableName, { sess, expired }) {
  const table = quote(backend, tableName);
  const index = quote(backend, `${tableName}_expired_index`);
  return [
    `CREATE TABLE ${table} (sid varchar(255) NOT NULL PRIMARY KEY, sess ${sess} NOT NULL, expired ${expired} NOT NULL)`,
    `CREATE INDEX ${index} ON ${table} (expired)`,
  ];
}

/**
 * Opens a raw connection on `url` and creates a table there by hand when `layout` is given, or lets
 * the store create it otherwise. The result opens our store on that table, and its `close` closes
 * the stores and drops the table.
 * @param {import('./helpers').Backend} backend
 * @param {string} url
 * @param {{ sess: string, expired: string } | undefined} layout
 */
async function openTable(backend, url, layout) {
  const tableName = uniqueTable('legacy');
  const raw = await backend.raw(url);
  if (layout) {
    for (const statement of createTableSql(backend, tableName, layout)) await raw.query(statement);
  }
  const stores = [];
  return {
    raw,
    tableName,
    async open(options = {}) {
      const createTable = layout === undefined;
      const store = new KnexSessionStore({ knex: url, tableName, cleanupInterval: 0, createTable, ...options });
      stores.push(store);
      await store.ready;
      return store;
    },
    async close() {
      for (const store of stores) await store.close();
      await raw.query(`DROP TABLE IF EXISTS ${quote(backend, tableName)}`);
      await raw.close();
    },
  };
}

/** Returns the sids left in the table, sorted. */
async function rawSids(backend, raw, tableName) {
  const rows = await raw.query(`SELECT sid FROM ${quote(backend, tableName)} ORDER BY sid`);
  return rows.map((row) => row.sid);
}

/** Asserts that `low <= actual <= high`, naming `what` in the message. */
function assertBetween(actual, low, high, what) {
  assert.ok(actual >= low && actual <= high, `${what} is ${actual}, expected ${low} to ${high}`);
}

/** Asserts that `actual` is within `tolerance` of `expected`, naming `what` in the message. */
function assertAbout(actual, expected, tolerance, what) {
  assert.ok(Math.abs(actual - expected) <= tolerance, `${what} is ${actual}, expected ${expected} ± ${tolerance}`);
}

for (const backend of backends) {
  describe(`${backend.name} legacy column types`, { skip: backend.skip }, () => {
    for (const layout of LAYOUTS[backend.name]) {
      describe(layout.title, () => {
        it('stores, touches and destroys sessions', async () => {
          const table = await openTable(backend, backend.url(), layout);
          try {
            const store = await table.open();
            const first = sampleSession(MINUTE, { n: 1 });
            const second = { cookie: { maxAge: MINUTE }, n: 2 };
            await store.set('first', first);
            await store.set('second', second);
            assert.deepEqual(await store.get('first'), stored(first));
            assert.deepEqual(byN(await store.all()), [stored(first), stored(second)]);
            assert.equal(await store.length(), 2);

            const replaced = { cookie: { maxAge: MINUTE }, n: 2, replaced: true };
            await store.set('second', replaced);
            assert.deepEqual(await store.get('second'), stored(replaced));
            assert.equal(await rawCount(backend, table.raw, table.tableName, 'second'), 1);

            await store.touch('first', touchedSession(HOUR));
            const seconds = await expiresIn(backend, table.raw, table.tableName, 'first');
            assertAbout(seconds, 3599, 2, 'seconds until first expires after touch');
            assert.deepEqual(await store.get('first'), stored(first));

            assert.equal(await store.destroy('first'), 1);
            assert.equal(await store.get('first'), null);
            assert.equal(await rawCount(backend, table.raw, table.tableName, 'first'), 0);
            assert.equal(await store.length(), 1);
          } finally {
            await table.close();
          }
        });

        it('hides sessions after maxAge', async () => {
          const table = await openTable(backend, backend.url(), layout);
          try {
            const store = await table.open();
            const live = { cookie: { maxAge: HOUR }, n: 2 };
            await store.set('short', { cookie: { maxAge: 1500 }, n: 1 });
            await store.set('live', live);
            assert.notEqual(await store.get('short'), null, 'a session is visible before its maxAge');

            await sleep(2100);
            assert.equal(await store.get('short'), null);
            assert.deepEqual(await store.get('live'), stored(live));
            assert.equal(await store.length(), 1);
            assert.deepEqual(await store.all(), [stored(live)]);
            assert.equal(await rawCount(backend, table.raw, table.tableName), 2);

            await store.touch('short', touchedSession(HOUR));
            assert.equal(await store.get('short'), null, 'touch does not bring back an expired session');
          } finally {
            await table.close();
          }
        });
      });
    }
  });
}

/** Formats an instant as `2030-01-02 03:04:05`, the text form without T, Z or fraction. */
function spaceForm(ms) {
  return new Date(ms).toISOString().slice(0, 19).replace('T', ' ');
}

/**
 * Returns SQLite rows in the text forms older stores wrote, some live and some expired. The rows
 * ten minutes from now share today's date with the current time, where a text comparison of a
 * space form with an ISO form gives the wrong result.
 */
function legacySqliteRows(now) {
  return [
    { sid: 'iso-soon', expired: new Date(now + 10 * MINUTE).toISOString(), live: true },
    { sid: 'iso-recent', expired: new Date(now - 10 * MINUTE).toISOString(), live: false },
    { sid: 'iso-2030', expired: '2030-01-02T03:04:05.678Z', live: true },
    { sid: 'iso-2020', expired: '2020-01-02T03:04:05.678Z', live: false },
    { sid: 'space-soon', expired: spaceForm(now + 10 * MINUTE), live: true },
    { sid: 'space-recent', expired: spaceForm(now - 10 * MINUTE), live: false },
    { sid: 'space-2030', expired: '2030-01-02 03:04:05', live: true },
    { sid: 'space-2020', expired: '2020-01-02 03:04:05', live: false },
    { sid: 'fraction-soon', expired: `${spaceForm(now + 10 * MINUTE)}.250`, live: true },
    { sid: 'fraction-recent', expired: `${spaceForm(now - 10 * MINUTE)}.250`, live: false },
  ];
}

async function insertSqliteRows(table, rows) {
  for (const row of rows) {
    await table.raw.query(`INSERT INTO "${table.tableName}" (sid, sess, expired) VALUES (?, ?, ?)`, [
      row.sid,
      JSON.stringify({ cookie: {}, sid: row.sid }),
      row.expired,
    ]);
  }
}

const LEGACY_SQLITE_LAYOUT = { sess: 'json', expired: 'datetime' };

describe('sqlite legacy expiry text', { skip: sqlite.skip }, () => {
  it('reads rows by their instant', async () => {
    const table = await openTable(sqlite, sqlite.url(), LEGACY_SQLITE_LAYOUT);
    try {
      const rows = legacySqliteRows(Date.now());
      await insertSqliteRows(table, rows);
      const store = await table.open();
      const liveSids = rows.filter((row) => row.live).map((row) => row.sid);

      for (const row of rows) {
        const session = await store.get(row.sid);
        assert.equal(session !== null, row.live, `${row.sid} (${row.expired}) is ${row.live ? 'live' : 'expired'}`);
      }
      assert.equal(await store.length(), liveSids.length);
      const allSids = (await store.all()).map((session) => session.sid).sort();
      assert.deepEqual(allSids, [...liveSids].sort());
    } finally {
      await table.close();
    }
  });

  it('touches and destroys rows by instant', async () => {
    const table = await openTable(sqlite, sqlite.url(), LEGACY_SQLITE_LAYOUT);
    try {
      await insertSqliteRows(table, legacySqliteRows(Date.now()));
      const store = await table.open();

      await store.touch('space-soon', touchedSession(HOUR));
      const seconds = await expiresIn(sqlite, table.raw, table.tableName, 'space-soon');
      assertAbout(seconds, 3599, 2, 'seconds until space-soon expires after touch');

      await store.touch('space-recent', touchedSession(HOUR));
      assert.equal(await store.get('space-recent'), null, 'touch does not bring back an expired row');
      const pastSeconds = await expiresIn(sqlite, table.raw, table.tableName, 'space-recent');
      assert.ok(pastSeconds < 0, `space-recent expiry moved to ${pastSeconds} s from now`);

      assert.equal(await store.destroy('space-2030'), 1);
      assert.equal(await rawCount(sqlite, table.raw, table.tableName, 'space-2030'), 0);
    } finally {
      await table.close();
    }
  });

  it('cleans up only past rows', async () => {
    const table = await openTable(sqlite, sqlite.url(), LEGACY_SQLITE_LAYOUT);
    try {
      const rows = legacySqliteRows(Date.now());
      await insertSqliteRows(table, rows);
      await table.open({ cleanupInterval: 200 });
      await sleep(1000);

      const liveSids = rows.filter((row) => row.live).map((row) => row.sid);
      assert.deepEqual(await rawSids(sqlite, table.raw, table.tableName), [...liveSids].sort());
    } finally {
      await table.close();
    }
  });
});

/**
 * Checks, on a store opened on `table`, that a session with `longMaxAge` is found right after set
 * and a 2 s one is gone after 3 s. The `afterSet` callback runs more checks right after the first set.
 */
async function checkOwnExpiry(table, name, longMaxAge, afterSet = async () => {}) {
  const store = await table.open();
  await store.set(`${name}1`, { cookie: { maxAge: longMaxAge } });
  assert.notEqual(await store.get(`${name}1`), null, `${name}1 is found right after set`);
  await afterSet();

  await store.set(`${name}2`, { cookie: { maxAge: 2000 } });
  await sleep(3000);
  assert.equal(await store.get(`${name}2`), null, `${name}2 is gone 3 s after a 2 s maxAge`);
}

/**
 * Checks that the sessions `writer` stores expire for `reader` at the right instant. One of the two
 * is the old store and the other ours, both on `table`.
 */
async function checkExpiryAcross(backend, table, writer, reader) {
  // The old store derives the expiry from maxAge only and compares at whole seconds on MySQL,
  // so the short session carries a maxAge and the wait is over a second past it.
  await writer.set('short', sampleSession(1500));
  await writer.set('live', sampleSession(HOUR));
  const seconds = await expiresIn(backend, table.raw, table.tableName, 'live');
  assertAbout(seconds, 3599, 2, 'seconds until live expires, read in the database time zone');
  assert.notEqual(await reader.get('short'), null, 'short is visible before it expires');

  await sleep(2600);
  assert.equal(await reader.get('short'), null, 'short is gone after it expires');
  assert.notEqual(await reader.get('live'), null, 'live is still visible');
}

/** Opens our store and the old one on `table`, runs `check` with both, and closes the old one. */
async function withBothStores(table, knexConfig, check) {
  const knex = knexFactory(knexConfig);
  try {
    const ours = await table.open();
    const old = new ConnectSessionKnexStore({ knex, tableName: table.tableName, cleanupInterval: 0 });
    await old.ready;
    await check({ ours, old });
  } finally {
    await knex.destroy();
  }
}

describe('postgres database in America/New_York', { skip: postgres.skip }, () => {
  const database = `csk_tz_${process.pid}`;
  let admin;
  let url;

  before(async () => {
    admin = await postgres.raw(process.env.PG_URL);
    await admin.query(`DROP DATABASE IF EXISTS "${database}"`);
    await admin.query(`CREATE DATABASE "${database}"`);
    await admin.query(`ALTER DATABASE "${database}" SET timezone TO 'America/New_York'`);
    const parsed = new URL(process.env.PG_URL);
    parsed.pathname = `/${database}`;
    url = parsed.toString();

    const check = await postgres.raw(url);
    const [{ zone }] = await check.query("SELECT current_setting('TimeZone') AS zone");
    await check.close();
    if (zone !== 'America/New_York') throw new Error(`a new connection to ${database} has time zone ${zone}`);
  });

  after(async () => {
    if (!admin) return;
    await admin.query(`DROP DATABASE IF EXISTS "${database}" WITH (FORCE)`);
    await admin.close();
  });

  const kinds = [
    { title: 'timestamp without time zone table', layout: { sess: 'json', expired: 'timestamp(6)' } },
    { title: 'timestamptz table the store creates', layout: undefined },
  ];

  for (const kind of kinds) {
    describe(kind.title, () => {
      // Rows as psql or the old store's pool wrote them, with the database's own time zone.
      const insertLegacy = async (table) => {
        const sql = `INSERT INTO "${table.tableName}" (sid, sess, expired) VALUES (?, '{"cookie":{}}', now() + ?::interval)`;
        await table.raw.query(sql, ['p-legacy', '30 minutes']);
        await table.raw.query(sql, ['p-legacy-old', '-5 minutes']);
      };

      it('expires its own sessions', async () => {
        const table = await openTable(postgres, url, kind.layout);
        try {
          await checkOwnExpiry(table, 'p', 1800000);
        } finally {
          await table.close();
        }
      });

      it('reads legacy rows by instant', async () => {
        const table = await openTable(postgres, url, kind.layout);
        try {
          const store = await table.open();
          await insertLegacy(table);

          assert.notEqual(await store.get('p-legacy'), null, 'p-legacy expires in 30 minutes');
          assert.equal(await store.get('p-legacy-old'), null, 'p-legacy-old expired 5 minutes ago');
          assert.equal(await store.length(), 1);
          assert.equal((await store.all()).length, 1);
        } finally {
          await table.close();
        }
      });

      it('cleans up only expired rows', async () => {
        const table = await openTable(postgres, url, kind.layout);
        try {
          const store = await table.open();
          await store.set('p1', { cookie: { maxAge: 1800000 } });
          await insertLegacy(table);
          await table.open({ cleanupInterval: 200 });
          await sleep(1000);

          assert.equal(await rawCount(postgres, table.raw, table.tableName, 'p-legacy'), 1);
          assert.equal(await rawCount(postgres, table.raw, table.tableName, 'p1'), 1);
          assert.equal(await rawCount(postgres, table.raw, table.tableName, 'p-legacy-old'), 0);
        } finally {
          await table.close();
        }
      });

      it('reads expiry the old store wrote', async () => {
        const table = await openTable(postgres, url, kind.layout);
        try {
          await withBothStores(table, { client: 'pg', connection: url }, ({ ours, old }) =>
            checkExpiryAcross(postgres, table, old, ours),
          );
        } finally {
          await table.close();
        }
      });

      it('writes expiry the old store reads', async () => {
        const table = await openTable(postgres, url, kind.layout);
        try {
          await withBothStores(table, { client: 'pg', connection: url }, ({ ours, old }) =>
            checkExpiryAcross(postgres, table, ours, old),
          );
        } finally {
          await table.close();
        }
      });
    });
  }
});

describe('mysql server time_zone +08:00', { skip: mysql.skip }, () => {
  let admin;
  let savedZone;

  before(async () => {
    admin = await mysql.raw(process.env.MYSQL_URL);
    [{ zone: savedZone }] = await admin.query('SELECT @@GLOBAL.time_zone AS zone');
    await admin.query("SET GLOBAL time_zone = '+08:00'");

    const check = await mysql.raw(process.env.MYSQL_URL);
    const [{ zone }] = await check.query('SELECT @@SESSION.time_zone AS zone');
    await check.close();
    if (zone !== '+08:00') throw new Error(`a new connection has time_zone ${zone}`);
  });

  after(async () => {
    if (!admin) return;
    if (savedZone !== undefined) await admin.query('SET GLOBAL time_zone = ?', [savedZone]);
    await admin.close();
  });

  /** Seconds from now to the instant a TIMESTAMP column holds, independent of the session zone. */
  const timestampExpiresIn = async (table, sid) => {
    const sql = `SELECT UNIX_TIMESTAMP(expired) - UNIX_TIMESTAMP(NOW(3)) AS s FROM \`${table.tableName}\` WHERE sid = ?`;
    const [row] = await table.raw.query(sql, [sid]);
    return Number(row.s);
  };

  // Rows as the old store wrote them: UTC wall time in a DATETIME column.
  const insertLegacy = async (table) => {
    const into = `INSERT INTO \`${table.tableName}\` (sid, sess, expired) VALUES`;
    await table.raw.query(`${into} ('m-legacy', '{"cookie":{}}', UTC_TIMESTAMP() + INTERVAL 30 MINUTE)`);
    await table.raw.query(`${into} ('m-legacy-old', '{"cookie":{}}', UTC_TIMESTAMP() - INTERVAL 1 MINUTE)`);
  };

  it('keeps UTC in a created table', async () => {
    const table = await openTable(mysql, process.env.MYSQL_URL, undefined);
    try {
      await checkOwnExpiry(table, 'm', HOUR, async () => {
        const seconds = await expiresIn(mysql, table.raw, table.tableName, 'm1');
        assertBetween(seconds, 3590, 3600, 'seconds of UTC wall time until m1 expires');
      });
    } finally {
      await table.close();
    }
  });

  it('expires by instant in TIMESTAMP tables', async () => {
    const table = await openTable(mysql, process.env.MYSQL_URL, { sess: 'JSON', expired: 'TIMESTAMP' });
    try {
      await checkOwnExpiry(table, 'm', HOUR, async () => {
        const seconds = await timestampExpiresIn(table, 'm1');
        assertBetween(seconds, 3590, 3600, 'seconds until m1 expires');
      });

      await table.open({ cleanupInterval: 200 });
      await sleep(1000);
      assert.equal(await rawCount(mysql, table.raw, table.tableName, 'm1'), 1);
      assert.equal(await rawCount(mysql, table.raw, table.tableName, 'm2'), 0);
    } finally {
      await table.close();
    }
  });

  const kinds = [
    { title: 'DATETIME(3) table', layout: undefined },
    { title: 'DATETIME table', layout: { sess: 'JSON', expired: 'DATETIME' } },
  ];

  for (const kind of kinds) {
    it(`reads legacy rows in ${kind.title}`, async () => {
      const table = await openTable(mysql, process.env.MYSQL_URL, kind.layout);
      try {
        const store = await table.open();
        await insertLegacy(table);

        assert.notEqual(await store.get('m-legacy'), null, 'm-legacy expires in 30 minutes');
        assert.equal(await store.get('m-legacy-old'), null, 'm-legacy-old expired a minute ago');
        assert.equal(await store.length(), 1);
      } finally {
        await table.close();
      }
    });

    it(`cleans expired rows from ${kind.title}`, async () => {
      const table = await openTable(mysql, process.env.MYSQL_URL, kind.layout);
      try {
        const store = await table.open();
        await store.set('m1', { cookie: { maxAge: HOUR } });
        await insertLegacy(table);
        await table.open({ cleanupInterval: 200 });
        await sleep(1000);

        assert.equal(await rawCount(mysql, table.raw, table.tableName, 'm-legacy'), 1);
        assert.equal(await rawCount(mysql, table.raw, table.tableName, 'm1'), 1);
        assert.equal(await rawCount(mysql, table.raw, table.tableName, 'm-legacy-old'), 0);
      } finally {
        await table.close();
      }
    });
  }

  it('reads expiry the old store wrote', async () => {
    const table = await openTable(mysql, process.env.MYSQL_URL, undefined);
    try {
      const config = { client: 'mysql2', connection: process.env.MYSQL_URL };
      await withBothStores(table, config, ({ ours, old }) => checkExpiryAcross(mysql, table, old, ours));
    } finally {
      await table.close();
    }
  });

  it('writes expiry the old store reads', async () => {
    const table = await openTable(mysql, process.env.MYSQL_URL, undefined);
    try {
      const config = { client: 'mysql2', connection: process.env.MYSQL_URL };
      await withBothStores(table, config, ({ ours, old }) => checkExpiryAcross(mysql, table, ours, old));
    } finally {
      await table.close();
    }
  });
});
