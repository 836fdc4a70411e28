'use strict';

// TLS is used when the URL or the knex config requests it, and its failures are clear errors.
const { describe, it } = require('node:test');
const assert = require('node:assert/strict');

const { KnexSessionStore } = require('..');
const { backends, quote, uniqueTable } = require('./helpers');

const postgres = backends.find((backend) => backend.name === 'postgres');
const mysql = backends.find((backend) => backend.name === 'mysql');

/** Returns `url` with `key=value` added to its query. */
function withParam(url, key, value) {
  const parsed = new URL(url);
  parsed.searchParams.set(key, value);
  return parsed.toString();
}

describe('postgres TLS', { skip: postgres.skip }, () => {
  it('encrypts with sslmode=require', async (t) => {
    const raw = await postgres.raw(postgres.url());
    const [{ ssl }] = await raw.query('SHOW ssl');
    if (ssl !== 'on') {
      await raw.close();
      return t.skip('the server has ssl off');
    }
    const tableName = uniqueTable('tls');
    const store = new KnexSessionStore({
      knex: withParam(postgres.url(), 'sslmode', 'require'),
      tableName,
      cleanupInterval: 0,
      pool: { min: 1 },
    });
    try {
      await store.set('tls', { cookie: { maxAge: 60000 } });
      assert.deepEqual(await store.get('tls'), { cookie: { maxAge: 60000 } });
      // This raw client connects without TLS, so encrypted sessions belong to the store.
      const rows = await raw.query('SELECT count(*) AS n FROM pg_stat_ssl WHERE ssl AND pid <> pg_backend_pid()');
      assert.ok(Number(rows[0].n) >= 1, 'the store holds an encrypted connection');
    } finally {
      await store.close();
      await raw.query(`DROP TABLE IF EXISTS ${quote(postgres, tableName)}`);
      await raw.close();
    }
  });

  it('verifies the certificate with ssl: true', async (t) => {
    const raw = await postgres.raw(postgres.url());
    const [{ ssl }] = await raw.query('SHOW ssl');
    await raw.close();
    if (ssl !== 'on') return t.skip('the server has ssl off');
    const url = new URL(postgres.url());
    const store = new KnexSessionStore({
      knex: {
        client: 'pg',
        connection: {
          host: url.hostname,
          port: Number(url.port),
          user: url.username,
          database: url.pathname.slice(1),
          ssl: true,
        },
      },
      tableName: uniqueTable('tls'),
      cleanupInterval: 0,
    });
    try {
      // The local server's certificate is self-signed, so full verification must fail.
      await assert.rejects(store.ready, (error) => {
        assert.equal(error.code, 'ERR_CONNECTION_FAILED');
        assert.match(error.message, /certificate/);
        return true;
      });
    } finally {
      await store.close();
    }
  });
});

describe('mysql TLS', { skip: mysql.skip }, () => {
  it('refuses a server without TLS', async (t) => {
    const raw = await mysql.raw(mysql.url());
    const [{ Value: haveSsl }] = await raw.query("SHOW VARIABLES LIKE 'have_ssl'");
    await raw.close();
    if (haveSsl === 'YES') return t.skip('the server offers TLS');
    const store = new KnexSessionStore({
      knex: withParam(mysql.url(), 'ssl-mode', 'REQUIRED'),
      tableName: uniqueTable('tls'),
      cleanupInterval: 0,
    });
    try {
      await assert.rejects(store.ready, (error) => {
        assert.equal(error.code, 'ERR_CONNECTION_FAILED');
        assert.match(error.message, /TLS/);
        return true;
      });
    } finally {
      await store.close();
    }
  });
});
