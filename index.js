'use strict';
// @ts-check

const { performance } = require('node:perf_hooks');
const { Store } = require('express-session');
const { NativeStore } = require('./lib/binding');
const { fromNative, codedError, describe } = require('./lib/errors');
const { expiryOf } = require('./lib/expiry');
const { normalizeOptions, nativeOptions } = require('./lib/options');
const { log, shortSid, describeTarget, describeError, ms } = require('./lib/debug');
const { StoreStats, OP } = require('./lib/stats');

/** Maximum sid length, in characters, of the `varchar(255)` column. */
const MAX_SID_LENGTH = 255;
/** The message of ERR_STORE_CLOSED, the same as the native one. */
const CLOSED_MESSAGE = 'the store is closed: create a new store to use the database again';

const noop = () => {};

/**
 * An express-session store that keeps sessions in SQLite, PostgreSQL or MySQL/MariaDB through
 * a native (Rust) core.
 */
class KnexSessionStore extends Store {
  /** @type {any} */
  #native;
  #ttl;
  #disableTouch;
  #maxSessionBytes;
  #onError;
  /** @type {Promise<void> | undefined} */
  #closing;
  #cleanupRunning = false;
  /** @type {Map<string, Promise<unknown>>} the last write of each sid that has one in flight */
  #writing = new Map();
  /** Calls started and not yet settled, which close() lets finish. */
  #running = 0;
  /** @type {(() => void) | undefined} settles close()'s wait for running calls */
  #whenIdle;
  /** Counts a call as settled, and lets close() go on once none is running. */
  #settled = () => {
    this.#running -= 1;
    if (this.#running === 0 && this.#whenIdle !== undefined) {
      this.#whenIdle();
      this.#whenIdle = undefined;
    }
  };
  /**
   * The commit of the writes made on this thread in the current turn of the event loop, with
   * the function that settles it. Undefined when no such write is waiting.
   * @type {{ done: Promise<boolean>, settle: (committed: boolean) => void } | undefined}
   */
  #pendingCommit;
  #stats = new StoreStats();
  /** Whether the setup (connect, create or check the table) has succeeded, failed or not ended. */
  #setup = 'pending';

  /** @param {Record<string, unknown>} [options] */
  constructor(options = {}) {
    super();
    const normalized = normalizeOptions(options);
    const settings = normalized.options;
    /** The options in force, with defaults filled in and old spellings resolved. */
    this.options = settings;
    this.#ttl = settings.ttl;
    this.#disableTouch = settings.disableTouch;
    this.#maxSessionBytes = settings.maxSessionBytes;
    this.#onError = settings.onError || settings.onDbCleanupError || defaultErrorHook;

    try {
      this.#native = new NativeStore(nativeOptions(normalized));
    } catch (error) {
      throw fromNative(error);
    }
    const setupStarted = performance.now();
    if (log.enabled) logSetup(normalized);

    /** @type {NodeJS.Timeout | undefined} */
    this.nextDbCleanup = undefined;
    /**
     * Settles when the table is created or checked. A rejection reaches the code that awaits
     * it and never becomes an unhandled rejection.
     */
    this.ready = this.#native.ready().then(
      () => {
        this.#setup = 'ready';
        if (log.enabled) {
          log('ready in %s: table %s checked or created', ms(performance.now() - setupStarted), settings.tableName);
        }
        this.emit('connect');
      },
      (/** @type {unknown} */ error) => {
        const coded = fromNative(error);
        this.#setup = 'failed';
        if (log.enabled) {
          log(
            'setup failed after %s: %s; the next call retries it',
            ms(performance.now() - setupStarted),
            describeError(coded),
          );
        }
        throw coded;
      },
    );
    this.ready.catch(noop);

    const interval = settings.cleanupInterval;
    if (!settings.disableDbCleanup && interval > 0) {
      const onCleanupError = settings.onDbCleanupError || defaultErrorHook;
      this.ready.then(
        () => this.#cleanup(interval, onCleanupError),
        () => this.#scheduleCleanup(interval, onCleanupError),
      );
    }
  }

  /**
   * Returns the session stored under `sid`, or null when there is none or it has expired.
   * @param {string} sid
   * @param {(err: any, session?: any) => void} [callback]
   */
  get(sid, callback) {
    return this.#run(OP.get, sid, callback, async () => {
      checkSid(sid);
      let json = this.#native.getNow(sid);
      if (json === undefined) json = await this.#native.get(sid);
      return json === null ? null : this.#parse(json, sid);
    });
  }

  /**
   * Inserts or replaces the session stored under `sid`.
   * @param {string} sid
   * @param {any} session
   * @param {(err?: any) => void} [callback]
   */
  set(sid, session, callback) {
    return this.#run(OP.set, sid, callback, async () => {
      checkSid(sid);
      checkSession(session);
      const expires = expiryOf(session, this.#ttl, Date.now());
      const json = serialize(session);
      checkSize(json, this.#maxSessionBytes);
      await this.#inOrder(
        sid,
        () => this.#native.setNow(sid, json, expires),
        () => this.#native.set(sid, json, expires),
      );
    });
  }

  /**
   * Moves the expiry of a live session; never creates or revives one.
   * @param {string} sid
   * @param {any} session
   * @param {(err?: any) => void} [callback]
   */
  touch(sid, session, callback) {
    return this.#run(OP.touch, sid, callback, async () => {
      checkSid(sid);
      checkSession(session);
      if (this.#disableTouch) return;
      const expires = expiryOf(session, this.#ttl, Date.now());
      await this.#inOrder(
        sid,
        () => this.#native.touchNow(sid, expires),
        () => this.#native.touch(sid, expires),
      );
    });
  }

  /**
   * Deletes the session stored under `sid`; resolves with the number of rows deleted.
   * @param {string} sid
   * @param {(err?: any, deleted?: number) => void} [callback]
   */
  destroy(sid, callback) {
    return this.#run(OP.destroy, sid, callback, async () => {
      checkSid(sid);
      return this.#inOrder(
        sid,
        () => this.#native.destroyNow(sid),
        () => this.#native.destroy(sid),
      );
    });
  }

  /**
   * Returns every live session, as an array.
   * @param {(err: any, sessions?: any[]) => void} [callback]
   */
  all(callback) {
    return this.#run(OP.all, undefined, callback, async () => {
      const rows = await this.#native.all();
      const sessions = [];
      for (const json of rows) {
        const session = this.#parse(json);
        if (session !== null) sessions.push(session);
      }
      return sessions;
    });
  }

  /**
   * Counts live sessions.
   * @param {(err: any, length?: number) => void} [callback]
   */
  length(callback) {
    return this.#run(OP.length, undefined, callback, () => this.#native.length());
  }

  /**
   * Deletes every session; resolves with the number of rows deleted.
   * @param {(err?: any, deleted?: number) => void} [callback]
   */
  clear(callback) {
    return this.#run(OP.clear, undefined, callback, () => this.#native.clear());
  }

  /**
   * Stops the cleanup and closes the connection pool. Calling it again returns the same promise.
   * @param {(err?: any) => void} [callback]
   */
  close(callback) {
    this.stopDbCleanup();
    if (!this.#closing) {
      // Calls started before close() finish, and those started after it fail, whatever
      // order their native tasks run in.
      const idle =
        this.#running === 0
          ? Promise.resolve()
          : new Promise((resolve) => {
              this.#whenIdle = () => resolve(undefined);
            });
      this.#closing = idle.then(() => {
        // Writes made on this thread are committed before the connections close.
        this.#commitNow();
        if (log.enabled) log('closing the pool');
        return this.#native.close();
      });
      if (log.enabled) this.#closing.then(() => log('closed'), noop);
    }
    const closing = this.#closing;
    return this.#run(-1, undefined, callback, () => closing);
  }

  /**
   * Returns counts and latencies of the calls since the store was made, the rows the cleanup
   * removed, and the connections of the pool. Cheap: it copies counters and reads no database.
   */
  stats() {
    return this.#stats.snapshot(this.#native.poolStats());
  }

  /** Stops the periodic deletion of expired sessions (connect-session-knex 1.x-4.x). */
  stopDbCleanup() {
    clearTimeout(this.nextDbCleanup);
    this.nextDbCleanup = undefined;
    this.#cleanupRunning = false;
  }

  /** Returns the timer of the next cleanup, if one is scheduled (connect-session-knex 1.x-4.x). */
  getNextDbCleanup() {
    return this.nextDbCleanup;
  }

  /**
   * Runs `work` and settles the call: with a callback, calls it exactly once on a later tick
   * and returns a promise that never rejects; without one, returns a promise that rejects on
   * error. Counts the call in stats() as operation `op` (none when -1).
   * @template T
   * @param {number} op
   * @param {string | undefined} sid  for the debug log
   * @param {Function | undefined} callback
   * @param {() => Promise<T> | T} work
   * @returns {Promise<T | undefined>}
   */
  #run(op, sid, callback, work) {
    const started = performance.now();
    const closed = op >= 0 && this.#closing !== undefined;
    const counted = op >= 0 && !closed;
    if (counted) this.#running += 1;
    const promise = (async () => {
      let value;
      try {
        if (closed) throw codedError('ERR_STORE_CLOSED', CLOSED_MESSAGE);
        value = await work();
      } catch (error) {
        const coded = fromNative(error);
        if (op >= 0) {
          const took = performance.now() - started;
          this.#stats.record(op, took, coded);
          if (log.enabled) logCall(op, sid, took, undefined, coded, this.#setup === 'failed');
        }
        throw coded;
      }
      if (op >= 0) {
        const took = performance.now() - started;
        this.#stats.record(op, took);
        // A touch under disableTouch does not reach the database, so it proves nothing.
        if (this.#setup === 'failed' && !(op === OP.touch && this.#disableTouch)) this.#setupRecovered(OP_NAMES[op]);
        if (log.enabled) logCall(op, sid, took, value, undefined);
      }
      return value;
    })();
    if (counted) promise.then(this.#settled, this.#settled);
    if (typeof callback !== 'function') return promise;
    return promise.then(
      (value) => {
        process.nextTick(callback, null, value);
        return value;
      },
      (error) => {
        process.nextTick(callback, error);
        return undefined;
      },
    );
  }

  /**
   * Runs a write of `sid` once the previous write of it, if any, has settled. Each native call
   * runs as its own task, so two writes of one sid started together could otherwise reach the
   * database in either order, and a logout could lose to the save before it. `now` is the
   * form run on this thread (null when it cannot be), `write` the async form.
   * @template T
   * @param {string} sid
   * @param {() => T | null} now
   * @param {() => Promise<T>} write
   * @returns {Promise<T>}
   */
  #inOrder(sid, now, write) {
    const previous = this.#writing.get(sid);
    const attempt = () => {
      const rows = now();
      if (rows === null) return write();
      return this.#committed().then((committed) => (committed ? rows : write()));
    };
    const result = previous === undefined ? attempt() : previous.then(attempt, attempt);
    const settled = result.then(noop, noop);
    this.#writing.set(sid, settled);
    settled.then(() => {
      if (this.#writing.get(sid) === settled) this.#writing.delete(sid);
    });
    return result;
  }

  /**
   * Returns a promise of the commit of the writes made on this thread, which runs once the
   * current turn of the event loop is over, so the writes of one turn share one transaction.
   * @returns {Promise<boolean>}
   */
  #committed() {
    if (this.#pendingCommit === undefined) {
      /** @type {(committed: boolean) => void} */
      let settle = noop;
      const done = new Promise((resolve) => {
        settle = resolve;
      });
      this.#pendingCommit = { done, settle };
      setImmediate(() => this.#commitNow());
    }
    return this.#pendingCommit.done;
  }

  /** Commits the writes made on this thread, if any, and settles their promise. */
  #commitNow() {
    const pending = this.#pendingCommit;
    if (pending === undefined) return;
    this.#pendingCommit = undefined;
    let committed = false;
    try {
      committed = this.#native.commitNow();
    } catch {
      // Left to the async forms, which run the writes again and report any error.
    }
    pending.settle(committed);
  }

  /**
   * Parses a stored session. A row that is not a JSON object is reported through `onError`
   * and read as no session.
   * @param {string} json
   * @param {string} [sid] the sid of the row, when the caller knows it
   */
  #parse(json, sid) {
    let session;
    let cause;
    try {
      session = JSON.parse(json);
    } catch (error) {
      cause = error;
    }
    if (cause === undefined && session !== null && typeof session === 'object' && !Array.isArray(session)) {
      return session;
    }
    const row = sid === undefined ? 'a stored session' : `stored session ${shortSid(sid)}`;
    const problem = cause === undefined ? 'is JSON but not an object' : 'is not valid JSON';
    const error = codedError(
      'ERR_CORRUPT_SESSION',
      `${row} in table "${this.options.tableName}" ${problem} and was treated as missing: delete the row or fix its sess column`,
      Error,
      cause,
    );
    this.#report(error);
    return null;
  }

  /** Notes that a call succeeded after the setup had failed, so its retry of the setup worked. */
  #setupRecovered(/** @type {string} */ caller) {
    this.#setup = 'ready';
    if (log.enabled) log('setup retried by %s and succeeded: the store is ready', caller);
    // Code that awaits `ready` from now on, such as a health check, sees that the store works.
    this.ready = Promise.resolve();
    this.emit('connect');
  }

  #report(/** @type {unknown} */ error) {
    if (log.enabled) log('reporting to onError: %s', describeError(error));
    try {
      this.#onError(error);
    } catch (hookError) {
      process.nextTick(() => {
        throw hookError;
      });
    }
  }

  /**
   * @param {number} interval
   * @param {(error: unknown) => void} onCleanupError
   */
  async #cleanup(interval, onCleanupError) {
    if (this.#closing) return;
    this.#cleanupRunning = true;
    const started = performance.now();
    try {
      const rows = await this.#native.deleteExpired();
      this.#stats.recordCleanup(rows, false);
      if (this.#setup === 'failed') this.#setupRecovered('the cleanup');
      if (log.enabled) log('cleanup removed %s in %s', plural(rows, 'expired row'), ms(performance.now() - started));
    } catch (error) {
      if (!this.#closing) {
        const coded = fromNative(error);
        this.#stats.recordCleanup(0, true);
        if (log.enabled) log('cleanup failed after %s: %s', ms(performance.now() - started), describeError(coded));
        try {
          onCleanupError(coded);
        } catch (hookError) {
          process.nextTick(() => {
            throw hookError;
          });
        }
      }
    }
    if (this.#cleanupRunning) this.#scheduleCleanup(interval, onCleanupError);
  }

  /**
   * Schedules the next cleanup after `interval` ms give or take 10%, so that app instances
   * sharing one table do not all delete at the same moment.
   * @param {number} interval
   * @param {(error: unknown) => void} onCleanupError
   */
  #scheduleCleanup(interval, onCleanupError) {
    if (this.#closing) return;
    this.#cleanupRunning = true;
    const delay = Math.max(1, Math.round(interval * (0.9 + Math.random() * 0.2)));
    this.nextDbCleanup = setTimeout(() => this.#cleanup(interval, onCleanupError), delay).unref();
  }
}

const OP_NAMES = Object.keys(OP);

function plural(/** @type {number} */ count, /** @type {string} */ noun) {
  return `${count} ${noun}${count === 1 ? '' : 's'}`;
}

/**
 * Logs the settings of a new store, without the password.
 * @param {ReturnType<typeof normalizeOptions>} normalized
 */
function logSetup({ options, connection, pool }) {
  const cleanup =
    options.disableDbCleanup || options.cleanupInterval === 0 ? 'off' : `every ${options.cleanupInterval} ms`;
  const poolText = Object.keys(pool).length
    ? Object.entries(pool)
        .map(([key, value]) => `${key} ${value}`)
        .join(', ')
    : 'defaults';
  log(
    'set up %s, table %s (sid column %s, createTable %s), cleanup %s, pool %s, queryTimeoutMillis %d',
    describeTarget(connection),
    options.tableName,
    options.sidFieldName,
    options.createTable,
    cleanup,
    poolText,
    options.queryTimeoutMillis,
  );
}

/**
 * Logs one call: its operation, the start of its sid, its result or error and its duration.
 * @param {number} op
 * @param {string | undefined} sid
 * @param {number} took
 * @param {unknown} value
 * @param {unknown} error
 * @param {boolean} [setupFailed]  whether the call retried a setup that had failed
 */
function logCall(op, sid, took, value, error, setupFailed = false) {
  const name = OP_NAMES[op];
  const subject = op <= OP.destroy ? `${name} ${shortSid(sid)}` : name;
  if (error !== undefined) {
    log('%s failed in %s%s: %s', subject, ms(took), setupFailed ? ' (retrying the setup)' : '', describeError(error));
    return;
  }
  let result;
  if (op === OP.get) result = value === null ? 'no session' : 'found';
  else if (op === OP.destroy || op === OP.clear) result = `${plural(Number(value), 'row')} deleted`;
  else if (op === OP.all) result = plural(/** @type {unknown[]} */ (value).length, 'session');
  else if (op === OP.length) result = plural(Number(value), 'live session');
  else result = 'ok';
  log('%s: %s in %s', subject, result, ms(took));
}

function defaultErrorHook(/** @type {unknown} */ error) {
  console.error(error);
}

/** @param {unknown} sid */
function checkSid(sid) {
  if (typeof sid !== 'string' || sid.length === 0) {
    throw codedError('ERR_INVALID_ARGUMENT', `sid must be a non-empty string, got ${describe(sid)}`, TypeError);
  }
  if (sid.length > MAX_SID_LENGTH && [...sid].length > MAX_SID_LENGTH) {
    throw codedError(
      'ERR_INVALID_ARGUMENT',
      `sid is ${[...sid].length} characters long, more than the ${MAX_SID_LENGTH} the sid column holds`,
      RangeError,
    );
  }
  if (sid.includes('\0')) {
    throw codedError('ERR_INVALID_ARGUMENT', 'sid must not contain NUL characters', TypeError);
  }
  // The addon receives strings as UTF-8, where every lone surrogate becomes U+FFFD, so
  // 'x\uD800' and 'x\uDBFF' would name one session.
  if (!sid.isWellFormed()) {
    throw codedError(
      'ERR_INVALID_ARGUMENT',
      'sid must not contain lone surrogates (UTF-16 halves without their pair)',
      TypeError,
    );
  }
}

/** @param {unknown} session */
function checkSession(session) {
  if (session === null || typeof session !== 'object' || Array.isArray(session)) {
    throw codedError('ERR_INVALID_ARGUMENT', `session must be an object, got ${describe(session)}`, TypeError);
  }
}

/**
 * Serialises a session exactly as JSON.stringify does, so Cookie getters and toJSON apply.
 * @param {object} session
 */
function serialize(session) {
  try {
    return JSON.stringify(session);
  } catch (cause) {
    const reason = cause instanceof Error ? cause.message.split('\n')[0] : String(cause);
    throw codedError(
      'ERR_SESSION_NOT_SERIALIZABLE',
      `session cannot be stored because JSON.stringify failed (${reason}): remove cycles and BigInt values from it`,
      TypeError,
      cause,
    );
  }
}

/**
 * Rejects a serialised session larger than `limit` bytes of UTF-8; 0 means no limit.
 * @param {string} json
 * @param {number} limit
 */
function checkSize(json, limit) {
  // A UTF-16 unit takes at most 3 bytes in UTF-8, so short strings skip the byte count.
  if (limit === 0 || json.length * 3 <= limit) return;
  const bytes = Buffer.byteLength(json, 'utf8');
  if (bytes > limit) {
    throw codedError(
      'ERR_SESSION_TOO_LARGE',
      `session is ${bytes} bytes as JSON, more than maxSessionBytes (${limit}): store less in it or raise the option`,
      RangeError,
    );
  }
}

/**
 * The 1.x-4.x form: `require('connect-session-knex')(session)` returns the store class.
 * @param {unknown} [_session]
 */
function connectSessionKnex(_session) {
  return KnexSessionStore;
}

module.exports = connectSessionKnex;
// Marks the exports as an ES module's, so that TypeScript's and bundlers' default import
// (`import KnexSessionStore from 'connect-session-knex'`) is the class, as in index.mjs.
Object.defineProperty(module.exports, '__esModule', { value: true });
module.exports.KnexSessionStore = KnexSessionStore;
module.exports.ConnectSessionKnexStore = KnexSessionStore;
module.exports.default = KnexSessionStore;
