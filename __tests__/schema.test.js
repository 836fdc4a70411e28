'use strict';

// The layout of the table the store creates on each backend, read from the database catalog, and
// the form in which the expiry is written, so that tables stay shareable with connect-session-knex.
const assert = require('node:assert/strict');
const { describe, it } = require('node:test');

const { KnexSessionStore } = require('..');
const { backends, openStore, quote, rawCount, uniqueTable } = require('./helpers');

const ISO_MILLIS = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;
const FIXED_EXPIRY = '2031-01-02T03:04:05.678Z';

/** Returns the columns of `table` as a map from name to `{ type, notNull }`, types lowercased. */
async function columnsOf(backend, raw, table) {
  const sql = {
    sqlite: `SELECT name, type, "notnull" AS not_null FROM pragma_table_info(?)`,
    postgres: `SELECT attname AS name, format_type(atttypid, atttypmod) AS type, attnotnull AS not_null
               FROM pg_attribute WHERE attrelid = ?::regclass AND attnum > 0 AND NOT attisdropped`,
    mysql: `SELECT COLUMN_NAME AS name, COLUMN_TYPE AS type, IS_NULLABLE = 'NO' AS not_null
            FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?`,
  }[backend.name];
  const name = backend.name === 'postgres' ? quote(backend, table) : table;
  const columns = {};
  for (const row of await raw.query(sql, [name])) {
    columns[row.name] = { type: String(row.type).toLowerCase(), notNull: Boolean(Number(row.not_null)) };
  }
  return columns;
}

/** Returns the columns of the primary key of `table`. */
async function primaryKeyOf(backend, raw, table) {
  const sql = {
    sqlite: `SELECT name FROM pragma_table_info(?) WHERE pk > 0 ORDER BY pk`,
    postgres: `SELECT a.attname AS name FROM pg_index i
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
               WHERE i.indrelid = ?::regclass AND i.indisprimary`,
    mysql: `SELECT COLUMN_NAME AS name FROM information_schema.STATISTICS
            WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX`,
  }[backend.name];
  const name = backend.name === 'postgres' ? quote(backend, table) : table;
  return (await raw.query(sql, [name])).map((row) => row.name);
}

/** Returns the secondary indexes of `table` as a map from index name to its columns. */
async function indexesOf(backend, raw, table) {
  const sql = {
    sqlite: `SELECT il.name AS name, ii.name AS col FROM pragma_index_list(?) AS il, pragma_index_info(il.name) AS ii
             WHERE il.origin = 'c' ORDER BY ii.seqno`,
    postgres: `SELECT c.relname AS name, a.attname AS col FROM pg_index i
               JOIN pg_class c ON c.oid = i.indexrelid
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
               WHERE i.indrelid = ?::regclass AND NOT i.indisprimary`,
    mysql: `SELECT INDEX_NAME AS name, COLUMN_NAME AS col FROM information_schema.STATISTICS
            WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND INDEX_NAME <> 'PRIMARY' ORDER BY SEQ_IN_INDEX`,
  }[backend.name];
  const name = backend.name === 'postgres' ? quote(backend, table) : table;
  const indexes = {};
  for (const row of await raw.query(sql, [name])) {
    indexes[row.name] = [...(indexes[row.name] || []), row.col];
  }
  return indexes;
}

/** Tells whether the MySQL-protocol server behind `raw` is MariaDB. */
async function isMariaDb(raw) {
  const [row] = await raw.query('SELECT VERSION() AS version');
  return /mariadb/i.test(row.version);
}

/** Returns the column type the store is expected to create for each column on `backend`. */
async function expectedTypes(backend, raw) {
  if (backend.name === 'sqlite') return { sid: 'varchar(255)', sess: 'json', expired: 'datetime' };
  if (backend.name === 'postgres') {
    return { sid: 'character varying(255)', sess: 'json', expired: 'timestamp with time zone' };
  }
  // MariaDB's JSON is an alias of LONGTEXT with a json_valid check, while MySQL 8 has a real JSON type.
  const sess = (await isMariaDb(raw)) ? 'longtext' : 'json';
  return { sid: 'varchar(255)', sess, expired: 'datetime(3)' };
}

for (const backend of backends) {
  describe(backend.name, { skip: backend.skip }, () => {
    describe('created table layout', () => {
      for (const column of ['sid', 'sess', 'expired']) {
        it(`${column} column has legacy type`, async () => {
          const { store, raw, tableName, cleanup } = await openStore(backend);
          try {
            await store.ready;
            const columns = await columnsOf(backend, raw, tableName);
            const expected = await expectedTypes(backend, raw);
            assert.notEqual(columns[column], undefined, `no ${column} column`);
            assert.equal(columns[column].type, expected[column]);
            assert.equal(columns[column].notNull, true);
          } finally {
            await cleanup();
          }
        });
      }

      it('table has exactly three columns', async () => {
        const { store, raw, tableName, cleanup } = await openStore(backend);
        try {
          await store.ready;
          assert.deepEqual(Object.keys(await columnsOf(backend, raw, tableName)).sort(), ['expired', 'sess', 'sid']);
        } finally {
          await cleanup();
        }
      });

      it('sid is the primary key', async () => {
        const { store, raw, tableName, cleanup } = await openStore(backend);
        try {
          await store.ready;
          assert.deepEqual(await primaryKeyOf(backend, raw, tableName), ['sid']);
        } finally {
          await cleanup();
        }
      });

      it('expired has its own index', async () => {
        const { store, raw, tableName, cleanup } = await openStore(backend);
        try {
          await store.ready;
          const indexes = Object.values(await indexesOf(backend, raw, tableName));
          assert.deepEqual(
            indexes.filter((columns) => columns.length === 1 && columns[0] === 'expired'),
            [['expired']],
          );
        } finally {
          await cleanup();
        }
      });

      it('sidFieldName names the key column', async () => {
        const { store, raw, tableName, cleanup } = await openStore(backend, { sidFieldName: 'session_id' });
        try {
          await store.ready;
          const columns = await columnsOf(backend, raw, tableName);
          const expected = await expectedTypes(backend, raw);
          assert.equal(columns.sid, undefined);
          assert.equal(columns.session_id.type, expected.sid);
          assert.deepEqual(await primaryKeyOf(backend, raw, tableName), ['session_id']);
        } finally {
          await cleanup();
        }
      });

      if (backend.name === 'mysql') {
        it('MariaDB sess has no json_valid check', async (t) => {
          const { store, raw, tableName, cleanup } = await openStore(backend);
          try {
            if (!(await isMariaDb(raw))) return t.skip('MySQL has a native JSON type');
            await store.ready;
            const checks = await raw.query(
              `SELECT CHECK_CLAUSE AS clause FROM information_schema.CHECK_CONSTRAINTS
               WHERE CONSTRAINT_SCHEMA = DATABASE() AND TABLE_NAME = ?`,
              [tableName],
            );
            // MariaDB's json_valid() rejects what JSON.stringify may write (a lone surrogate, nesting
            // past 32 levels), so the store makes sess a plain LONGTEXT there.
            assert.equal(checks.filter((row) => /json_valid\(`sess`\)/i.test(row.clause)).length, 0);
          } finally {
            await cleanup();
          }
        });

        it('table charset is utf8mb4', async () => {
          const { store, raw, tableName, cleanup } = await openStore(backend);
          try {
            await store.ready;
            const [table] = await raw.query(
              `SELECT TABLE_COLLATION AS collation FROM information_schema.TABLES
               WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?`,
              [tableName],
            );
            assert.match(table.collation, /^utf8mb4_/);
            const [sid] = await raw.query(
              `SELECT CHARACTER_SET_NAME AS charset FROM information_schema.COLUMNS
               WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = 'sid'`,
              [tableName],
            );
            assert.equal(sid.charset, 'utf8mb4');
          } finally {
            await cleanup();
          }
        });

        it('raw sid comparison is case-sensitive', async () => {
          const { store, raw, tableName, cleanup } = await openStore(backend);
          try {
            await store.set('abc', { cookie: { maxAge: 60000 } });
            const table = quote(backend, tableName);
            const [upper] = await raw.query(`SELECT COUNT(*) AS n FROM ${table} WHERE sid = 'ABC'`);
            assert.equal(Number(upper.n), 0);
            const [padded] = await raw.query(`SELECT COUNT(*) AS n FROM ${table} WHERE sid = 'abc '`);
            assert.equal(Number(padded.n), 0);
          } finally {
            await cleanup();
          }
        });

        it('four-byte characters fit in sess', async () => {
          const { store, cleanup } = await openStore(backend);
          try {
            await store.set('emoji', { cookie: { maxAge: 60000 }, name: 'caf\u00e9 \u{1F600}' });
            assert.equal((await store.get('emoji')).name, 'caf\u00e9 \u{1F600}');
          } finally {
            await cleanup();
          }
        });
      }
    });

    describe('stored expiry values', () => {
      it('expiry keeps its milliseconds', async () => {
        const { store, raw, tableName, cleanup } = await openStore(backend);
        try {
          await store.set('fixed', { cookie: { expires: new Date(FIXED_EXPIRY) } });
          const table = quote(backend, tableName);
          const [row] = await raw.query(`SELECT expired FROM ${table} WHERE sid = ?`, ['fixed']);
          const stored = row.expired instanceof Date ? row.expired.toISOString() : row.expired;
          assert.equal(stored, FIXED_EXPIRY);
        } finally {
          await cleanup();
        }
      });

      if (backend.name === 'sqlite') {
        it('set writes ISO 8601 text', async () => {
          const { store, raw, tableName, cleanup } = await openStore(backend);
          try {
            await store.set('live', { cookie: { maxAge: 60000 } });
            const [row] = await raw.query(`SELECT expired, typeof(expired) AS kind FROM "${tableName}" WHERE sid = ?`, [
              'live',
            ]);
            assert.equal(row.kind, 'text');
            assert.match(row.expired, ISO_MILLIS);
          } finally {
            await cleanup();
          }
        });

        it('touch writes ISO 8601 text', async () => {
          const { store, raw, tableName, cleanup } = await openStore(backend);
          try {
            await store.set('live', { cookie: { maxAge: 60000 } });
            const expires = new Date(Math.floor(Date.now() / 1000) * 1000 + 3600123);
            await store.touch('live', { cookie: { expires } });
            const [row] = await raw.query(`SELECT expired FROM "${tableName}" WHERE sid = ?`, ['live']);
            assert.match(row.expired, ISO_MILLIS);
            assert.equal(row.expired, expires.toISOString());
          } finally {
            await cleanup();
          }
        });
      }

      if (backend.name === 'mysql') {
        it('DATETIME holds UTC wall time', async () => {
          const { store, raw, tableName, cleanup } = await openStore(backend);
          try {
            await store.set('fixed', { cookie: { expires: new Date(FIXED_EXPIRY) } });
            const [row] = await raw.query(
              `SELECT DATE_FORMAT(expired, '%Y-%m-%d %H:%i:%s.%f') AS wall FROM ${quote(backend, tableName)} WHERE sid = ?`,
              ['fixed'],
            );
            assert.equal(row.wall, '2031-01-02 03:04:05.678000');
          } finally {
            await cleanup();
          }
        });
      }

      if (backend.name === 'postgres') {
        it('timestamptz holds the instant', async () => {
          const { store, raw, tableName, cleanup } = await openStore(backend);
          try {
            await store.set('fixed', { cookie: { expires: new Date(FIXED_EXPIRY) } });
            const [row] = await raw.query(
              `SELECT to_char(expired AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS') AS utc FROM "${tableName}" WHERE sid = ?`,
              ['fixed'],
            );
            assert.equal(row.utc, '2031-01-02T03:04:05.678');
          } finally {
            await cleanup();
          }
        });
      }
    });

    describe('sid matching', () => {
      it('sids differing in case are distinct', async () => {
        const { store, raw, tableName, cleanup } = await openStore(backend);
        try {
          await store.set('abc', { cookie: { maxAge: 60000 }, n: 1 });
          assert.equal(await store.get('ABC'), null);
          await store.set('Abc', { cookie: { maxAge: 60000 }, n: 2 });
          assert.equal(await rawCount(backend, raw, tableName), 2);
          assert.equal((await store.get('abc')).n, 1);
          assert.equal((await store.get('Abc')).n, 2);
        } finally {
          await cleanup();
        }
      });

      it('trailing space makes another sid', async () => {
        const { store, raw, tableName, cleanup } = await openStore(backend);
        try {
          await store.set('abc', { cookie: { maxAge: 60000 }, n: 1 });
          assert.equal(await store.get('abc '), null);
          await store.set('abc ', { cookie: { maxAge: 60000 }, n: 2 });
          assert.equal(await rawCount(backend, raw, tableName), 2);
          assert.equal((await store.get('abc')).n, 1);
        } finally {
          await cleanup();
        }
      });

      it('destroy spares other-case sid', async () => {
        const { store, raw, tableName, cleanup } = await openStore(backend);
        try {
          await store.set('abc', { cookie: { maxAge: 60000 } });
          assert.equal(await store.destroy('ABC'), 0);
          assert.equal(await rawCount(backend, raw, tableName, 'abc'), 1);
        } finally {
          await cleanup();
        }
      });
    });

    describe('schema-qualified tableName', () => {
      if (backend.name === 'postgres') {
        it('schema.table creates table there', async () => {
          const url = backend.url();
          const schema = uniqueTable('schema');
          const raw = await backend.raw(url);
          await raw.query(`CREATE SCHEMA "${schema}"`);
          const store = new KnexSessionStore({ knex: url, tableName: `${schema}.sessions`, cleanupInterval: 0 });
          try {
            await store.set('a', { cookie: { maxAge: 60000 }, n: 1 });
            assert.deepEqual(await store.get('a'), { cookie: { maxAge: 60000 }, n: 1 });
            const tables = await raw.query(
              `SELECT table_schema AS schema FROM information_schema.tables WHERE table_name = 'sessions' AND table_schema = ?`,
              [schema],
            );
            assert.equal(tables.length, 1);
            const [row] = await raw.query(`SELECT COUNT(*) AS n FROM "${schema}"."sessions" WHERE sid = ?`, ['a']);
            assert.equal(Number(row.n), 1);
          } finally {
            await store.close();
            await raw.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
            await raw.close();
          }
        });

        it('schema.table gets the full layout', async () => {
          const url = backend.url();
          const schema = uniqueTable('schema');
          const raw = await backend.raw(url);
          await raw.query(`CREATE SCHEMA "${schema}"`);
          const store = new KnexSessionStore({ knex: url, tableName: `${schema}.sessions`, cleanupInterval: 0 });
          try {
            await store.ready;
            const [pk] = await raw.query(
              `SELECT COUNT(*) AS n FROM pg_index WHERE indrelid = ?::regclass AND indisprimary`,
              [`"${schema}"."sessions"`],
            );
            assert.equal(Number(pk.n), 1);
            const indexes = await raw.query(`SELECT indexdef FROM pg_indexes WHERE schemaname = ? AND tablename = ?`, [
              schema,
              'sessions',
            ]);
            assert.equal(indexes.filter((row) => /\(expired\)/.test(row.indexdef)).length, 1);
          } finally {
            await store.close();
            await raw.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
            await raw.close();
          }
        });

        /** Opens a store whose knex config names `schema` in searchPath, with `connection` built from the URL. */
        async function checkSearchPath(connectionOf) {
          const url = backend.url();
          const schema = uniqueTable('path');
          const tableName = uniqueTable('in_path');
          const raw = await backend.raw(url);
          await raw.query(`CREATE SCHEMA "${schema}"`);
          const knex = { client: 'pg', connection: connectionOf(url), searchPath: [schema] };
          const store = new KnexSessionStore({ knex, tableName, cleanupInterval: 0 });
          try {
            await store.set('a', { cookie: { maxAge: 60000 } });
            const tables = await raw.query(
              `SELECT table_schema AS schema FROM information_schema.tables WHERE table_name = ?`,
              [tableName],
            );
            assert.deepEqual(
              tables.map((row) => row.schema),
              [schema],
            );
          } finally {
            await store.close();
            await raw.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
            // A store that ignored searchPath created the table in the default schema.
            await raw.query(`DROP TABLE IF EXISTS "${tableName}"`);
            await raw.close();
          }
        }

        it('searchPath applies to connection fields', () =>
          checkSearchPath((url) => {
            const parsed = new URL(url);
            return {
              host: parsed.hostname,
              port: Number(parsed.port),
              user: decodeURIComponent(parsed.username),
              database: parsed.pathname.slice(1),
            };
          }));

        it('searchPath applies to connectionString', () => checkSearchPath((url) => ({ connectionString: url })));

        it('searchPath applies to URL connection', () => checkSearchPath((url) => url));
      } else {
        it('schema.table is rejected', () => {
          let error;
          try {
            new KnexSessionStore({ knex: backend.url(), tableName: 'app.sessions' });
          } catch (caught) {
            error = caught;
          }
          assert.ok(error instanceof Error, 'a dotted tableName was accepted');
          assert.equal(error.code, 'ERR_INVALID_IDENTIFIER');
          assert.match(error.message, /tableName/);
        });
      }
    });
  });
}

for (const backend of backends) {
  describe(`${backend.name} table of another layout`, { skip: backend.skip }, () => {
    it('is unusable even with createTable', async () => {
      const url = backend.url();
      const raw = await backend.raw(url);
      const tableName = uniqueTable('other');
      const table = quote(backend, tableName);
      await raw.query(`CREATE TABLE ${table} (sid varchar(255) PRIMARY KEY, data text, expires varchar(40))`);
      const store = new KnexSessionStore({ knex: url, tableName, cleanupInterval: 0 });
      try {
        await assert.rejects(store.ready, (error) => {
          assert.equal(error.code, 'ERR_TABLE_UNUSABLE');
          assert.match(error.message, /column "sess" is missing \(found sid, data, expires\)/);
          return true;
        });
      } finally {
        await store.close();
        await raw.query(`DROP TABLE IF EXISTS ${table}`);
        await raw.close();
      }
    });
  });
}
