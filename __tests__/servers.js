'use strict';

// Private, throwaway PostgreSQL 15 and MariaDB servers for the fault tests, so that stopping,
// restarting or reconfiguring a server never touches the shared ones other people test against.
// Each server listens on 127.0.0.1 only, on a port that was free a moment ago, and keeps its data
// directory under one fresh folder in /tmp. Every process is stopped by its own pid: by `stop()`,
// by `cleanup()`, and as a last resort when this process exits or is interrupted, with SIGQUIT
// (PostgreSQL's immediate shutdown) or SIGKILL (MariaDB).
const { spawn, execFileSync } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');

const PG_BIN = '/usr/lib/postgresql/15/bin';
const MARIADB_INSTALL = '/usr/bin/mariadb-install-db';
const MARIADBD = '/usr/sbin/mariadbd';

/** Lenient bound for a server to accept logins after it was started. */
const START_BOUND_MS = 30000;
/** Lenient bound for a server to exit after the shutdown signal, before it gets SIGKILL. */
const STOP_BOUND_MS = 15000;

/** @type {string | undefined} */
let root;

/** Every server process still running: its pid, and the signal that ends it at once. */
const running = new Map();

/** Ends every server process still running, by pid, without waiting for it to exit. */
function killRunning() {
  for (const [pid, signal] of running) {
    try {
      process.kill(pid, 'SIGCONT');
      process.kill(pid, signal);
    } catch {
      // The process has already gone.
    }
  }
  running.clear();
}

process.on('exit', killRunning);
// An interrupted run ends the servers and removes its /tmp folder too, then dies of the same
// signal as it would have.
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    killRunning();
    if (root !== undefined) {
      try {
        fs.rmSync(root, { recursive: true, force: true, maxRetries: 3 });
      } catch {
        // A server still exiting may write into the folder; it is left for /tmp cleanup.
      }
    }
    process.kill(process.pid, signal);
  });
}

/** @type {Set<PrivateServer>} */
const servers = new Set();

/** Returns the folder under /tmp that contains every data directory and SQLite file of this run. */
function tmpRoot() {
  if (root === undefined) {
    root = fs.mkdtempSync('/tmp/csk-fault-');
    // The server processes run as their own OS users and must reach their directories inside.
    fs.chmodSync(root, 0o755);
  }
  return root;
}

/** Returns a new empty folder under the run's /tmp folder. */
function tmpDir(name) {
  return fs.mkdtempSync(path.join(tmpRoot(), `${name}-`));
}

/** Lists the binaries a server kind needs that are not installed. */
function missingBinaries(kind) {
  const needed =
    kind === 'postgres' ? [path.join(PG_BIN, 'initdb'), path.join(PG_BIN, 'postgres')] : [MARIADB_INSTALL, MARIADBD];
  return needed.filter((file) => !fs.existsSync(file));
}

/** Returns the uid and gid of an OS user when this process runs as root, else undefined. */
function osUser(name) {
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) return undefined;
  const uid = Number(execFileSync('id', ['-u', name], { encoding: 'utf8' }).trim());
  const gid = Number(execFileSync('id', ['-g', name], { encoding: 'utf8' }).trim());
  return { uid, gid };
}

/** Returns a TCP port on 127.0.0.1 that was free a moment ago. */
async function freePort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = /** @type {net.AddressInfo} */ (server.address());
  await new Promise((resolve) => server.close(resolve));
  return port;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Tells whether every thread of a process is stopped, as /proc shows it. Returns true where
 * /proc cannot be read, so the caller's wait ends early.
 */
function allThreadsStopped(pid) {
  try {
    return fs.readdirSync(`/proc/${pid}/task`).every((thread) => {
      const stat = fs.readFileSync(`/proc/${pid}/task/${thread}/stat`, 'utf8');
      // The state letter follows the command name, which is in brackets and may contain spaces.
      const state = stat.slice(stat.lastIndexOf(')') + 2)[0];
      return state === 'T' || state === 't';
    });
  } catch {
    return true;
  }
}

/** Returns the last lines of a log file, for error messages. */
function logTail(file, lines = 15) {
  try {
    return fs.readFileSync(file, 'utf8').trim().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

/**
 * @typedef {object} Raw
 * @property {(sql: string, params?: unknown[]) => Promise<any[]>} query  rows as objects; `?` marks parameters
 * @property {() => Promise<void>} close
 * @property {unknown[]} errors  errors the connection emitted on its own, such as a server shutdown
 */

/** One server process that can be stopped and started again on the same port and data. */
class PrivateServer {
  /**
   * @param {object} spec
   * @param {'postgres' | 'mariadb'} spec.kind
   * @param {number} spec.port
   * @param {string} spec.url  URL the store and the raw clients connect to
   * @param {string} spec.logFile
   * @param {string} spec.command
   * @param {string[]} spec.args
   * @param {{ uid: number, gid: number } | undefined} spec.user
   * @param {string} spec.stopSignal  the signal that makes the server shut down cleanly
   * @param {string} spec.crashSignal  the signal that ends the server at once, without a shutdown checkpoint
   * @param {(database?: string) => Promise<Raw>} spec.connect
   */
  constructor(spec) {
    this.kind = spec.kind;
    this.port = spec.port;
    this.url = spec.url;
    this.logFile = spec.logFile;
    this.spec = spec;
    /** @type {import('node:child_process').ChildProcess | undefined} */
    this.child = undefined;
    /** @type {Promise<void> | undefined} */
    this.exited = undefined;
  }

  /** The pid of the running server process, or undefined while it is stopped. */
  get pid() {
    return this.child ? this.child.pid : undefined;
  }

  /** Starts the server and resolves once it accepts logins. */
  async start() {
    if (this.child) return;
    const log = fs.openSync(this.logFile, 'a');
    const child = spawn(this.spec.command, this.spec.args, {
      stdio: ['ignore', log, log],
      ...(this.spec.user || {}),
    });
    fs.closeSync(log);
    this.child = child;
    running.set(child.pid, this.spec.crashSignal);
    let exitCode;
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        exitCode = code === null ? signal : code;
        running.delete(child.pid);
        if (this.child === child) this.child = undefined;
        resolve();
      });
    });

    const deadline = Date.now() + START_BOUND_MS;
    let lastError;
    while (Date.now() < deadline) {
      if (exitCode !== undefined) {
        throw new Error(`${this.kind} exited with ${exitCode} while starting:\n${logTail(this.logFile)}`);
      }
      try {
        const raw = await this.spec.connect(this.kind === 'postgres' ? 'postgres' : '');
        await raw.close();
        return;
      } catch (error) {
        lastError = error;
        await sleep(100);
      }
    }
    await this.stop();
    throw new Error(
      `${this.kind} did not accept logins within ${START_BOUND_MS} ms (${lastError}):\n${logTail(this.logFile)}`,
    );
  }

  /** Shuts the server down cleanly, as an administrator restarting it would, and waits for it to exit. */
  stop() {
    return this.#signalAndWait(this.spec.stopSignal);
  }

  /** Ends the server as a crash would, so the next start recovers from its log, and waits for it to exit. */
  crash() {
    return this.#signalAndWait(this.spec.crashSignal);
  }

  /**
   * Suspends the server process with SIGSTOP, so it accepts TCP connections but sends nothing,
   * and resolves once every thread of it has stopped. On PostgreSQL this suspends only the
   * postmaster, and existing sessions keep running queries.
   */
  async freeze() {
    if (!this.child) return;
    const pid = this.child.pid;
    process.kill(pid, 'SIGSTOP');
    const deadline = Date.now() + 2000;
    while (!allThreadsStopped(pid) && Date.now() < deadline) await sleep(5);
  }

  /** Resumes a server suspended by `freeze`. */
  thaw() {
    if (this.child) process.kill(this.child.pid, 'SIGCONT');
  }

  async #signalAndWait(signal) {
    const child = this.child;
    if (!child) return;
    // A suspended process acts on no signal but SIGKILL until it is resumed.
    process.kill(child.pid, 'SIGCONT');
    process.kill(child.pid, signal);
    let timer;
    const bound = new Promise((resolve) => {
      timer = setTimeout(resolve, STOP_BOUND_MS, 'timeout');
    });
    const outcome = await Promise.race([this.exited, bound]);
    clearTimeout(timer);
    if (outcome === 'timeout') {
      process.kill(child.pid, 'SIGKILL');
      await this.exited;
    }
  }

  /** Stops the server and starts it again on the same port and data directory. */
  async restart() {
    await this.stop();
    await this.start();
  }

  /**
   * Opens a raw connection outside the store.
   * @param {string} [database]
   */
  raw(database) {
    return this.spec.connect(database);
  }
}

/**
 * Creates, starts and returns a private PostgreSQL 15 server with a `test` database. The
 * superuser `postgres` logs in without a password from 127.0.0.1.
 */
async function startPostgres() {
  const dir = tmpDir('pg');
  const data = path.join(dir, 'data');
  const user = osUser('postgres');
  if (user) fs.chownSync(dir, user.uid, user.gid);
  // initdb and postgres refuse to run as root, so both run as the postgres OS user.
  execFileSync(
    path.join(PG_BIN, 'initdb'),
    ['-A', 'trust', '-U', 'postgres', '-N', '-E', 'UTF8', '--locale=C', '-D', data],
    { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'], ...(user || {}) },
  );

  const port = await freePort();
  const connect = (database = 'test') => connectPostgres(port, database);
  const server = new PrivateServer({
    kind: 'postgres',
    port,
    url: `postgres://postgres@127.0.0.1:${port}/test`,
    logFile: path.join(dir, 'server.log'),
    command: path.join(PG_BIN, 'postgres'),
    args: [
      '-D',
      data,
      '-p',
      String(port),
      '-c',
      'listen_addresses=127.0.0.1',
      '-c',
      `unix_socket_directories=${dir}`,
      '-c',
      'fsync=off',
      '-c',
      'full_page_writes=off',
      '-c',
      'shared_buffers=16MB',
    ],
    user,
    // SIGINT is PostgreSQL's fast shutdown: it ends every session and checkpoints. SIGQUIT is
    // its immediate shutdown: the postmaster ends its children and exits, and the next start
    // replays the WAL as after a crash.
    stopSignal: 'SIGINT',
    crashSignal: 'SIGQUIT',
    connect,
  });
  servers.add(server);
  await server.start();

  const raw = await connect('postgres');
  await raw.query('CREATE DATABASE test');
  await raw.close();
  return server;
}

/** Opens a raw node-postgres connection to a private server. */
async function connectPostgres(port, database) {
  const { Client } = require('pg');
  const client = new Client({ host: '127.0.0.1', port, user: 'postgres', database });
  const errors = [];
  client.on('error', (error) => errors.push(error));
  await client.connect();
  return {
    errors,
    query: async (sql, params = []) => {
      let index = 0;
      const text = sql.replace(/\?/g, () => `$${++index}`);
      return (await client.query(text, params)).rows;
    },
    close: () => client.end(),
  };
}

/**
 * Creates, starts and returns a private MariaDB server with a `test` database. `root` logs in
 * without a password from 127.0.0.1.
 */
async function startMariadb() {
  const dir = tmpDir('mariadb');
  const data = path.join(dir, 'data');
  const user = osUser('mysql');
  if (user) fs.chownSync(dir, user.uid, user.gid);
  const installArgs = [
    '--no-defaults',
    `--datadir=${data}`,
    '--auth-root-authentication-method=normal',
    '--skip-test-db',
    '--skip-name-resolve',
  ];
  if (user) installArgs.push('--user=mysql');
  execFileSync(MARIADB_INSTALL, installArgs, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });

  const port = await freePort();
  const connect = (database = 'test') => connectMariadb(port, database);
  const server = new PrivateServer({
    kind: 'mariadb',
    port,
    url: `mysql://root@127.0.0.1:${port}/test`,
    logFile: path.join(dir, 'server.log'),
    command: MARIADBD,
    args: [
      '--no-defaults',
      `--datadir=${data}`,
      `--port=${port}`,
      '--bind-address=127.0.0.1',
      `--socket=${path.join(dir, 'mariadb.sock')}`,
      `--pid-file=${path.join(dir, 'mariadb.pid')}`,
      `--log-error=${path.join(dir, 'server.log')}`,
      '--skip-name-resolve',
      '--skip-log-bin',
      '--innodb-buffer-pool-size=32M',
      '--innodb-log-file-size=16M',
    ],
    // Started as the mysql OS user directly, so the pid is the server's own from the start.
    user,
    stopSignal: 'SIGTERM',
    crashSignal: 'SIGKILL',
    connect,
  });
  servers.add(server);
  await server.start();

  const raw = await connect('');
  await raw.query('CREATE DATABASE test');
  await raw.close();
  return server;
}

/** Opens a raw mysql2 connection to a private server. An empty database name selects none. */
async function connectMariadb(port, database) {
  const mysql = require('mysql2/promise');
  const conn = await mysql.createConnection({
    host: '127.0.0.1',
    port,
    user: 'root',
    database: database || undefined,
    timezone: 'Z',
  });
  const errors = [];
  conn.on('error', (error) => errors.push(error));
  return {
    errors,
    query: async (sql, params = []) => {
      const [rows] = await conn.query(sql, params);
      return Array.isArray(rows) ? rows : [];
    },
    close: () => conn.end(),
  };
}

/** Stops every server this module started, by pid, and deletes the run's /tmp folder. */
async function cleanup() {
  for (const server of servers) await server.stop();
  servers.clear();
  if (root !== undefined) {
    fs.rmSync(root, { recursive: true, force: true });
    root = undefined;
  }
}

module.exports = { startPostgres, startMariadb, missingBinaries, tmpDir, cleanup };
