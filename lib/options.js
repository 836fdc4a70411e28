'use strict';

const { codedError, describe } = require('./errors');

const DEFAULTS = {
  tableName: 'sessions',
  sidFieldName: 'sid',
  createTable: true,
  cleanupInterval: 60000,
  disableDbCleanup: false,
  ttl: 86400000,
  disableTouch: false,
  maxSessionBytes: 1048576,
  queryTimeoutMillis: 15000,
};

/** Spellings of connect-session-knex 1.x-4.x and the option each stands for. */
const ALIASES = {
  tablename: 'tableName',
  sidfieldname: 'sidFieldName',
  createtable: 'createTable',
  clearInterval: 'cleanupInterval',
};

const KNOWN = new Set([
  ...Object.keys(DEFAULTS),
  ...Object.keys(ALIASES),
  'knex',
  'onDbCleanupError',
  'onError',
  'pool',
]);

const POOL_KEYS = ['max', 'min', 'acquireTimeoutMillis', 'idleTimeoutMillis'];

/** knex client names, by the dialect the native store serves them with. */
const CLIENTS = {
  pg: 'postgres',
  postgres: 'postgres',
  postgresql: 'postgres',
  pgnative: 'postgres',
  mysql: 'mysql',
  mysql2: 'mysql',
  mariadb: 'mysql',
  mariasql: 'mysql',
  sqlite3: 'sqlite',
  sqlite: 'sqlite',
  'better-sqlite3': 'sqlite',
};

const LARGEST_TIMER = 2 ** 31 - 1;
const MAX_POOL_SIZE = 1000;

function invalid(option, expected, value) {
  return codedError('ERR_INVALID_OPTION', `option ${option} must be ${expected}, got ${describe(value)}`, TypeError);
}

function checkType(option, value, type, expected) {
  if (typeof value !== type) throw invalid(option, expected, value);
  return value;
}

function checkMillis(option, value, { allowZero = true, max = LARGEST_TIMER } = {}) {
  const ok = typeof value === 'number' && Number.isInteger(value) && value >= (allowZero ? 0 : 1) && value <= max;
  if (!ok) {
    throw invalid(option, `an integer number of milliseconds from ${allowZero ? 0 : 1} to ${max}`, value);
  }
  return value;
}

/**
 * Checks the options given to the store, fills in defaults and resolves aliases; the spelling
 * of connect-session-knex 5 wins when both are given.
 * @param {Record<string, unknown>} [input]
 */
function normalizeOptions(input = {}) {
  if (input === null || typeof input !== 'object' || Array.isArray(input)) {
    throw invalid('options', 'an object', input);
  }
  for (const key of Object.keys(input)) {
    if (!KNOWN.has(key)) {
      throw codedError(
        'ERR_UNKNOWN_OPTION',
        `unknown option ${JSON.stringify(key)}: known options are ${[...KNOWN].join(', ')}`,
        TypeError,
      );
    }
  }

  /** @type {Record<string, any>} */
  const picked = {};
  /** Spelling the user wrote for each option, so messages name what is in their code. */
  const spelled = {};
  for (const [alias, name] of Object.entries(ALIASES)) {
    if (input[alias] !== undefined && input[name] === undefined) {
      picked[name] = input[alias];
      spelled[name] = alias;
    }
  }
  for (const [key, value] of Object.entries(input)) {
    if (value !== undefined && !(key in ALIASES)) picked[key] = value;
  }
  const options = { ...DEFAULTS, ...picked };

  const as = (name) => spelled[name] || name;
  checkType(as('tableName'), options.tableName, 'string', 'a table name string');
  checkType(as('sidFieldName'), options.sidFieldName, 'string', 'a column name string');
  checkType(as('createTable'), options.createTable, 'boolean', 'true or false');
  checkType('disableDbCleanup', options.disableDbCleanup, 'boolean', 'true or false');
  checkType('disableTouch', options.disableTouch, 'boolean', 'true or false');
  checkMillis(as('cleanupInterval'), options.cleanupInterval);
  checkMillis('ttl', options.ttl, { allowZero: false, max: Number.MAX_SAFE_INTEGER });
  checkMillis('queryTimeoutMillis', options.queryTimeoutMillis, { allowZero: false, max: 2 ** 32 - 1 });
  if (!Number.isSafeInteger(options.maxSessionBytes) || options.maxSessionBytes < 0) {
    throw invalid('maxSessionBytes', 'a whole number of bytes (0 for no limit)', options.maxSessionBytes);
  }
  if (options.onDbCleanupError !== undefined) {
    checkType('onDbCleanupError', options.onDbCleanupError, 'function', 'a function');
  }
  if (options.onError !== undefined) checkType('onError', options.onError, 'function', 'a function');

  const connection = resolveKnex(options.knex);
  const pool = normalizePool(options.pool, connection.knexPool);
  return { options, connection: connection.fields, pool };
}

function normalizePool(pool, knexPool) {
  const source = pool === undefined ? knexPool : pool;
  if (source === undefined || source === null) return {};
  if (typeof source !== 'object') throw invalid('pool', 'an object', source);
  const result = {};
  for (const key of POOL_KEYS) {
    if (source[key] === undefined) continue;
    const value = source[key];
    if (key === 'max' || key === 'min') {
      const least = key === 'max' ? 1 : 0;
      if (!Number.isInteger(value) || value < least || value > MAX_POOL_SIZE) {
        throw invalid(`pool.${key}`, `an integer number of connections from ${least} to ${MAX_POOL_SIZE}`, value);
      }
      result[key] = value;
    } else {
      result[key] = checkMillis(`pool.${key}`, value, { max: 2 ** 32 - 1 });
    }
  }
  if (result.min !== undefined && result.max !== undefined && result.min > result.max) {
    throw invalid('pool.min', `at most pool.max (${result.max})`, result.min);
  }
  // knex configs carry pool keys of their own (afterCreate, propagateCreateError, ...), so
  // unknown keys are an error only in the store's own pool option.
  if (pool !== undefined) {
    for (const key of Object.keys(pool)) {
      if (!POOL_KEYS.includes(key)) {
        throw codedError(
          'ERR_UNKNOWN_OPTION',
          `unknown option pool.${key}: known pool options are ${POOL_KEYS.join(', ')}`,
          TypeError,
        );
      }
    }
  }
  return result;
}

/**
 * Reads where the sessions live from the `knex` option: a knex instance, a knex config object
 * or a URL. Only the client name and the connection settings are used; knex itself is not.
 * @param {unknown} knex
 */
function resolveKnex(knex) {
  if (knex === undefined || knex === null) {
    return { fields: { client: 'sqlite', filename: 'connect-session-knex.sqlite' } };
  }
  if (typeof knex === 'string') return { fields: { url: knex } };

  const isInstance = (typeof knex === 'function' || typeof knex === 'object') && knex.client && knex.client.config;
  const config = isInstance ? knex.client.config : knex;
  if (typeof config !== 'object' || Array.isArray(config)) {
    throw invalid('knex', 'a knex instance, a knex config object { client, connection } or a URL string', knex);
  }

  let client = config.client;
  if (typeof client === 'function')
    client = isInstance ? knex.client.dialect : client.prototype && client.prototype.dialect;
  if (client === undefined && isInstance) client = knex.client.dialect;
  if (typeof client !== 'string') {
    throw invalid('knex.client', 'a knex client name such as "pg", "mysql2" or "sqlite3"', client);
  }
  const dialect = CLIENTS[client];
  if (!dialect) {
    throw codedError(
      'ERR_UNSUPPORTED_CLIENT',
      `unsupported knex client ${JSON.stringify(client)}: use one of ${Object.keys(CLIENTS).join(', ')}`,
    );
  }

  let connection = config.connection;
  if (typeof connection === 'function') connection = connection();
  if (connection && typeof connection.then === 'function') {
    throw codedError(
      'ERR_INVALID_OPTION',
      'option knex.connection must be an object, a string or a function returning one synchronously, got a promise',
      TypeError,
    );
  }
  const fields = connectionFields(dialect, connection);
  if (dialect === 'postgres' && config.searchPath !== undefined) {
    const path = Array.isArray(config.searchPath) ? config.searchPath.join(',') : config.searchPath;
    fields.searchPath = checkType('knex.searchPath', path, 'string', 'a schema name or an array of them');
  }
  return { fields, knexPool: config.pool };
}

function connectionFields(dialect, connection) {
  if (typeof connection === 'string') {
    if (dialect === 'sqlite' && !connection.startsWith('sqlite:') && !connection.startsWith('file:')) {
      return { client: dialect, filename: connection };
    }
    return { client: dialect, url: connection };
  }
  if (connection === undefined || connection === null) {
    if (dialect === 'sqlite') {
      throw invalid('knex.connection', 'an object with a filename for SQLite', connection);
    }
    return { client: dialect };
  }
  if (typeof connection !== 'object') {
    throw invalid('knex.connection', 'an object, a string or a function returning one', connection);
  }

  const fields = { client: dialect };
  if (connection.connectionString !== undefined) fields.url = connection.connectionString;
  const strings = {
    host: 'host',
    user: 'user',
    password: 'password',
    database: 'database',
    filename: 'filename',
    socketPath: 'socketPath',
  };
  for (const [from, to] of Object.entries(strings)) {
    const value = connection[from];
    if (value === undefined || value === null) continue;
    fields[to] = checkType(`knex.connection.${from}`, value, 'string', 'a string');
  }
  if (connection.port !== undefined && connection.port !== null) {
    const port = typeof connection.port === 'string' ? Number(connection.port) : connection.port;
    if (!Number.isInteger(port) || port < 1 || port > 65535) {
      throw invalid('knex.connection.port', 'a TCP port from 1 to 65535', connection.port);
    }
    fields.port = port;
  }
  if (connection.ssl !== undefined) fields.sslMode = sslMode(connection.ssl);
  if (dialect === 'sqlite' && fields.filename === undefined) {
    throw invalid('knex.connection.filename', 'the path of the SQLite file or ":memory:"', undefined);
  }
  return fields;
}

/** Maps the `ssl` setting of node-postgres and mysql2 to a TLS mode. */
function sslMode(ssl) {
  if (ssl === false) return 'disable';
  if (ssl === true) return 'verify-full';
  if (typeof ssl === 'string') return ssl;
  if (ssl && typeof ssl === 'object') return ssl.rejectUnauthorized === false ? 'require' : 'verify-full';
  throw invalid('knex.connection.ssl', 'true, false, an object or a TLS mode string', ssl);
}

/**
 * Returns the object the native store is built from.
 * @param {ReturnType<typeof normalizeOptions>} normalized
 */
function nativeOptions({ options, connection, pool }) {
  return {
    ...connection,
    tableName: options.tableName,
    sidFieldName: options.sidFieldName,
    createTable: options.createTable,
    poolMax: pool.max,
    poolMin: pool.min,
    acquireTimeoutMs: pool.acquireTimeoutMillis,
    idleTimeoutMs: pool.idleTimeoutMillis,
    queryTimeoutMs: options.queryTimeoutMillis,
  };
}

module.exports = { normalizeOptions, nativeOptions, DEFAULTS };
