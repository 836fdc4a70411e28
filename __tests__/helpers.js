'use strict';

// Shared test helpers: one entry per backend, raw SQL access outside the store, fixtures.
//
// SQLite always runs, on a temporary file. PostgreSQL and MySQL/MariaDB run when PG_URL and
// MYSQL_URL are set; without them their suites are reported as skipped, except under CI=true,
// where a missing URL fails the run.
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const { KnexSessionStore } = require('..');

const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'csk-test-'));
let counter = 0;

/** Returns a table name unique to this process, so test files can share a database. */
function uniqueTable(prefix = 't') {
  counter += 1;
  return `${prefix}_${process.pid}_${counter}`;
}

/** Returns a fresh SQLite file path under a temporary folder. */
function tmpFile(name = 'sessions.sqlite') {
  counter += 1;
  const dir = path.join(tmpRoot, String(counter));
  fs.mkdirSync(dir, { recursive: true });
  return path.join(dir, name);
}

/**
 * @typedef {object} Backend
 * @property {'sqlite' | 'postgres' | 'mysql'} name
 * @property {string | undefined} skip   reason the backend is skipped, if it is
 * @property {() => string} url         a URL the store accepts (a new SQLite file each call)
 * @property {(url: string) => Promise<Raw>} raw
 */

/**
 * @typedef {object} Raw
 * @property {(sql: string, params?: unknown[]) => Promise<any[]>} query  rows as objects
 * @property {() => Promise<void>} close
 */

function skipReason(variable) {
  if (process.env[variable]) return undefined;
  if (process.env.CI === 'true') {
    throw new Error(`${variable} is not set, and CI=true requires every backend`);
  }
  return `${variable} is not set`;
}

/** @type {Backend[]} */
const backends = [
  {
    name: 'sqlite',
    skip: undefined,
    url: () => `sqlite://${tmpFile()}`,
    raw: async (url) => {
      const Database = require('better-sqlite3');
      const db = new Database(url.replace(/^sqlite:\/\//, ''));
      db.pragma('busy_timeout = 5000');
      return {
        query: async (sql, params = []) => {
          const statement = db.prepare(sql);
          return statement.reader ? statement.all(...params) : (statement.run(...params), []);
        },
        close: async () => db.close(),
      };
    },
  },
  {
    name: 'postgres',
    skip: skipReason('PG_URL'),
    url: () => process.env.PG_URL,
    raw: async (url) => {
      const { Client } = require('pg');
      const client = new Client({ connectionString: url });
      await client.connect();
      return {
        query: async (sql, params = []) => {
          let index = 0;
          const text = sql.replace(/\?/g, () => `$${++index}`);
          return (await client.query(text, params)).rows;
        },
        close: () => client.end(),
      };
    },
  },
  {
    name: 'mysql',
    skip: skipReason('MYSQL_URL'),
    url: () => process.env.MYSQL_URL,
    raw: async (url) => {
      const mysql = require('mysql2/promise');
      const conn = await mysql.createConnection({ uri: url.replace(/^mariadb:/, 'mysql:'), timezone: 'Z' });
      return {
        query: async (sql, params = []) => {
          const [rows] = await conn.query(sql, params);
          return Array.isArray(rows) ? rows : [];
        },
        close: () => conn.end(),
      };
    },
  },
];

/**
 * Opens a store and a raw connection on a fresh table of `backend`, and returns both with a
 * `cleanup` that closes them.
 * @param {Backend} backend
 * @param {Record<string, unknown>} [options]
 */
async function openStore(backend, options = {}) {
  const url = backend.url();
  const tableName = /** @type {string} */ (options.tableName || uniqueTable());
  const store = new KnexSessionStore({ knex: url, tableName, cleanupInterval: 0, ...options });
  const raw = await backend.raw(url);
  return {
    store,
    raw,
    url,
    tableName,
    cleanup: async () => {
      // The setup runs in the background from the constructor; dropping the table before it
      // ends would let it create the table again afterwards.
      await store.ready.catch(() => {});
      await store.close();
      if (options.createTable !== false) {
        await raw.query(`DROP TABLE IF EXISTS ${quote(backend, tableName)}`).catch(() => {});
      }
      await raw.close();
    },
  };
}

/** Quotes an identifier for raw SQL on `backend`. */
function quote(backend, name) {
  return backend.name === 'mysql' ? `\`${name}\`` : `"${name}"`;
}

/** Returns seconds from now to the stored expiry of `sid`, read with raw SQL. */
async function expiresIn(backend, raw, tableName, sid, sidColumn = 'sid') {
  const table = quote(backend, tableName);
  const column = quote(backend, sidColumn);
  const sql = {
    sqlite: `SELECT (unixepoch(expired, 'subsec') - unixepoch('now', 'subsec')) AS s FROM ${table} WHERE ${column} = ?`,
    postgres: `SELECT extract(epoch FROM expired - now())::float8 AS s FROM ${table} WHERE ${column} = ?`,
    mysql: `SELECT TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(3), expired) / 1e6 AS s FROM ${table} WHERE ${column} = ?`,
  }[backend.name];
  const rows = await raw.query(sql, [sid]);
  return rows.length === 0 ? undefined : Number(rows[0].s);
}

/** Counts raw rows, optionally of one sid. */
async function rawCount(backend, raw, tableName, sid, sidColumn = 'sid') {
  const table = quote(backend, tableName);
  const where = sid === undefined ? '' : ` WHERE ${quote(backend, sidColumn)} = ?`;
  const rows = await raw.query(`SELECT COUNT(*) AS n FROM ${table}${where}`, sid === undefined ? [] : [sid]);
  return Number(rows[0].n);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

module.exports = { backends, openStore, quote, expiresIn, rawCount, sleep, tmpFile, uniqueTable };
