'use strict';

// The stores under test. Each entry opens its store on a fresh table (a fresh file on SQLite, a
// key prefix of its own on Redis) and returns it with a `close` that closes the store and drops
// what it created.
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const session = require('express-session');

const PG_URL = process.env.PG_URL || 'postgres://postgres@127.0.0.1:5432/test';
const MYSQL_URL = process.env.MYSQL_URL || 'mysql://root@127.0.0.1:3306/test';
const REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379';

// The peers' pools get 10 connections, which is this store's default on PostgreSQL and MySQL
// (on SQLite it uses 4 readers and one writer). It is also the default max of knex, pg.Pool
// and mysql2's createPool, written out so that a change of default upstream shows here.
const POOL_SIZE = 10;

// SQLite peers run in WAL mode with synchronous=NORMAL, the settings this store applies to its
// own file, so the comparison is of the code and not of the journal. With
// BENCH_SQLITE_PEER_DEFAULTS=1 they keep SQLite's defaults (rollback journal, synchronous=FULL),
// where every write waits for several fsyncs.
const SQLITE_PEER_DEFAULTS = process.env.BENCH_SQLITE_PEER_DEFAULTS === '1';

const BACKENDS = {
  sqlite: 'SQLite',
  postgres: 'PostgreSQL',
  mysql: 'MariaDB',
  redis: 'Redis',
  memory: 'memory',
};

const runId = `${process.pid}_${Date.now().toString(36)}`;
let tmpDir;

/** Error that a store's `open` throws when its server cannot be reached, so the run skips the store. */
class StoreUnavailableError extends Error {}

/** Returns a new folder under the run's temporary folder, for one store's SQLite file. */
function tmpFolder(name) {
  if (!tmpDir) tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), 'csk-bench-'));
  const folder = path.join(tmpDir, name);
  fs.mkdirSync(folder, { recursive: true });
  return folder;
}

/** Deletes the run's temporary folder and the SQLite files in it. */
function removeTmp() {
  if (tmpDir) fs.rmSync(tmpDir, { recursive: true, force: true });
  tmpDir = undefined;
}

function tableFor(id) {
  return `bench_${id.replace(/-/g, '_')}_${runId}`;
}

/** Runs one statement on a connection of its own, for setup and cleanup outside the stores. */
async function runPostgres(sql) {
  const { Client } = require('pg');
  const client = new Client({ connectionString: PG_URL });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}

async function dropMysql(table) {
  const mysql = require('mysql2/promise');
  const connection = await mysql.createConnection({ uri: MYSQL_URL.replace(/^mariadb:/, 'mysql:') });
  try {
    await connection.query('DROP TABLE IF EXISTS ??', [table]);
  } finally {
    await connection.end();
  }
}

function useWal(db) {
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
}

/** knex pool hook that applies useWal to each new better-sqlite3 connection. */
function walAfterCreate(db, done) {
  useWal(db);
  done(null, db);
}

// --- connect-session-knex 6 (this repository) ---

function openOurs(backend) {
  const { KnexSessionStore } = require('..');
  const table = tableFor(`ours_${backend}`);
  const knexOf = {
    sqlite: () => `sqlite://${path.join(tmpFolder(`ours-${backend}`), 'connect-session-knex.sqlite')}`,
    postgres: () => PG_URL,
    mysql: () => MYSQL_URL,
  }[backend];
  return async () => {
    const knex = knexOf();
    const store = new KnexSessionStore({ knex, tableName: table, cleanupInterval: 0 });
    await store.ready;
    return {
      store,
      close: async () => {
        await store.close();
        if (backend === 'postgres') await runPostgres(`DROP TABLE IF EXISTS "${table}"`);
        if (backend === 'mysql') await dropMysql(table);
      },
    };
  };
}

// --- connect-session-knex 5 on knex 3 ---

function openV5(backend) {
  const knexFactory = require('knex');
  const { ConnectSessionKnexStore } = require('connect-session-knex-v5');
  const table = tableFor(`v5_${backend}`);
  const configOf = {
    sqlite: () => ({
      client: 'better-sqlite3',
      connection: { filename: path.join(tmpFolder(`v5-${backend}`), 'connect-session-knex.sqlite') },
      useNullAsDefault: true,
      pool: SQLITE_PEER_DEFAULTS ? undefined : { afterCreate: walAfterCreate },
    }),
    postgres: () => ({ client: 'pg', connection: PG_URL, pool: { min: 0, max: POOL_SIZE } }),
    mysql: () => ({ client: 'mysql2', connection: MYSQL_URL, pool: { min: 0, max: POOL_SIZE } }),
  }[backend];
  return async () => {
    const knex = knexFactory(configOf());
    const store = new ConnectSessionKnexStore({ knex, tableName: table, cleanupInterval: 0 });
    await store.ready;
    return {
      store,
      close: async () => {
        if (backend !== 'sqlite') await knex.schema.dropTableIfExists(table);
        await knex.destroy();
      },
    };
  };
}

// --- connect-pg-simple ---

function openPgSimple() {
  const PGStore = require('connect-pg-simple')(session);
  // connect-pg-simple names its expiry index IDX_session_expire whatever the table is called,
  // and PostgreSQL index names are unique per schema, so the table gets a schema of its own.
  const schema = tableFor('pg_simple');
  return async () => {
    await runPostgres(`CREATE SCHEMA "${schema}"`);
    const store = new PGStore({
      schemaName: schema,
      tableName: 'session',
      createTableIfMissing: true,
      pruneSessionInterval: false,
      conObject: { connectionString: PG_URL, max: POOL_SIZE },
    });
    return {
      store,
      close: async () => {
        await store.close();
        await runPostgres(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
      },
    };
  };
}

// --- express-mysql-session ---

function openMysqlSession() {
  const MySQLStore = require('express-mysql-session')(session);
  const table = tableFor('mysql_session');
  const url = new URL(MYSQL_URL.replace(/^mariadb:/, 'mysql:'));
  return async () => {
    const store = new MySQLStore({
      host: url.hostname,
      port: Number(url.port || 3306),
      user: decodeURIComponent(url.username),
      password: decodeURIComponent(url.password) || undefined,
      database: url.pathname.slice(1),
      connectionLimit: POOL_SIZE,
      clearExpired: false,
      createDatabaseTable: true,
      schema: { tableName: table },
    });
    await store.onReady();
    return {
      store,
      close: async () => {
        await dropMysql(table);
        await store.close();
      },
    };
  };
}

// --- better-sqlite3-session-store ---

function openBetterSqlite3SessionStore() {
  const Database = require('better-sqlite3');
  const SqliteStore = require('better-sqlite3-session-store')(session);
  return async () => {
    const db = new Database(path.join(tmpFolder('better-sqlite3-session-store'), 'sessions.sqlite'));
    if (!SQLITE_PEER_DEFAULTS) useWal(db);
    // better-sqlite3-session-store 0.1.0 always starts a setInterval for its expiry sweep (its
    // `expired.clear: false` is read as true) and never clears it, which would keep the process
    // alive, so the interval is captured here and cleared on close.
    const intervals = [];
    const realSetInterval = global.setInterval;
    global.setInterval = (...args) => {
      const handle = realSetInterval(...args);
      intervals.push(handle);
      return handle;
    };
    let store;
    try {
      store = new SqliteStore({ client: db });
    } finally {
      global.setInterval = realSetInterval;
    }
    return {
      store,
      close: async () => {
        for (const handle of intervals) clearInterval(handle);
        db.close();
      },
    };
  };
}

// --- connect-redis ---

/** Returns REDIS_URL with its password replaced by `***`, for messages. */
function redisUrlForMessages() {
  try {
    const url = new URL(REDIS_URL);
    if (url.password) url.password = '***';
    return url.href;
  } catch {
    return '(REDIS_URL, not a valid URL)';
  }
}

/**
 * Opens a node-redis client on REDIS_URL. Throws StoreUnavailableError when no connection can
 * be opened. An error reply from the server, such as a rejected password, is thrown as it is.
 */
async function connectRedis() {
  const { createClient, ErrorReply } = require('redis');
  // node-redis 6 by default reconnects without limit. With reconnection off, connect() rejects
  // at the first failed attempt, and a connection lost during the run fails the calls, so the
  // store is reported as failed.
  const client = createClient({ url: REDIS_URL, socket: { reconnectStrategy: false } });
  let connected = false;
  // node-redis emits every socket error as an 'error' event, and an unhandled one would end the
  // process. Before the connection is open, connect() rejects with the same error.
  client.on('error', (error) => {
    if (connected) process.stderr.write(`bench: Redis client error: ${error.message}\n`);
  });
  try {
    await client.connect();
  } catch (error) {
    if (client.isOpen) client.destroy();
    if (error instanceof ErrorReply) throw error;
    throw new StoreUnavailableError(
      `Redis at ${redisUrlForMessages()} is not reachable (${error.message}): start it or set REDIS_URL`,
      { cause: error },
    );
  }
  connected = true;
  return client;
}

function openConnectRedis() {
  const { RedisStore } = require('connect-redis');
  const prefix = `csk-bench-${runId}-`;
  return async () => {
    const client = await connectRedis();
    const store = new RedisStore({ client, prefix });
    return {
      store,
      close: async () => {
        try {
          // clear() deletes every key under the prefix (SCAN, then DEL), which also covers the
          // sessions left behind by a run that stopped at a failed call.
          await store.clear();
        } finally {
          if (client.isOpen) await client.close();
        }
      },
    };
  };
}

// --- express-session's MemoryStore ---

function openMemory() {
  return async () => ({ store: new session.MemoryStore(), close: async () => {} });
}

/**
 * @typedef {object} StoreEntry
 * @property {string} id        short id, as used in BENCH_STORES and in the JSON results
 * @property {string} name      column heading in the tables
 * @property {string} backend   key of BACKENDS
 * @property {boolean} ours     whether this is the store of this repository
 * @property {() => Promise<{ store: any, close: () => Promise<void> }>} open
 */

/** @returns {StoreEntry[]} every store, grouped by backend, ours first in each group */
function allStores() {
  return [
    { id: 'ours-sqlite', name: 'ours', backend: 'sqlite', ours: true, open: openOurs('sqlite') },
    { id: 'v5-sqlite', name: 'v5', backend: 'sqlite', ours: false, open: openV5('sqlite') },
    {
      id: 'better-sqlite3-session-store',
      name: 'better-sqlite3-session-store',
      backend: 'sqlite',
      ours: false,
      open: openBetterSqlite3SessionStore(),
    },
    { id: 'ours-postgres', name: 'ours', backend: 'postgres', ours: true, open: openOurs('postgres') },
    { id: 'v5-postgres', name: 'v5', backend: 'postgres', ours: false, open: openV5('postgres') },
    { id: 'connect-pg-simple', name: 'connect-pg-simple', backend: 'postgres', ours: false, open: openPgSimple() },
    { id: 'ours-mysql', name: 'ours', backend: 'mysql', ours: true, open: openOurs('mysql') },
    { id: 'v5-mysql', name: 'v5', backend: 'mysql', ours: false, open: openV5('mysql') },
    {
      id: 'express-mysql-session',
      name: 'express-mysql-session',
      backend: 'mysql',
      ours: false,
      open: openMysqlSession(),
    },
    { id: 'connect-redis', name: 'connect-redis', backend: 'redis', ours: false, open: openConnectRedis() },
    { id: 'memory', name: 'MemoryStore', backend: 'memory', ours: false, open: openMemory() },
  ];
}

/** Reads the server versions, for the results. A server that cannot be reached reads as null. */
async function serverVersions() {
  const versions = { postgres: null, mysql: null, redis: null, betterSqlite3: null };
  try {
    const { Client } = require('pg');
    const client = new Client({ connectionString: PG_URL });
    await client.connect();
    versions.postgres = (await client.query('SHOW server_version')).rows[0].server_version;
    await client.end();
  } catch {
    // Reported as null; the PostgreSQL stores then fail with the connection error.
  }
  try {
    const mysql = require('mysql2/promise');
    const connection = await mysql.createConnection({ uri: MYSQL_URL.replace(/^mariadb:/, 'mysql:') });
    const [rows] = await connection.query('SELECT VERSION() AS version');
    versions.mysql = rows[0].version;
    await connection.end();
  } catch {
    // Reported as null; the MariaDB stores then fail with the connection error.
  }
  try {
    const client = await connectRedis();
    try {
      versions.redis = (await client.info('server')).match(/^redis_version:(\S+)/m)[1];
    } finally {
      await client.close();
    }
  } catch {
    // Reported as null; the connect-redis store is then skipped, or fails on an error reply.
  }
  const Database = require('better-sqlite3');
  const db = new Database(':memory:');
  versions.betterSqlite3 = db.prepare('SELECT sqlite_version() AS v').get().v;
  db.close();
  return versions;
}

module.exports = {
  BACKENDS,
  PG_URL,
  MYSQL_URL,
  REDIS_URL,
  SQLITE_PEER_DEFAULTS,
  StoreUnavailableError,
  POOL_SIZE,
  allStores,
  removeTmp,
  serverVersions,
  tmpFolder,
};
