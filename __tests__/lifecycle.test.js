'use strict';

// Start-up failures, recovery, cleanup scheduling, close and process exit. The exit cases run
// the store in child processes (scripts under fixtures/), because only a separate process can
// show whether the store keeps Node alive.
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { describe, it } = require('node:test');

const { KnexSessionStore } = require('..');
const { backends, openStore, quote, rawCount, sleep, tmpFile, uniqueTable } = require('./helpers');

const FIXTURES = path.join(__dirname, 'fixtures');

/** Lenient bound for a child process to exit after its last line, not a speed target. */
const EXIT_BOUND_MS = 3000;

/** Counts unhandled rejections and uncaught exceptions until `stop()` is called. */
function watchProcess() {
  const rejections = [];
  const exceptions = [];
  const onRejection = (reason) => rejections.push(reason);
  const onException = (error) => exceptions.push(error);
  process.on('unhandledRejection', onRejection);
  process.on('uncaughtExceptionMonitor', onException);
  return {
    rejections,
    exceptions,
    stop: () => {
      process.off('unhandledRejection', onRejection);
      process.off('uncaughtExceptionMonitor', onException);
    },
  };
}

/** Returns what `promise` rejects with, or undefined when it resolves. */
function rejectionOf(promise) {
  return promise.then(
    () => undefined,
    (reason) => reason,
  );
}

/** Calls `method` with a callback and resolves with every call the callback got, 300 ms later. */
function callbackCalls(method) {
  return new Promise((resolve) => {
    const calls = [];
    method((...args) => {
      calls.push(args);
      if (calls.length === 1) setTimeout(() => resolve(calls), 300);
    });
  });
}

/** Returns an environment for child processes without the variables of the parent test runner. */
function childEnv(extra = {}) {
  const env = { ...process.env, ...extra };
  delete env.NODE_TEST_CONTEXT;
  return env;
}

/**
 * Runs `node <args>` and resolves once it has exited, with its exit code, output and the time it
 * exited. Kills it by pid after `timeoutMs`.
 */
function runNode(args, { cwd = FIXTURES, env = childEnv(), timeoutMs = 20000 } = {}) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let exitedAt;
    let timedOut = false;
    child.stdout.on('data', (chunk) => (stdout += chunk));
    child.stderr.on('data', (chunk) => (stderr += chunk));
    const timer = setTimeout(() => {
      timedOut = true;
      process.kill(child.pid, 'SIGKILL');
    }, timeoutMs);
    child.on('exit', () => {
      exitedAt = Date.now();
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, exitedAt, timedOut });
    });
  });
}

/** Parses the last JSON line a fixture printed. */
function lastJson(stdout) {
  const lines = stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1]);
}

/** Returns a TCP port on 127.0.0.1 that was free a moment ago. */
async function freePort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = /** @type {net.AddressInfo} */ (server.address());
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Forwards TCP connections from 127.0.0.1:`port` to `target`, standing in for a server that starts late. */
async function startProxy(port, target) {
  const sockets = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(target.port, target.host);
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on('error', () => {});
      socket.on('close', () => {
        sockets.delete(socket);
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  return {
    stop: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** Creates the table exactly as connect-session-knex 5 creates it through knex. */
async function createLegacyTable(backend, raw, tableName) {
  const table = quote(backend, tableName);
  const index = quote(backend, `${tableName}_expired_index`);
  const expiredType = backend.name === 'postgres' ? 'timestamptz' : 'datetime';
  await raw.query(
    `CREATE TABLE ${table} (sid varchar(255) NOT NULL PRIMARY KEY, sess json NOT NULL, expired ${expiredType} NOT NULL)`,
  );
  await raw.query(`CREATE INDEX ${index} ON ${table} (expired)`);
}

const expiringSoon = () => ({ cookie: { expires: new Date(Date.now() + 100) } });
const live = () => ({ cookie: { maxAge: 600000 } });

for (const backend of backends) {
  describe(backend.name, { skip: backend.skip }, () => {
    describe('start-up failures', () => {
      it('missing table fails calls, not process', async () => {
        const watch = watchProcess();
        const url = backend.url();
        const tableName = uniqueTable('missing');
        const store = new KnexSessionStore({
          knex: url,
          tableName,
          createTable: false,
          cleanupInterval: 200,
          // Cleanup may fail while start-up fails. The hook keeps that out of the test output.
          onDbCleanupError: () => {},
        });
        try {
          await sleep(1000);
          const calls = await callbackCalls((callback) => store.get('s', callback));
          assert.equal(calls.length, 1);
          assert.ok(calls[0][0] instanceof Error, `callback got ${calls[0][0]}`);
          assert.equal(calls[0][0].code, 'ERR_TABLE_MISSING');
          assert.equal(watch.rejections.length, 0);
          assert.equal(watch.exceptions.length, 0);
        } finally {
          watch.stop();
          await store.close();
        }
      });

      it('missing table rejects ready', async () => {
        const tableName = uniqueTable('missing');
        const store = new KnexSessionStore({ knex: backend.url(), tableName, createTable: false, cleanupInterval: 0 });
        try {
          const error = await rejectionOf(store.ready);
          assert.ok(error instanceof Error, 'ready must reject');
          assert.equal(error.code, 'ERR_TABLE_MISSING');
          assert.match(error.message, new RegExp(tableName));
        } finally {
          await store.close();
        }
      });

      it('unawaited ready rejection is handled', async () => {
        const watch = watchProcess();
        const tableName = uniqueTable('missing');
        const store = new KnexSessionStore({ knex: backend.url(), tableName, createTable: false, cleanupInterval: 0 });
        try {
          await sleep(500);
          assert.equal(watch.rejections.length, 0);
          const error = await rejectionOf(store.ready);
          assert.equal(error.code, 'ERR_TABLE_MISSING');
        } finally {
          watch.stop();
          await store.close();
        }
      });

      it('failing child process stays alive', async () => {
        const tableName = uniqueTable('missing');
        const result = await runNode([path.join(FIXTURES, 'ready-unawaited.js'), backend.url(), tableName]);
        assert.equal(result.timedOut, false);
        assert.equal(result.code, 0, result.stderr);
        assert.equal(result.stdout.trim(), 'alive');
      });

      it('stores creating one table at once', async () => {
        // Many rounds, because the openings race and a single round rarely overlaps. On
        // SQLite each round is also a new file; elsewhere a new table in the shared database.
        const failures = [];
        for (let round = 0; round < 30; round += 1) {
          const url = backend.url();
          const tableName = uniqueTable('race');
          const stores = [1, 2, 3, 4, 5, 6].map(
            () => new KnexSessionStore({ knex: url, tableName, cleanupInterval: 0 }),
          );
          const results = await Promise.allSettled(stores.map((store) => store.ready));
          for (const result of results) {
            if (result.status === 'rejected') failures.push(`round ${round}: ${result.reason.message}`);
          }
          await Promise.all(stores.map((store) => store.close()));
          const raw = await backend.raw(url);
          try {
            await raw.query(`DROP TABLE IF EXISTS ${quote(backend, tableName)}`);
          } finally {
            await raw.close();
          }
        }
        assert.equal(failures.length, 0, failures.slice(0, 3).join('\n'));
      });

      if (backend.name === 'sqlite') {
        it('missing directory fails calls', async () => {
          const watch = watchProcess();
          const dir = path.dirname(tmpFile());
          const url = `sqlite://${path.join(dir, 'absent', 'deeper', 'sessions.sqlite')}`;
          const store = new KnexSessionStore({ knex: url, cleanupInterval: 200, onDbCleanupError: () => {} });
          try {
            await sleep(1000);
            const calls = await callbackCalls((callback) => store.set('s', live(), callback));
            assert.equal(calls.length, 1);
            assert.ok(calls[0][0] instanceof Error, `callback got ${calls[0][0]}`);
            assert.match(String(calls[0][0].code), /^ERR_/);
            const error = await rejectionOf(store.ready);
            assert.ok(error instanceof Error, 'ready must reject');
            assert.match(String(error.code), /^ERR_/);
            assert.equal(watch.rejections.length, 0);
            assert.equal(fs.existsSync(path.join(dir, 'absent')), false);
          } finally {
            watch.stop();
            await store.close();
          }
        });
      } else {
        it('refused connection rejects ready', async () => {
          const watch = watchProcess();
          const url = new URL(backend.url());
          url.hostname = '127.0.0.1';
          url.port = String(await freePort());
          const store = new KnexSessionStore({ knex: url.href, cleanupInterval: 0 });
          try {
            await sleep(300);
            const error = await rejectionOf(store.ready);
            assert.ok(error instanceof Error, 'ready must reject');
            assert.equal(error.code, 'ERR_CONNECTION_FAILED');
            assert.equal(watch.rejections.length, 0);
          } finally {
            watch.stop();
            await store.close();
          }
        });

        it('store recovers once database listens', async () => {
          const watch = watchProcess();
          const target = new URL(backend.url());
          const url = new URL(target.href);
          url.hostname = '127.0.0.1';
          url.port = String(await freePort());
          const tableName = uniqueTable('late');
          const store = new KnexSessionStore({
            knex: url.href,
            tableName,
            cleanupInterval: 200,
            onDbCleanupError: () => {},
          });
          let connects = 0;
          store.on('connect', () => {
            connects += 1;
          });
          let proxy;
          const raw = await backend.raw(target.href);
          try {
            // Nothing listens on the port yet, as if the database server were still down.
            await sleep(2000);
            assert.equal(watch.rejections.length, 0);
            proxy = await startProxy(Number(url.port), { host: target.hostname, port: Number(target.port) });

            const deadline = Date.now() + 10000;
            let lastError;
            let stored = false;
            while (!stored && Date.now() < deadline) {
              try {
                await store.set('s', { cookie: { maxAge: 60000 }, n: 1 });
                stored = true;
              } catch (error) {
                lastError = error;
                await sleep(200);
              }
            }
            assert.equal(stored, true, `set still failed after 10 s: ${lastError}`);
            assert.deepEqual(await store.get('s'), { cookie: { maxAge: 60000 }, n: 1 });
            assert.equal(watch.rejections.length, 0);
            // express-session treats 'connect' as the store being usable again.
            assert.equal(connects, 1);
            await assert.doesNotReject(store.ready, 'ready resolves once a retried setup succeeded');
          } finally {
            watch.stop();
            await store.close();
            if (proxy) await proxy.stop();
            await raw.query(`DROP TABLE IF EXISTS ${quote(backend, tableName)}`);
            await raw.close();
          }
        });
      }
    });

    describe('process exit', () => {
      it('exits soon after close', async () => {
        const url = backend.url();
        const tableName = uniqueTable('exit');
        const raw = await backend.raw(url);
        try {
          const result = await runNode([path.join(FIXTURES, 'store-exit.js'), url, tableName, 'close']);
          assert.equal(result.timedOut, false);
          assert.equal(result.code, 0, result.stderr);
          const { found, doneAt } = lastJson(result.stdout);
          assert.equal(found, true);
          assert.ok(result.exitedAt - doneAt < EXIT_BOUND_MS, `exited ${result.exitedAt - doneAt} ms after close`);
        } finally {
          await raw.query(`DROP TABLE IF EXISTS ${quote(backend, tableName)}`);
          await raw.close();
        }
      });

      it('exits without close', async () => {
        const url = backend.url();
        const tableName = uniqueTable('exit');
        const raw = await backend.raw(url);
        try {
          const result = await runNode([path.join(FIXTURES, 'store-exit.js'), url, tableName, 'keep-open']);
          assert.equal(result.timedOut, false);
          assert.equal(result.code, 0, result.stderr);
          const { found, doneAt } = lastJson(result.stdout);
          assert.equal(found, true);
          assert.ok(
            result.exitedAt - doneAt < EXIT_BOUND_MS,
            `exited ${result.exitedAt - doneAt} ms after the last call`,
          );
        } finally {
          await raw.query(`DROP TABLE IF EXISTS ${quote(backend, tableName)}`);
          await raw.close();
        }
      });

      it('second store cleans after first closes', async () => {
        const url = backend.url();
        const firstTable = uniqueTable('first');
        const secondTable = uniqueTable('second');
        const raw = await backend.raw(url);
        try {
          const result = await runNode([path.join(FIXTURES, 'two-stores.js'), url, firstTable, secondTable]);
          assert.equal(result.timedOut, false);
          assert.equal(result.code, 0, result.stderr);
          const { doneAt } = lastJson(result.stdout);
          assert.ok(result.exitedAt - doneAt < EXIT_BOUND_MS, `exited ${result.exitedAt - doneAt} ms after close`);
          assert.equal(await rawCount(backend, raw, secondTable, 'expiring'), 0);
          assert.equal(await rawCount(backend, raw, secondTable, 'live'), 1);
        } finally {
          await raw.query(`DROP TABLE IF EXISTS ${quote(backend, firstTable)}`);
          await raw.query(`DROP TABLE IF EXISTS ${quote(backend, secondTable)}`);
          await raw.close();
        }
      });

      it('test runner exits by itself', async () => {
        const url = backend.url();
        const tableName = uniqueTable('runner');
        const raw = await backend.raw(url);
        try {
          const env = childEnv({ CSK_URL: url, CSK_TABLE: tableName });
          const result = await runNode(['--test', '--test-reporter=tap', path.join(FIXTURES, 'runner-close.js')], {
            env,
          });
          assert.equal(result.timedOut, false, 'node --test did not exit within 20 s');
          assert.equal(result.code, 0, result.stdout + result.stderr);
          assert.match(result.stdout, /# pass 1\b/);
        } finally {
          await raw.query(`DROP TABLE IF EXISTS ${quote(backend, tableName)}`);
          await raw.close();
        }
      });
    });

    describe('cleanup schedule', () => {
      it('first run deletes expired rows', async () => {
        const { store, raw, tableName, cleanup } = await openStore(backend, {
          createTable: true,
          cleanupInterval: 300,
        });
        try {
          await store.set('e', expiringSoon());
          await store.set('live', live());
          await sleep(1500);
          assert.equal(await rawCount(backend, raw, tableName, 'e'), 0);
          assert.equal(await rawCount(backend, raw, tableName, 'live'), 1);
        } finally {
          await cleanup();
        }
      });

      it('createTable false still cleans', async () => {
        const url = backend.url();
        const tableName = uniqueTable('handmade');
        const raw = await backend.raw(url);
        await createLegacyTable(backend, raw, tableName);
        const store = new KnexSessionStore({ knex: url, tableName, createTable: false, cleanupInterval: 300 });
        try {
          await store.set('e', expiringSoon());
          await store.set('live', live());
          await sleep(1500);
          assert.equal(await rawCount(backend, raw, tableName, 'e'), 0);
          assert.equal(await rawCount(backend, raw, tableName, 'live'), 1);
        } finally {
          await store.close();
          await raw.query(`DROP TABLE IF EXISTS ${quote(backend, tableName)}`);
          await raw.close();
        }
      });

      it('cleanupInterval 0 keeps expired rows', async () => {
        const { store, raw, tableName, cleanup } = await openStore(backend, { cleanupInterval: 0 });
        try {
          await store.set('e', expiringSoon());
          await sleep(1000);
          assert.equal(await rawCount(backend, raw, tableName, 'e'), 1);
          assert.equal(await store.get('e'), null);
        } finally {
          await cleanup();
        }
      });

      it('disableDbCleanup keeps expired rows', async () => {
        const { store, raw, tableName, cleanup } = await openStore(backend, {
          cleanupInterval: 300,
          disableDbCleanup: true,
        });
        try {
          await store.set('e', expiringSoon());
          await sleep(1000);
          assert.equal(await rawCount(backend, raw, tableName, 'e'), 1);
        } finally {
          await cleanup();
        }
      });
    });

    describe('close', () => {
      it('second close resolves too', async () => {
        const { store, cleanup } = await openStore(backend);
        try {
          await store.set('a', live());
          const first = store.close();
          const second = store.close();
          assert.equal(await first, undefined);
          assert.equal(await second, undefined);
          assert.equal(await store.close(), undefined);
        } finally {
          await cleanup();
        }
      });

      it('close calls its callback once', async () => {
        const { store, cleanup } = await openStore(backend);
        try {
          await store.ready;
          const calls = await callbackCalls((callback) => store.close(callback));
          assert.equal(calls.length, 1);
          assert.equal(calls[0][0], null);
        } finally {
          await cleanup();
        }
      });

      const calls = {
        get: (store) => store.get('a'),
        set: (store) => store.set('a', live()),
        touch: (store) => store.touch('a', live()),
        destroy: (store) => store.destroy('a'),
        length: (store) => store.length(),
        all: (store) => store.all(),
        clear: (store) => store.clear(),
      };
      for (const [name, call] of Object.entries(calls)) {
        it(`${name} after close rejects`, async () => {
          const { store, cleanup } = await openStore(backend);
          try {
            await store.set('a', live());
            await store.close();
            const error = await rejectionOf(call(store));
            assert.ok(error instanceof Error, `${name} must reject`);
            assert.equal(error.code, 'ERR_STORE_CLOSED');
          } finally {
            await cleanup();
          }
        });
      }

      it('callback after close gets error', async () => {
        const { store, cleanup } = await openStore(backend);
        try {
          await store.ready;
          await store.close();
          const result = await callbackCalls((callback) => store.get('a', callback));
          assert.equal(result.length, 1);
          assert.equal(result[0][0].code, 'ERR_STORE_CLOSED');
        } finally {
          await cleanup();
        }
      });

      it('close before first call', async () => {
        const { store, cleanup } = await openStore(backend);
        try {
          await store.close();
          const error = await rejectionOf(store.get('a'));
          assert.ok(error instanceof Error, 'get must reject');
          assert.equal(error.code, 'ERR_STORE_CLOSED');
        } finally {
          await cleanup();
        }
      });

      it('close stops the cleanup timer', async () => {
        const { store, cleanup } = await openStore(backend, { cleanupInterval: 100 });
        try {
          await store.ready;
          await sleep(300);
          await store.close();
          assert.equal(store.getNextDbCleanup(), undefined);
          await sleep(300);
          assert.equal(store.getNextDbCleanup(), undefined);
        } finally {
          await cleanup();
        }
      });
    });

    describe('connect event', () => {
      it('emits connect once when ready', async () => {
        const { store, cleanup } = await openStore(backend);
        try {
          let connects = 0;
          store.on('connect', () => {
            connects += 1;
          });
          await store.ready;
          assert.equal(connects, 1);
          await store.set('a', live());
          await store.get('a');
          await sleep(50);
          assert.equal(connects, 1);
        } finally {
          await cleanup();
        }
      });

      it('no connect when start-up fails', async () => {
        const tableName = uniqueTable('missing');
        const store = new KnexSessionStore({ knex: backend.url(), tableName, createTable: false, cleanupInterval: 0 });
        try {
          let connects = 0;
          store.on('connect', () => {
            connects += 1;
          });
          await rejectionOf(store.ready);
          await sleep(50);
          assert.equal(connects, 0);
        } finally {
          await store.close();
        }
      });
    });
  });
}

describe('default SQLite file', () => {
  const FILE = 'connect-session-knex.sqlite';

  /** Makes an empty working directory and HOME for a child process. */
  function makeDirs() {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'csk-default-'));
    const dirs = {
      root,
      first: path.join(root, 'first'),
      second: path.join(root, 'second'),
      home: path.join(root, 'home'),
    };
    for (const dir of [dirs.first, dirs.second, dirs.home]) fs.mkdirSync(dir);
    return dirs;
  }

  function runDefault(mode, cwd, home) {
    return runNode([path.join(FIXTURES, 'default-sqlite.js'), mode], { cwd, env: childEnv({ HOME: home }) });
  }

  it('creates file in working directory', async () => {
    const dirs = makeDirs();
    try {
      const result = await runDefault('write', dirs.first, dirs.home);
      assert.equal(result.code, 0, result.stderr);
      assert.equal(fs.existsSync(path.join(dirs.first, FILE)), true);
      assert.deepEqual(fs.readdirSync(dirs.home), []);
      const raw = await backends[0].raw(`sqlite://${path.join(dirs.first, FILE)}`);
      try {
        const columns = (await raw.query(`SELECT name FROM pragma_table_info('sessions')`)).map((row) => row.name);
        assert.deepEqual(columns.sort(), ['expired', 'sess', 'sid']);
        assert.equal(await rawCount(backends[0], raw, 'sessions', 'd'), 1);
      } finally {
        await raw.close();
      }
    } finally {
      fs.rmSync(dirs.root, { recursive: true, force: true });
    }
  });

  it('keeps session across restarts', async () => {
    const dirs = makeDirs();
    try {
      const write = await runDefault('write', dirs.first, dirs.home);
      assert.equal(write.code, 0, write.stderr);
      const read = await runDefault('read', dirs.first, dirs.home);
      assert.equal(read.code, 0, read.stderr);
      const found = lastJson(read.stdout);
      assert.notEqual(found, null);
      assert.equal(found.v, 1);
    } finally {
      fs.rmSync(dirs.root, { recursive: true, force: true });
    }
  });

  it('other directory gets new file', async () => {
    const dirs = makeDirs();
    try {
      const write = await runDefault('write', dirs.first, dirs.home);
      assert.equal(write.code, 0, write.stderr);
      const read = await runDefault('read', dirs.second, dirs.home);
      assert.equal(read.code, 0, read.stderr);
      assert.equal(lastJson(read.stdout), null);
      assert.equal(fs.existsSync(path.join(dirs.second, FILE)), true);
    } finally {
      fs.rmSync(dirs.root, { recursive: true, force: true });
    }
  });
});
