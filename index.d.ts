import { SessionData, Store } from 'express-session';

/** Stable codes of the errors the store raises, in `error.code`. */
export type KnexSessionStoreErrorCode =
  | 'ERR_UNKNOWN_OPTION'
  | 'ERR_INVALID_OPTION'
  | 'ERR_INVALID_URL'
  | 'ERR_UNSUPPORTED_CLIENT'
  | 'ERR_INVALID_IDENTIFIER'
  | 'ERR_INVALID_ARGUMENT'
  | 'ERR_SESSION_NOT_SERIALIZABLE'
  | 'ERR_TABLE_MISSING'
  | 'ERR_TABLE_UNUSABLE'
  | 'ERR_CONNECTION_FAILED'
  | 'ERR_POOL_TIMEOUT'
  | 'ERR_QUERY_TIMEOUT'
  | 'ERR_SESSION_TOO_LARGE'
  | 'ERR_SID_CONFLICT'
  | 'ERR_STORE_CLOSED'
  | 'ERR_CORRUPT_SESSION'
  | 'ERR_DATABASE'
  | 'ERR_ADDON_MISSING';

/** An error raised by the store. */
export interface KnexSessionStoreError extends Error {
  code: KnexSessionStoreErrorCode;
}

/** The parts of a knex configuration the store reads; knex itself is not needed. */
export interface KnexConfig {
  /** knex client name: pg, postgres, postgresql, pgnative, mysql, mysql2, mariadb, sqlite3, sqlite or better-sqlite3. */
  client: string | Function;
  /** Connection URL or fields, or a function returning either synchronously. */
  connection?: string | KnexConnection | (() => string | KnexConnection);
  /** PostgreSQL schema search path. */
  searchPath?: string | string[];
  /** knex pool settings; `min` and `max` are used. */
  pool?: { min?: number; max?: number; [key: string]: unknown };
}

export interface KnexConnection {
  host?: string;
  port?: number | string;
  user?: string;
  password?: string;
  database?: string;
  /** SQLite file, or `:memory:`. */
  filename?: string;
  /** Unix socket of the server. */
  socketPath?: string;
  /** PostgreSQL-style connection URL. */
  connectionString?: string;
  /** `true` verifies the server certificate; `{ rejectUnauthorized: false }` encrypts without verifying. */
  ssl?: boolean | string | { rejectUnauthorized?: boolean; [key: string]: unknown };
}

/** A knex instance: only `client.config` is read. */
export interface KnexLike {
  client: { config: KnexConfig; dialect?: string };
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
  /** @deprecated Spelling of 1.x-4.x; use `tableName`. */
  tablename?: string;
  /** Name of the session id column. Default `'sid'`. */
  sidFieldName?: string;
  /** @deprecated Spelling of 1.x-4.x; use `sidFieldName`. */
  sidfieldname?: string;
  /** Create the table and its expiry index when missing. Default `true`. */
  createTable?: boolean;
  /** @deprecated Spelling of 1.x-4.x; use `createTable`. */
  createtable?: boolean;
  /** Milliseconds between deletions of expired rows (give or take 10%); `0` turns cleanup off. Default `60000`. */
  cleanupInterval?: number;
  /** @deprecated Spelling of 1.x-4.x; use `cleanupInterval`. Here `0` turns cleanup off. */
  clearInterval?: number;
  /** Turn the cleanup off. Default `false`. */
  disableDbCleanup?: boolean;
  /** Called with errors of the background cleanup. Default `console.error`. */
  onDbCleanupError?: (error: unknown) => void;
  /** Called with errors that no caller receives, such as a stored row that is not JSON. Default: `onDbCleanupError`, else `console.error`. */
  onError?: (error: unknown) => void;
  /** Milliseconds a session lives when its cookie carries no expiry. Default `86400000` (one day). */
  ttl?: number;
  /** Make `touch` a no-op. Default `false`. */
  disableTouch?: boolean;
  /** Largest session in bytes of UTF-8 JSON; `0` turns the check off. Default `1048576`. */
  maxSessionBytes?: number;
  /** Longest one call may take in ms, connection wait included. Default `15000`. */
  queryTimeoutMillis?: number;
  /** Connection pool. Defaults: max 10 (SQLite: 4 readers beside one writer), min 0, acquire 10000 ms, idle 600000 ms. */
  pool?: {
    max?: number;
    min?: number;
    acquireTimeoutMillis?: number;
    idleTimeoutMillis?: number;
  };
}

type Callback<T> = (err: any, value?: T) => void;

export declare class KnexSessionStore extends Store {
  constructor(options?: KnexSessionStoreOptions);

  /** Settles once the table is created or checked; rejects with the setup error. */
  readonly ready: Promise<void>;
  /** The options in force, with defaults filled in. */
  readonly options: Required<
    Pick<
      KnexSessionStoreOptions,
      'tableName' | 'sidFieldName' | 'createTable' | 'cleanupInterval' | 'disableDbCleanup' | 'ttl' | 'disableTouch'
    >
  > &
    KnexSessionStoreOptions;
  /** Timer of the next cleanup, if one is scheduled. */
  nextDbCleanup: NodeJS.Timeout | undefined;

  get(sid: string, callback: (err: any, session?: SessionData | null) => void): Promise<SessionData | null | undefined>;
  get(sid: string): Promise<SessionData | null>;
  set(sid: string, session: SessionData, callback: (err?: any) => void): Promise<void>;
  set(sid: string, session: SessionData): Promise<void>;
  touch(sid: string, session: SessionData, callback: (err?: any) => void): Promise<void>;
  touch(sid: string, session: SessionData): Promise<void>;
  /** Resolves with the number of rows deleted. */
  destroy(sid: string, callback: Callback<number>): Promise<number | undefined>;
  destroy(sid: string): Promise<number>;
  all(callback: (err: any, sessions?: SessionData[]) => void): Promise<SessionData[] | undefined>;
  all(): Promise<SessionData[]>;
  length(callback: (err: any, length?: number) => void): Promise<number | undefined>;
  length(): Promise<number>;
  /** Resolves with the number of rows deleted. */
  clear(callback: Callback<number>): Promise<number | undefined>;
  clear(): Promise<number>;
  /** Stops the cleanup and closes the pool; later calls fail with ERR_STORE_CLOSED. */
  close(callback?: (err?: any) => void): Promise<void>;
  /** Stops the periodic cleanup. */
  stopDbCleanup(): void;
  /** Returns the timer of the next cleanup. */
  getNextDbCleanup(): NodeJS.Timeout | undefined;
}

export { KnexSessionStore as ConnectSessionKnexStore };
export default KnexSessionStore;
