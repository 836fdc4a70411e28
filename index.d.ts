// Types of connect-session-knex for `require` (CommonJS). index.d.mts re-exports them for `import`.
//
//   const { KnexSessionStore } = require('connect-session-knex');
//   const KnexSessionStore = require('connect-session-knex')(session); // 1.x-4.x form
//   import { KnexSessionStore } from 'connect-session-knex';
//   import KnexSessionStore from 'connect-session-knex';
import { SessionData, Store } from 'express-session';

/**
 * The 1.x-4.x form: `require('connect-session-knex')(session)` returns the store class. The
 * argument (express-session's module) is accepted and not used.
 */
declare function connectSessionKnex(session?: unknown): typeof connectSessionKnex.KnexSessionStore;

declare namespace connectSessionKnex {
  /** Stable codes of the errors the store raises, in `error.code`. */
  export type KnexSessionStoreErrorCode =
    /** An option name the store does not know (`TypeError`). */
    | 'ERR_UNKNOWN_OPTION'
    /** An option of the wrong type or out of range (`TypeError`). */
    | 'ERR_INVALID_OPTION'
    /** A URL that cannot be parsed or has another scheme. Its password is masked in the message. */
    | 'ERR_INVALID_URL'
    /** A knex client other than the supported ones, such as `mssql`. */
    | 'ERR_UNSUPPORTED_CLIENT'
    /** `tableName` or `sidFieldName` with characters other than letters, digits, `_`, `$`, `-`. */
    | 'ERR_INVALID_IDENTIFIER'
    /** A sid that is not a non-empty string of at most 255 characters, a session that is not an object, a cookie expiry that is not a date. */
    | 'ERR_INVALID_ARGUMENT'
    /** `JSON.stringify` failed on the session (a cycle, a BigInt), so nothing is written (`TypeError`). */
    | 'ERR_SESSION_NOT_SERIALIZABLE'
    /** The table does not exist and `createTable` is `false`. */
    | 'ERR_TABLE_MISSING'
    /** The table lacks the sid, `sess` or `expired` column. */
    | 'ERR_TABLE_UNUSABLE'
    /** The database cannot be reached or refused the login. */
    | 'ERR_CONNECTION_FAILED'
    /** The connection broke while a statement ran (server restart, killed backend). The next call uses a new connection. */
    | 'ERR_CONNECTION_LOST'
    /** No connection became free within `pool.acquireTimeoutMillis`. */
    | 'ERR_POOL_TIMEOUT'
    /**
     * A call took longer than `queryTimeoutMillis`, or the server ended its statement at the
     * limits the store sets from it (a row lock held by another client, say).
     */
    | 'ERR_QUERY_TIMEOUT'
    /** The session's JSON is larger than `maxSessionBytes`, so nothing is written (`RangeError`). */
    | 'ERR_SESSION_TOO_LARGE'
    /** MySQL/MariaDB: a stored sid equals this one under a case- or space-insensitive collation. */
    | 'ERR_SID_CONFLICT'
    /** A call after `close()`. */
    | 'ERR_STORE_CLOSED'
    /** A stored row is not valid JSON. `get` returns `null` and `onError` receives this error. */
    | 'ERR_CORRUPT_SESSION'
    /** Any other error of the database; the message ends with the driver's own message. */
    | 'ERR_DATABASE'
    /** The native addon was not built for this platform (thrown by `require`). */
    | 'ERR_ADDON_MISSING';

  /** An error raised by the store. Its `message` names the value and the fix. */
  export interface KnexSessionStoreError extends Error {
    code: KnexSessionStoreErrorCode;
    /** The error behind this one where JS raised it: the TypeError of `JSON.stringify` or the SyntaxError of `JSON.parse`. */
    cause?: unknown;
  }

  /** The parts of a knex configuration the store reads. knex itself is not needed. */
  export interface KnexConfig {
    /** knex client name: pg, postgres, postgresql, pgnative, mysql, mysql2, mariadb, sqlite3, sqlite or better-sqlite3. */
    client: string | Function;
    /** Connection URL or fields, or a function returning either synchronously (not a promise). */
    connection?: string | KnexConnection | (() => string | KnexConnection);
    /** PostgreSQL schema search path. */
    searchPath?: string | string[];
    /** knex pool settings. `min` and `max` are used when the store's own `pool` option is absent. */
    pool?: { min?: number; max?: number; [key: string]: unknown };
    [key: string]: unknown;
  }

  /** Connection fields of a knex config. */
  export interface KnexConnection {
    host?: string;
    /** TCP port, 1 to 65535. */
    port?: number | string;
    user?: string;
    password?: string;
    database?: string;
    /** SQLite file, or `:memory:`. */
    filename?: string;
    /** Unix socket of the server. */
    socketPath?: string;
    /** PostgreSQL-style connection URL, which wins over the other fields. */
    connectionString?: string;
    /**
     * TLS: `true` verifies the server certificate, `{ rejectUnauthorized: false }` encrypts
     * without verifying, `false` turns TLS off, and a string is a TLS mode (`disable`, `prefer`, `require`,
     * `verify-ca`, `verify-full`).
     */
    ssl?: boolean | string | { rejectUnauthorized?: boolean; [key: string]: unknown };
    [key: string]: unknown;
  }

  /** A knex instance: only `client.config` (and `client.dialect`) is read. */
  export interface KnexLike {
    client: { config: KnexConfig; dialect?: string };
  }

  /** The store's own connection pool. */
  export interface PoolOptions {
    /** Maximum number of connections, 1 to 1000. Default `10`, and on SQLite `4` readers beside a single writer. */
    max?: number;
    /** Connections kept open while idle, 0 to 1000 and at most `max`. Default `0`. */
    min?: number;
    /** Milliseconds to wait for a free connection before `ERR_POOL_TIMEOUT`. Default `10000`. */
    acquireTimeoutMillis?: number;
    /** Milliseconds before an idle connection is closed. Default `600000` (10 minutes). */
    idleTimeoutMillis?: number;
  }

  export interface KnexSessionStoreOptions {
    /**
     * Where sessions live: a knex instance, a knex config object, or a URL (`sqlite://path`,
     * `sqlite::memory:`, `postgres://...`, `mysql://...`, `mariadb://...`).
     * Default: the SQLite file `connect-session-knex.sqlite` in the working directory.
     */
    knex?: KnexLike | KnexConfig | string;
    /** Table name; `schema.table` on PostgreSQL. Default `'sessions'`. */
    tableName?: string;
    /** @deprecated Spelling of 1.x-4.x. Use `tableName`, which wins when both are given. */
    tablename?: string;
    /** Name of the session id column. Default `'sid'`. */
    sidFieldName?: string;
    /** @deprecated Spelling of 1.x-4.x. Use `sidFieldName`, which wins when both are given. */
    sidfieldname?: string;
    /**
     * Create the table and its expiry index when missing. When `false`, calls fail with
     * `ERR_TABLE_MISSING` while the table is missing. Default `true`.
     */
    createTable?: boolean;
    /** @deprecated Spelling of 1.x-4.x. Use `createTable`, which wins when both are given. */
    createtable?: boolean;
    /**
     * Milliseconds between deletions of expired rows, give or take 10%. An integer from 0 to
     * 2147483647, where `0` turns the cleanup off. Default `60000` (one minute).
     */
    cleanupInterval?: number;
    /** @deprecated Spelling of 1.x-4.x. Use `cleanupInterval`. As there, `0` turns the cleanup off. */
    clearInterval?: number;
    /** Turn the cleanup off. Default `false`. */
    disableDbCleanup?: boolean;
    /** Called with errors of the background cleanup. Default `console.error`. */
    onDbCleanupError?: (error: KnexSessionStoreError) => void;
    /**
     * Called with errors that no caller receives, such as a stored row that is not JSON
     * (`ERR_CORRUPT_SESSION`). Default: `onDbCleanupError`, else `console.error`.
     */
    onError?: (error: KnexSessionStoreError) => void;
    /** Milliseconds a session lives when its cookie carries no expiry, an integer of at least 1. Default `86400000` (one day). */
    ttl?: number;
    /** Make `touch` a no-op. Default `false`. */
    disableTouch?: boolean;
    /**
     * Maximum size of a session, in bytes of its JSON (UTF-8). A larger one fails with
     * `ERR_SESSION_TOO_LARGE`. `0` turns the check off. Default `1048576` (1 MiB).
     */
    maxSessionBytes?: number;
    /**
     * Maximum time one call may take, in milliseconds, waiting for a connection included. A
     * slower call fails with `ERR_QUERY_TIMEOUT`. On PostgreSQL and MySQL/MariaDB the server's
     * statement time limit is set to it and its row-lock wait limit to a quarter of it. An
     * integer from 1 to 4294967295. Default `15000`.
     */
    queryTimeoutMillis?: number;
    /** The connection pool. knex's `pool: { min, max }` is used when this is absent. */
    pool?: PoolOptions;
  }

  /** `store.options`: the options in force, with defaults filled in and old spellings resolved. */
  export interface KnexSessionStoreResolvedOptions {
    knex?: KnexLike | KnexConfig | string;
    tableName: string;
    sidFieldName: string;
    createTable: boolean;
    cleanupInterval: number;
    disableDbCleanup: boolean;
    onDbCleanupError?: (error: KnexSessionStoreError) => void;
    onError?: (error: KnexSessionStoreError) => void;
    ttl: number;
    disableTouch: boolean;
    maxSessionBytes: number;
    queryTimeoutMillis: number;
    pool?: PoolOptions;
  }

  /** Latencies of one operation, in milliseconds, since the store was made. */
  export interface LatencyStats {
    mean: number;
    /** Median. Quantiles are the top of a log-scale bucket, at most 12.5% above the true value. */
    p50: number;
    p90: number;
    p99: number;
    max: number;
  }

  /** Counts and latencies of one operation. */
  export interface OperationStats {
    /** Calls that succeeded. */
    ok: number;
    /** Calls that failed, in every form (rejected promise or error to the callback). */
    errors: number;
    /** Failed calls by error code, with `uncoded` for errors without one. */
    errorCodes: Partial<Record<KnexSessionStoreErrorCode | 'uncoded', number>>;
    /** All zero until the first call. */
    latencyMs: LatencyStats;
  }

  /** What `store.stats()` returns. */
  export interface KnexSessionStoreStats {
    /** When the store was made, as an ISO 8601 string: counts start there. */
    since: string;
    operations: Record<'get' | 'set' | 'touch' | 'destroy' | 'all' | 'length' | 'clear', OperationStats>;
    /** The background cleanup of expired rows. */
    cleanup: {
      runs: number;
      errors: number;
      /** Expired rows deleted, over all runs. */
      rowsRemoved: number;
      /** When the last run ended, as an ISO 8601 string, or null before the first. */
      lastRunAt: string | null;
    };
    /** Connections of the store's pools, both 0 until the first call opens them. */
    pool: {
      /** Open connections, busy or idle. */
      size: number;
      /** Open connections waiting for work. */
      idle: number;
    };
  }

  /**
   * An express-session store that keeps sessions in SQLite, PostgreSQL or MySQL/MariaDB.
   *
   * Every method takes an optional callback and returns a promise. With a callback, the
   * callback is called exactly once, on a later tick, and the promise never rejects (it
   * resolves with `undefined` on error). Without one, the promise rejects on error with a
   * {@link KnexSessionStoreError}.
   */
  export class KnexSessionStore extends Store {
    /** @throws {KnexSessionStoreError} `ERR_UNKNOWN_OPTION`, `ERR_INVALID_OPTION` and other option errors. */
    constructor(options?: KnexSessionStoreOptions);

    /**
     * Settles once the table is created or checked, and rejects with the setup error. A rejection
     * never becomes an unhandled rejection, and the next call retries the setup.
     */
    readonly ready: Promise<void>;
    /** The options in force, with defaults filled in. */
    readonly options: KnexSessionStoreResolvedOptions;
    /** Timer of the next cleanup, if one is scheduled (1.x-4.x). */
    nextDbCleanup: NodeJS.Timeout | undefined;

    /** Returns the session stored under `sid`, or `null` when there is none or it has expired. */
    get(
      sid: string,
      callback: (err: any, session?: SessionData | null) => void,
    ): Promise<SessionData | null | undefined>;
    get(sid: string): Promise<SessionData | null>;
    /** Inserts or replaces the session stored under `sid` (one atomic upsert). */
    set(sid: string, session: SessionData, callback: (err?: any) => void): Promise<void>;
    set(sid: string, session: SessionData): Promise<void>;
    /** Moves the expiry of a live session. It never creates or revives one. */
    touch(sid: string, session: SessionData, callback: (err?: any) => void): Promise<void>;
    touch(sid: string, session: SessionData): Promise<void>;
    /** Deletes the session stored under `sid` and gives the number of rows deleted. */
    destroy(sid: string, callback: (err: any, deleted?: number) => void): Promise<number | undefined>;
    destroy(sid: string): Promise<number>;
    /** Returns every live session. */
    all(callback: (err: any, sessions?: SessionData[]) => void): Promise<SessionData[] | undefined>;
    all(): Promise<SessionData[]>;
    /** Counts live sessions. */
    length(callback: (err: any, length?: number) => void): Promise<number | undefined>;
    length(): Promise<number>;
    /** Deletes every session and gives the number of rows deleted. */
    clear(callback: (err: any, deleted?: number) => void): Promise<number | undefined>;
    clear(): Promise<number>;
    /** Stops the cleanup and closes the pool. Later calls fail with `ERR_STORE_CLOSED`, and calling it again is harmless. */
    close(callback: (err?: any) => void): Promise<void>;
    close(): Promise<void>;

    /**
     * Returns counts and latencies of the calls since the store was made, the rows the cleanup
     * removed, and the connections of the pool. Reads no database, so it suits every scrape.
     */
    stats(): KnexSessionStoreStats;

    /** Stops the periodic cleanup (1.x-4.x). */
    stopDbCleanup(): void;
    /** Returns the timer of the next cleanup (1.x-4.x). */
    getNextDbCleanup(): NodeJS.Timeout | undefined;

    /** `'connect'` is emitted once the table is ready. */
    on(event: 'connect', listener: () => void): this;
    on(event: string | symbol, listener: (...args: any[]) => void): this;
    once(event: 'connect', listener: () => void): this;
    once(event: string | symbol, listener: (...args: any[]) => void): this;
  }

  export { KnexSessionStore as ConnectSessionKnexStore, KnexSessionStore as default };
}

export = connectSessionKnex;
