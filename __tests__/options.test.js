'use strict';

// Options of the store: defaults, old spellings, the three forms of `knex`, and the errors for
// unknown, mistyped and unsafe values. Most run on SQLite, and the compatibility and injection
// cases run on every backend.
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { describe, it } = require('node:test');

const session = require('express-session');

const connectSessionKnex = require('..');
const { KnexSessionStore } = connectSessionKnex;
const { backends, expiresIn, openStore, quote, rawCount, sleep, uniqueTable } = require('./helpers');

const sqlite = backends.find((backend) => backend.name === 'sqlite');

/** Runs `fn` and returns what it throws. Fails the test when it throws nothing. */
function thrownBy(fn) {
  try {
    const store = fn();
    store.close().catch(() => {});
  } catch (error) {
    return error;
  }
  assert.fail('expected an error, but nothing was thrown');
}

/** Waits until `condition()` is true, failing after `timeoutMs`. */
async function waitFor(condition, timeoutMs, description) {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) assert.fail(`timed out after ${timeoutMs} ms waiting for ${description}`);
    await sleep(25);
  }
}

/** Tells whether `table` exists in the current database or schema of `backend`. */
async function tableExists(backend, raw, table) {
  const sql = {
    sqlite: `SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?`,
    postgres: `SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = ?`,
    mysql: `SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?`,
  }[backend.name];
  return (await raw.query(sql, [table])).length === 1;
}

/** Returns the column names of `table`, sorted. */
async function columnNames(backend, raw, table) {
  const sql = {
    sqlite: `SELECT name FROM pragma_table_info(?)`,
    postgres: `SELECT column_name AS name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = ?`,
    mysql: `SELECT COLUMN_NAME AS name FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?`,
  }[backend.name];
  return (await raw.query(sql, [table])).map((row) => row.name).sort();
}

/** Returns a knex config object `{ client, connection }` for the database behind `url`. */
function knexConfig(backend, url) {
  if (backend.name === 'sqlite') {
    return { client: 'sqlite3', connection: { filename: url.replace(/^sqlite:\/\//, '') }, useNullAsDefault: true };
  }
  const parsed = new URL(url);
  const connection = {
    host: parsed.hostname,
    port: Number(parsed.port),
    user: decodeURIComponent(parsed.username),
    database: parsed.pathname.slice(1),
  };
  if (parsed.password !== '') connection.password = decodeURIComponent(parsed.password);
  return { client: backend.name === 'postgres' ? 'pg' : 'mysql2', connection };
}

/** Builds an object shaped like a knex instance: a function carrying `client.config` and `client.dialect`. */
function fakeKnex(config, dialect) {
  const knex = function knex() {
    throw new Error('the store must not run queries through knex');
  };
  knex.client = { config, dialect };
  return knex;
}

const DIALECT_OF = { sqlite: 'sqlite3', postgres: 'postgresql', mysql: 'mysql2' };

describe('option defaults', () => {
  const defaults = {
    tableName: 'sessions',
    sidFieldName: 'sid',
    createTable: true,
    cleanupInterval: 60000,
    disableDbCleanup: false,
    ttl: 86400000,
    disableTouch: false,
  };
  for (const [name, value] of Object.entries(defaults)) {
    it(`${name} defaults to ${value}`, async () => {
      const store = new KnexSessionStore({ knex: sqlite.url() });
      try {
        assert.equal(store.options[name], value);
      } finally {
        await store.close();
      }
    });
  }

  it('default table is named sessions', async () => {
    const url = sqlite.url();
    const store = new KnexSessionStore({ knex: url, cleanupInterval: 0 });
    const raw = await sqlite.raw(url);
    try {
      await store.ready;
      assert.equal(await tableExists(sqlite, raw, 'sessions'), true);
      assert.deepEqual(await columnNames(sqlite, raw, 'sessions'), ['expired', 'sess', 'sid']);
    } finally {
      await store.close();
      await raw.close();
    }
  });

  it('session without cookie lives one day', async () => {
    const { store, raw, tableName, cleanup } = await openStore(sqlite);
    try {
      await store.set('no-cookie', { user: 'a' });
      const seconds = await expiresIn(sqlite, raw, tableName, 'no-cookie');
      assert.ok(seconds > 86390, `expires in ${seconds} s`);
      assert.ok(seconds <= 86400, `expires in ${seconds} s`);
    } finally {
      await cleanup();
    }
  });
});

describe('option effects on SQLite', () => {
  it('tableName names the table', async () => {
    const tableName = uniqueTable('named');
    const { store, raw, cleanup } = await openStore(sqlite, { tableName });
    try {
      await store.set('a', { cookie: { maxAge: 60000 } });
      assert.equal(await rawCount(sqlite, raw, tableName, 'a'), 1);
    } finally {
      await cleanup();
    }
  });

  it('tablename alias names the table', async () => {
    const url = sqlite.url();
    const tablename = uniqueTable('alias');
    const store = new KnexSessionStore({ knex: url, tablename, cleanupInterval: 0 });
    const raw = await sqlite.raw(url);
    try {
      assert.equal(store.options.tableName, tablename);
      await store.set('a', { cookie: { maxAge: 60000 } });
      assert.equal(await rawCount(sqlite, raw, tablename, 'a'), 1);
    } finally {
      await store.close();
      await raw.close();
    }
  });

  it('sidFieldName names the id column', async () => {
    const { store, raw, tableName, cleanup } = await openStore(sqlite, { sidFieldName: 'session_id' });
    try {
      await store.set('a', { cookie: { maxAge: 60000 } });
      assert.deepEqual(await columnNames(sqlite, raw, tableName), ['expired', 'sess', 'session_id']);
      assert.equal(await rawCount(sqlite, raw, tableName, 'a', 'session_id'), 1);
    } finally {
      await cleanup();
    }
  });

  it('sidfieldname alias names the column', async () => {
    const { store, raw, tableName, cleanup } = await openStore(sqlite, { sidfieldname: 'old_sid' });
    try {
      assert.equal(store.options.sidFieldName, 'old_sid');
      await store.set('a', { cookie: { maxAge: 60000 } });
      assert.equal(await rawCount(sqlite, raw, tableName, 'a', 'old_sid'), 1);
    } finally {
      await cleanup();
    }
  });

  for (const spelling of ['createTable', 'createtable']) {
    it(`${spelling} false creates no table`, async () => {
      const url = sqlite.url();
      const tableName = uniqueTable('absent');
      const store = new KnexSessionStore({ knex: url, tableName, [spelling]: false, cleanupInterval: 0 });
      const raw = await sqlite.raw(url);
      try {
        const error = await store.ready.then(
          () => undefined,
          (reason) => reason,
        );
        assert.ok(error instanceof Error, 'ready must reject');
        assert.equal(error.code, 'ERR_TABLE_MISSING');
        assert.match(error.message, new RegExp(tableName));
        assert.equal(await tableExists(sqlite, raw, tableName), false);
      } finally {
        await store.close();
        await raw.close();
      }
    });
  }

  it('createTable false uses existing table', async () => {
    const url = sqlite.url();
    const tableName = uniqueTable('handmade');
    const raw = await sqlite.raw(url);
    await raw.query(
      `CREATE TABLE "${tableName}" (sid varchar(255) PRIMARY KEY, sess json NOT NULL, expired datetime NOT NULL)`,
    );
    const store = new KnexSessionStore({ knex: url, tableName, createTable: false, cleanupInterval: 0 });
    try {
      await store.set('a', { cookie: { maxAge: 60000 }, n: 1 });
      assert.deepEqual(await store.get('a'), { cookie: { maxAge: 60000 }, n: 1 });
    } finally {
      await store.close();
      await raw.close();
    }
  });

  it('clearInterval 0 turns cleanup off', async () => {
    const { store, raw, tableName, cleanup } = await openStore(sqlite, {
      cleanupInterval: undefined,
      clearInterval: 0,
    });
    try {
      assert.equal(store.options.cleanupInterval, 0);
      await store.set('old', { cookie: { expires: new Date(Date.now() - 1000) } });
      await sleep(400);
      assert.equal(store.getNextDbCleanup(), undefined);
      assert.equal(await rawCount(sqlite, raw, tableName, 'old'), 1);
    } finally {
      await cleanup();
    }
  });

  it('onDbCleanupError receives cleanup failures', async () => {
    const errors = [];
    const { store, raw, tableName, cleanup } = await openStore(sqlite, {
      cleanupInterval: 100,
      onDbCleanupError: (error) => errors.push(error),
    });
    try {
      await store.ready;
      await raw.query(`DROP TABLE "${tableName}"`);
      await waitFor(() => errors.length > 0, 3000, 'a cleanup error');
      assert.ok(errors[0] instanceof Error);
      assert.equal(typeof errors[0].code, 'string');
      assert.match(errors[0].code, /^ERR_/);
    } finally {
      await cleanup();
    }
  });

  it('cleanup failures default to console.error', async () => {
    const logged = [];
    const consoleError = console.error;
    const { store, raw, tableName, cleanup } = await openStore(sqlite, { cleanupInterval: 100 });
    try {
      await store.ready;
      console.error = (...args) => logged.push(args);
      await raw.query(`DROP TABLE "${tableName}"`);
      await waitFor(() => logged.length > 0, 3000, 'a logged cleanup error');
      assert.ok(logged[0][0] instanceof Error, `console.error got ${logged[0][0]}`);
    } finally {
      console.error = consoleError;
      await cleanup();
    }
  });

  it('onError receives corrupt rows', async () => {
    const errors = [];
    const { store, raw, tableName, cleanup } = await openStore(sqlite, { onError: (error) => errors.push(error) });
    try {
      await store.ready;
      const expired = new Date(Date.now() + 60000).toISOString();
      await raw.query(`INSERT INTO "${tableName}" (sid, sess, expired) VALUES (?, ?, ?)`, ['bad', 'not json', expired]);
      assert.equal(await store.get('bad'), null);
      assert.equal(errors.length, 1);
      assert.equal(errors[0].code, 'ERR_CORRUPT_SESSION');
    } finally {
      await cleanup();
    }
  });

  it('ttl sets expiry without cookie', async () => {
    const { store, raw, tableName, cleanup } = await openStore(sqlite, { ttl: 5000 });
    try {
      await store.set('short', { user: 'a' });
      const seconds = await expiresIn(sqlite, raw, tableName, 'short');
      assert.ok(seconds > 3, `expires in ${seconds} s`);
      assert.ok(seconds <= 5, `expires in ${seconds} s`);
    } finally {
      await cleanup();
    }
  });

  it('ttl applies to cookie without expiry', async () => {
    const { store, raw, tableName, cleanup } = await openStore(sqlite, { ttl: 5000 });
    try {
      await store.set('no-expiry', { cookie: { originalMaxAge: null, expires: null } });
      const seconds = await expiresIn(sqlite, raw, tableName, 'no-expiry');
      assert.ok(seconds > 3, `expires in ${seconds} s`);
      assert.ok(seconds <= 5, `expires in ${seconds} s`);
    } finally {
      await cleanup();
    }
  });

  it('touch moves expiry by default', async () => {
    const { store, raw, tableName, cleanup } = await openStore(sqlite);
    try {
      await store.set('a', { cookie: { maxAge: 60000 } });
      await store.touch('a', { cookie: { expires: new Date(Date.now() + 3600000) } });
      const seconds = await expiresIn(sqlite, raw, tableName, 'a');
      assert.ok(seconds > 3590, `expires in ${seconds} s`);
      assert.ok(seconds <= 3600, `expires in ${seconds} s`);
    } finally {
      await cleanup();
    }
  });

  it('disableTouch leaves expiry alone', async () => {
    const { store, raw, tableName, cleanup } = await openStore(sqlite, { disableTouch: true });
    try {
      await store.set('a', { cookie: { maxAge: 60000 } });
      await store.touch('a', { cookie: { expires: new Date(Date.now() + 3600000) } });
      const seconds = await expiresIn(sqlite, raw, tableName, 'a');
      assert.ok(seconds > 50, `expires in ${seconds} s`);
      assert.ok(seconds <= 60, `expires in ${seconds} s`);
    } finally {
      await cleanup();
    }
  });

  it('pool settings are accepted', async () => {
    const pool = { max: 2, min: 0, acquireTimeoutMillis: 2000, idleTimeoutMillis: 1000 };
    const { store, cleanup } = await openStore(sqlite, { pool });
    try {
      assert.deepEqual(store.options.pool, pool);
      await Promise.all(['a', 'b', 'c', 'd'].map((sid) => store.set(sid, { cookie: { maxAge: 60000 } })));
      const sessions = await Promise.all(['a', 'b', 'c', 'd'].map((sid) => store.get(sid)));
      assert.equal(sessions.filter((found) => found !== null).length, 4);
    } finally {
      await cleanup();
    }
  });

  it('knex config pool is accepted', async () => {
    const url = sqlite.url();
    const config = { ...knexConfig(sqlite, url), pool: { min: 0, max: 3, afterCreate: () => {} } };
    const store = new KnexSessionStore({ knex: config, cleanupInterval: 0 });
    try {
      await store.set('a', { cookie: { maxAge: 60000 } });
      assert.notEqual(await store.get('a'), null);
    } finally {
      await store.close();
    }
  });
});

describe('old and new spellings', () => {
  it('tableName wins over tablename', async () => {
    const url = sqlite.url();
    const oldName = uniqueTable('old');
    const newName = uniqueTable('new');
    const store = new KnexSessionStore({ knex: url, tablename: oldName, tableName: newName, cleanupInterval: 0 });
    const raw = await sqlite.raw(url);
    try {
      assert.equal(store.options.tableName, newName);
      await store.ready;
      assert.equal(await tableExists(sqlite, raw, newName), true);
      assert.equal(await tableExists(sqlite, raw, oldName), false);
    } finally {
      await store.close();
      await raw.close();
    }
  });

  it('sidFieldName wins over sidfieldname', async () => {
    const { store, raw, tableName, cleanup } = await openStore(sqlite, {
      sidfieldname: 'old_sid',
      sidFieldName: 'new_sid',
    });
    try {
      assert.equal(store.options.sidFieldName, 'new_sid');
      await store.ready;
      assert.deepEqual(await columnNames(sqlite, raw, tableName), ['expired', 'new_sid', 'sess']);
    } finally {
      await cleanup();
    }
  });

  it('createTable wins over createtable', async () => {
    const { store, cleanup } = await openStore(sqlite, { createtable: false, createTable: true });
    try {
      assert.equal(store.options.createTable, true);
      await store.ready;
    } finally {
      await cleanup();
    }
  });

  it('cleanupInterval wins over clearInterval', async () => {
    const { store, cleanup } = await openStore(sqlite, { clearInterval: 0, cleanupInterval: 250 });
    try {
      assert.equal(store.options.cleanupInterval, 250);
    } finally {
      await cleanup();
    }
  });

  it('options keep only new spellings', async () => {
    const { store, cleanup } = await openStore(sqlite, { tablename: uniqueTable('keys'), clearInterval: 0 });
    try {
      assert.equal('tablename' in store.options, false);
      assert.equal('clearInterval' in store.options, false);
      assert.equal(store.options.cleanupInterval, 0);
    } finally {
      await cleanup();
    }
  });
});

describe('unknown options', () => {
  const unknown = {
    db: { db: { query: () => {} } },
    tableNmae: { tableNmae: 'sessions' },
    cleanupinterval: { cleanupinterval: 0 },
    client: { client: 'pg' },
    connection: { connection: { host: '127.0.0.1' } },
  };
  for (const [key, options] of Object.entries(unknown)) {
    it(`rejects unknown option ${key}`, () => {
      const error = thrownBy(() => new KnexSessionStore({ knex: sqlite.url(), ...options }));
      assert.ok(error instanceof TypeError, `got ${error}`);
      assert.equal(error.code, 'ERR_UNKNOWN_OPTION');
      assert.match(error.message, new RegExp(`"${key}"`));
    });
  }

  it('db option never opens default SQLite', async () => {
    const cwd = process.cwd();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'csk-unknown-'));
    process.chdir(dir);
    try {
      const error = thrownBy(() => new KnexSessionStore({ db: { client: 'pg' } }));
      assert.equal(error.code, 'ERR_UNKNOWN_OPTION');
      await sleep(300);
      assert.deepEqual(fs.readdirSync(dir), []);
    } finally {
      process.chdir(cwd);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('rejects unknown pool option', () => {
    const error = thrownBy(() => new KnexSessionStore({ knex: sqlite.url(), pool: { maxConnections: 5 } }));
    assert.ok(error instanceof TypeError);
    assert.equal(error.code, 'ERR_UNKNOWN_OPTION');
    assert.match(error.message, /pool\.maxConnections/);
  });
});

describe('mistyped options', () => {
  /** Each case: the options, and the option the message must name. */
  const cases = [
    [{ tableName: 5 }, /tableName/],
    [{ sidFieldName: {} }, /sidFieldName/],
    [{ createTable: 'yes' }, /createTable/],
    [{ disableDbCleanup: 1 }, /disableDbCleanup/],
    [{ disableTouch: 'false' }, /disableTouch/],
    [{ cleanupInterval: -1 }, /cleanupInterval/],
    [{ cleanupInterval: 1.5 }, /cleanupInterval/],
    [{ cleanupInterval: '60000' }, /cleanupInterval/],
    [{ cleanupInterval: 2 ** 31 }, /cleanupInterval/],
    [{ ttl: 0 }, /ttl/],
    [{ ttl: Number.NaN }, /ttl/],
    [{ ttl: '1d' }, /ttl/],
    [{ onDbCleanupError: 'log' }, /onDbCleanupError/],
    [{ onError: {} }, /onError/],
    [{ pool: 5 }, /pool/],
    [{ pool: { max: 0 } }, /pool\.max/],
    [{ pool: { min: -1 } }, /pool\.min/],
    [{ pool: { min: 3, max: 2 } }, /pool\.min/],
    [{ pool: { acquireTimeoutMillis: '1s' } }, /pool\.acquireTimeoutMillis/],
    [{ knex: 42 }, /knex/],
    [{ knex: true }, /knex/],
    [{ knex: { client: 5 } }, /knex\.client/],
    [{ knex: { client: 'pg', connection: { host: 5 } } }, /knex\.connection\.host/],
    [{ knex: { client: 'pg', connection: { port: 'abc' } } }, /knex\.connection\.port/],
    [{ knex: { client: 'pg', connection: { port: 70000 } } }, /knex\.connection\.port/],
    [{ knex: { client: 'sqlite3', connection: {} } }, /knex\.connection\.filename/],
    [{ knex: { client: 'pg', connection: { ssl: 5 } } }, /knex\.connection\.ssl/],
    [{ tablename: 5 }, /tablename/i],
    [{ sidfieldname: 7 }, /sidfieldname/i],
    [{ createtable: 'no' }, /createtable/i],
    [{ clearInterval: -5 }, /clearInterval|cleanupInterval/],
  ];
  for (const [options, named] of cases) {
    const [key] = Object.keys(options);
    it(`rejects ${key} ${JSON.stringify(options[key]) ?? String(options[key])}`, () => {
      const error = thrownBy(() => new KnexSessionStore({ knex: sqlite.url(), ...options }));
      assert.ok(error instanceof TypeError, `got ${error}`);
      assert.equal(error.code, 'ERR_INVALID_OPTION');
      assert.match(error.message, named);
    });
  }

  for (const options of ['sqlite://x', null, [], 5]) {
    it(`rejects options ${JSON.stringify(options)}`, () => {
      const error = thrownBy(() => new KnexSessionStore(options));
      assert.ok(error instanceof TypeError, `got ${error}`);
      assert.equal(error.code, 'ERR_INVALID_OPTION');
      assert.match(error.message, /options/);
    });
  }

  it('pool.max message counts connections', () => {
    const error = thrownBy(() => new KnexSessionStore({ knex: sqlite.url(), pool: { max: 0 } }));
    assert.equal(error.code, 'ERR_INVALID_OPTION');
    assert.doesNotMatch(error.message, /milliseconds/);
  });

  it('promised connection is named a promise', () => {
    const connection = () => Promise.resolve({ host: '127.0.0.1' });
    const error = thrownBy(() => new KnexSessionStore({ knex: { client: 'pg', connection } }));
    assert.ok(error instanceof TypeError);
    assert.equal(error.code, 'ERR_INVALID_OPTION');
    assert.match(error.message, /knex\.connection/);
    assert.match(error.message, /got a promise/);
  });
});

describe('unsupported clients', () => {
  for (const client of ['mssql', 'oracledb']) {
    it(`rejects ${client} config`, () => {
      const error = thrownBy(
        () => new KnexSessionStore({ knex: { client, connection: { host: '127.0.0.1', database: 'test' } } }),
      );
      assert.equal(error.code, 'ERR_UNSUPPORTED_CLIENT');
      assert.match(error.message, new RegExp(client));
    });

    it(`rejects ${client} knex instance`, () => {
      const knex = fakeKnex({ client: class FakeClient {}, connection: { host: '127.0.0.1' } }, client);
      const error = thrownBy(() => new KnexSessionStore({ knex }));
      assert.equal(error.code, 'ERR_UNSUPPORTED_CLIENT');
      assert.match(error.message, new RegExp(client));
    });
  }
});

describe('invalid URLs', () => {
  const urls = [
    'redis://user:hunter2@127.0.0.1/0',
    'http://user:hunter2@127.0.0.1/',
    'postgres://user:hunter2@127.0.0.1:notaport/test',
    'mysql://root:hunter2@127.0.0.1:99999/test',
    'postgres://user:hunter2@[::1/test',
    'not a url',
  ];
  for (const url of urls) {
    it(`rejects ${url.replace('hunter2', '***')}`, () => {
      const error = thrownBy(() => new KnexSessionStore({ knex: url }));
      assert.equal(error.code, 'ERR_INVALID_URL');
      assert.doesNotMatch(error.message, /hunter2/);
    });
  }

  it('rejects URL of another client', () => {
    const knex = { client: 'mysql2', connection: 'postgres://user:hunter2@127.0.0.1/test' };
    const error = thrownBy(() => new KnexSessionStore({ knex }));
    assert.equal(error.code, 'ERR_INVALID_URL');
    assert.doesNotMatch(error.message, /hunter2/);
  });

  it('rejects bad connectionString quietly', () => {
    const knex = { client: 'pg', connection: { connectionString: 'redis://user:hunter2@127.0.0.1/0' } };
    const error = thrownBy(() => new KnexSessionStore({ knex }));
    assert.equal(error.code, 'ERR_INVALID_URL');
    assert.doesNotMatch(error.message, /hunter2/);
  });

  it('failed connection hides the password', async () => {
    // Port 1 on loopback has no server, so the connection is refused at once.
    const store = new KnexSessionStore({ knex: 'postgres://postgres:hunter2@127.0.0.1:1/test', cleanupInterval: 0 });
    try {
      const error = await store.ready.then(
        () => undefined,
        (reason) => reason,
      );
      assert.ok(error instanceof Error, 'ready must reject');
      assert.equal(error.code, 'ERR_CONNECTION_FAILED');
      assert.doesNotMatch(error.message, /hunter2/);
      assert.doesNotMatch(String(error.stack), /hunter2/);
    } finally {
      await store.close();
    }
  });
});

describe('exports', () => {
  it('factory returns the store class', () => {
    assert.equal(connectSessionKnex(session), KnexSessionStore);
  });

  it('factory class extends session Store', async () => {
    const Store = connectSessionKnex(session);
    const store = new Store({ knex: sqlite.url(), cleanupInterval: 0 });
    try {
      assert.ok(store instanceof session.Store);
      await store.set('a', { cookie: { maxAge: 60000 } });
      assert.notEqual(await store.get('a'), null);
    } finally {
      await store.close();
    }
  });

  it('require exports one class', () => {
    assert.equal(typeof KnexSessionStore, 'function');
    assert.equal(connectSessionKnex.ConnectSessionKnexStore, KnexSessionStore);
    assert.equal(connectSessionKnex.default, KnexSessionStore);
    assert.equal(require('connect-session-knex'), connectSessionKnex);
  });

  it('import exports the same class', async () => {
    const module = await import('connect-session-knex');
    assert.equal(module.default, KnexSessionStore);
    assert.equal(module.KnexSessionStore, KnexSessionStore);
    assert.equal(module.ConnectSessionKnexStore, KnexSessionStore);
  });
});

describe('cleanup timer methods', () => {
  it('schedules an unref timer after ready', async () => {
    const { store, cleanup } = await openStore(sqlite, { cleanupInterval: 200 });
    try {
      await store.ready;
      await waitFor(() => store.getNextDbCleanup() !== undefined, 2000, 'the next cleanup timer');
      const timer = store.getNextDbCleanup();
      assert.equal(timer, store.nextDbCleanup);
      assert.equal(typeof timer.hasRef, 'function');
      assert.equal(timer.hasRef(), false);
    } finally {
      await cleanup();
    }
  });

  it('stopDbCleanup keeps expired rows', async () => {
    const { store, raw, tableName, cleanup } = await openStore(sqlite, { cleanupInterval: 200 });
    try {
      await store.ready;
      await waitFor(() => store.getNextDbCleanup() !== undefined, 2000, 'the next cleanup timer');
      store.stopDbCleanup();
      assert.equal(store.getNextDbCleanup(), undefined);
      assert.equal(store.nextDbCleanup, undefined);
      await store.set('old', { cookie: { expires: new Date(Date.now() - 1000) } });
      await sleep(700);
      assert.equal(await rawCount(sqlite, raw, tableName, 'old'), 1);
      assert.equal(store.getNextDbCleanup(), undefined);
    } finally {
      await cleanup();
    }
  });

  it('no timer when cleanup is off', async () => {
    const { store, cleanup } = await openStore(sqlite, { cleanupInterval: 0 });
    try {
      await store.ready;
      await sleep(100);
      assert.equal(store.getNextDbCleanup(), undefined);
    } finally {
      await cleanup();
    }
  });

  it('no timer when cleanup is disabled', async () => {
    const { store, cleanup } = await openStore(sqlite, { cleanupInterval: 200, disableDbCleanup: true });
    try {
      await store.ready;
      await sleep(300);
      assert.equal(store.getNextDbCleanup(), undefined);
    } finally {
      await cleanup();
    }
  });
});

for (const backend of backends) {
  describe(backend.name, { skip: backend.skip }, () => {
    describe('knex option forms', () => {
      it('knex config object connects', async () => {
        const url = backend.url();
        const tableName = uniqueTable('config');
        const store = new KnexSessionStore({ knex: knexConfig(backend, url), tableName, cleanupInterval: 0 });
        const raw = await backend.raw(url);
        try {
          await store.set('a', { cookie: { maxAge: 60000 }, n: 1 });
          assert.equal(await rawCount(backend, raw, tableName, 'a'), 1);
        } finally {
          await store.close();
          await raw.query(`DROP TABLE IF EXISTS ${quote(backend, tableName)}`);
          await raw.close();
        }
      });

      it('knex instance shape connects', async () => {
        const url = backend.url();
        const tableName = uniqueTable('instance');
        const knex = fakeKnex(knexConfig(backend, url), DIALECT_OF[backend.name]);
        const store = new KnexSessionStore({ knex, tableName, cleanupInterval: 0 });
        const raw = await backend.raw(url);
        try {
          await store.set('a', { cookie: { maxAge: 60000 }, n: 1 });
          assert.equal(await rawCount(backend, raw, tableName, 'a'), 1);
          assert.deepEqual(await store.get('a'), { cookie: { maxAge: 60000 }, n: 1 });
        } finally {
          await store.close();
          await raw.query(`DROP TABLE IF EXISTS ${quote(backend, tableName)}`);
          await raw.close();
        }
      });

      it('knex instance with client class', async () => {
        const url = backend.url();
        const tableName = uniqueTable('klass');
        const config = { ...knexConfig(backend, url), client: class FakeClient {} };
        const store = new KnexSessionStore({ knex: fakeKnex(config, DIALECT_OF[backend.name]), tableName });
        const raw = await backend.raw(url);
        try {
          await store.set('a', { cookie: { maxAge: 60000 } });
          assert.equal(await rawCount(backend, raw, tableName, 'a'), 1);
        } finally {
          await store.close();
          await raw.query(`DROP TABLE IF EXISTS ${quote(backend, tableName)}`);
          await raw.close();
        }
      });
    });

    describe('legacy option compatibility', () => {
      /** Opens a store with the cleanup and naming options under the given spelling. */
      async function checkCleanup(legacy) {
        const url = backend.url();
        const tableName = uniqueTable('t_legacy');
        const options = legacy
          ? { tablename: tableName, sidfieldname: 'legacy_sid', createtable: true, clearInterval: 300 }
          : { tableName, sidFieldName: 'legacy_sid', createTable: true, cleanupInterval: 300 };
        const store = new KnexSessionStore({ knex: url, ...options });
        const raw = await backend.raw(url);
        try {
          await store.ready;
          await store.set('soon', { cookie: { expires: new Date(Date.now() + 100) } });
          await store.set('later', { cookie: { maxAge: 600000 } });
          await sleep(1200);
          assert.equal(await tableExists(backend, raw, tableName), true);
          assert.deepEqual(await columnNames(backend, raw, tableName), ['expired', 'legacy_sid', 'sess']);
          assert.equal(await rawCount(backend, raw, tableName, 'soon', 'legacy_sid'), 0);
          assert.equal(await rawCount(backend, raw, tableName, 'later', 'legacy_sid'), 1);
        } finally {
          await store.close();
          await raw.query(`DROP TABLE IF EXISTS ${quote(backend, tableName)}`);
          await raw.close();
        }
      }

      it('old spellings name and clean', () => checkCleanup(true));

      it('new spellings name and clean', () => checkCleanup(false));

      it('disableDbCleanup keeps expired rows', async () => {
        const { store, raw, tableName, cleanup } = await openStore(backend, {
          cleanupInterval: 300,
          disableDbCleanup: true,
        });
        try {
          await store.ready;
          await store.set('soon', { cookie: { expires: new Date(Date.now() + 100) } });
          await sleep(1500);
          assert.equal(await rawCount(backend, raw, tableName, 'soon'), 1);
          assert.equal(await store.get('soon'), null);
        } finally {
          await cleanup();
        }
      });
    });

    describe('identifier injection', () => {
      const victim = uniqueTable('victim');
      const attacks = [
        ['tableName', `s"; DROP TABLE ${victim}; --`],
        ['tableName', `s\`; DROP TABLE ${victim}; --`],
        ['tableName', `s]; DROP TABLE ${victim}; --`],
        ['tableName', `s'; DROP TABLE ${victim}; --`],
        ['sidFieldName', `sid) VALUES ('a','{}','2030-01-01'); DROP TABLE ${victim}; --`],
        ['sidFieldName', `sid" text, "x`],
      ];
      for (const [option, name] of attacks) {
        it(`${option} ${JSON.stringify(name.slice(0, 3))} cannot drop tables`, async () => {
          const url = backend.url();
          const raw = await backend.raw(url);
          await raw.query(`CREATE TABLE ${quote(backend, victim)} (x int)`);
          let error;
          let store;
          try {
            store = new KnexSessionStore({ knex: url, [option]: name, cleanupInterval: 100 });
          } catch (caught) {
            error = caught;
          }
          try {
            if (store !== undefined) {
              // The name got through: drive every statement and a cleanup run through it.
              const live = { cookie: { maxAge: 60000 } };
              await Promise.allSettled([store.ready]);
              await Promise.allSettled([
                store.set('a', live),
                store.get('a'),
                store.touch('a', live),
                store.length(),
                store.all(),
              ]);
              await Promise.allSettled([store.destroy('a'), store.clear()]);
              await sleep(500);
              await store.close();
            }
            assert.equal(await tableExists(backend, raw, victim), true);
            assert.ok(error instanceof Error, `${option} ${name} was accepted`);
            assert.equal(error.code, 'ERR_INVALID_IDENTIFIER');
            assert.match(error.message, new RegExp(option));
          } finally {
            await raw.query(`DROP TABLE IF EXISTS ${quote(backend, victim)}`);
            await raw.close();
          }
        });
      }

      it('plain sidFieldName session_id works', async () => {
        const { store, raw, tableName, cleanup } = await openStore(backend, { sidFieldName: 'session_id' });
        try {
          await store.set('a', { cookie: { maxAge: 60000 }, n: 1 });
          assert.deepEqual(await store.get('a'), { cookie: { maxAge: 60000 }, n: 1 });
          assert.equal(await rawCount(backend, raw, tableName, 'a', 'session_id'), 1);
        } finally {
          await cleanup();
        }
      });

      it('empty tableName is rejected', () => {
        const error = thrownBy(() => new KnexSessionStore({ knex: backend.url(), tableName: '' }));
        assert.equal(error.code, 'ERR_INVALID_IDENTIFIER');
        assert.match(error.message, /tableName/);
      });
    });
  });
}
