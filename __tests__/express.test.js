'use strict';

// End-to-end tests: a real express 5 app with express-session and the store, on an ephemeral
// 127.0.0.1 port, driven with fetch and a one-cookie jar.
const assert = require('node:assert/strict');
const http = require('node:http');
const { describe, it } = require('node:test');

const express = require('express');
const session = require('express-session');

const { KnexSessionStore } = require('..');
const { backends, expiresIn, quote, rawCount, uniqueTable } = require('./helpers');

const SECRET = 'express-test-secret';
const MAX_AGE = 600000;

/**
 * Starts an express app with express-session over `store` and the routes the tests use.
 * @param {KnexSessionStore} store
 * @param {Record<string, unknown>} sessionOptions
 */
async function startApp(store, sessionOptions = {}) {
  const app = express();
  app.use(
    session({
      store,
      secret: SECRET,
      resave: false,
      saveUninitialized: false,
      rolling: true,
      cookie: { maxAge: MAX_AGE },
      ...sessionOptions,
    }),
  );
  app.post('/login', (req, res) => {
    req.session.user = { name: String(req.query.name), roles: ['reader'] };
    res.json({ ok: true });
  });
  app.get('/me', (req, res) => {
    res.json({ user: req.session.user === undefined ? null : req.session.user });
  });
  app.post('/count', (req, res) => {
    req.session.x = (req.session.x || 0) + 1;
    res.json({ x: req.session.x });
  });
  app.get('/count', (req, res) => {
    const expires = req.session.cookie.expires;
    res.json({
      x: req.session.x === undefined ? null : req.session.x,
      expiresIsDate: expires instanceof Date,
      expiresTime: expires instanceof Date ? expires.getTime() : null,
    });
  });
  app.post('/logout', (req, res, next) => {
    req.session.destroy((error) => {
      if (error) return next(error);
      res.json({ ok: true });
    });
  });

  const server = http.createServer(app);
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = /** @type {import('node:net').AddressInfo} */ (server.address());
  return {
    base: `http://127.0.0.1:${port}`,
    stop: async () => {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** Creates a fetch client that keeps the session cookie between requests. */
function cookieClient(base) {
  let cookie;
  return {
    get cookie() {
      return cookie;
    },
    request: async (method, path) => {
      const headers = cookie === undefined ? {} : { cookie };
      const response = await fetch(`${base}${path}`, { method, headers });
      const setCookies = response.headers.getSetCookie();
      const sessionCookie = setCookies.find((line) => line.startsWith('connect.sid='));
      if (sessionCookie !== undefined) cookie = sessionCookie.split(';')[0];
      const body = await response.json();
      return { status: response.status, body, setCookies };
    },
  };
}

/** Reads the session id out of a signed `connect.sid=s:<sid>.<signature>` cookie. */
function sidOf(cookie) {
  const value = decodeURIComponent(cookie.slice('connect.sid='.length));
  assert.ok(value.startsWith('s:'), `cookie is not signed: ${value}`);
  return value.slice(2, value.lastIndexOf('.'));
}

/** Writes an expiry straight into the table, in the column type of the backend. */
async function writeExpiry(backend, raw, tableName, sid, date) {
  const value = backend.name === 'sqlite' ? date.toISOString() : date;
  await raw.query(`UPDATE ${quote(backend, tableName)} SET expired = ? WHERE sid = ?`, [value, sid]);
}

/** Opens a store, a raw connection and an app on a fresh table of `backend`. */
async function openApp(backend, sessionOptions = {}) {
  const url = backend.url();
  const tableName = uniqueTable('express');
  const store = new KnexSessionStore({ knex: url, tableName, cleanupInterval: 0 });
  await store.ready;
  const raw = await backend.raw(url);
  const app = await startApp(store, sessionOptions);
  return {
    store,
    raw,
    tableName,
    app,
    client: cookieClient(app.base),
    cleanup: async () => {
      await app.stop();
      await store.close();
      await raw.query(`DROP TABLE IF EXISTS ${quote(backend, tableName)}`).catch(() => {});
      await raw.close();
    },
  };
}

for (const backend of backends) {
  describe(backend.name, { skip: backend.skip }, () => {
    describe('express app with the store', () => {
      it('login saves the user row', async () => {
        const { raw, tableName, client, cleanup } = await openApp(backend);
        try {
          const login = await client.request('POST', '/login?name=ada');
          assert.equal(login.status, 200);
          assert.notEqual(client.cookie, undefined);
          const sid = sidOf(client.cookie);
          assert.equal(await rawCount(backend, raw, tableName, sid), 1);
          const rows = await raw.query(`SELECT sess FROM ${quote(backend, tableName)} WHERE sid = ?`, [sid]);
          const stored = typeof rows[0].sess === 'string' ? JSON.parse(rows[0].sess) : rows[0].sess;
          assert.deepEqual(stored.user, { name: 'ada', roles: ['reader'] });
          const seconds = await expiresIn(backend, raw, tableName, sid);
          assert.ok(seconds > MAX_AGE / 1000 - 10, `expires in ${seconds} s`);
          assert.ok(seconds <= MAX_AGE / 1000, `expires in ${seconds} s`);
        } finally {
          await cleanup();
        }
      });

      it('later request reads the user', async () => {
        const { client, cleanup } = await openApp(backend);
        try {
          await client.request('POST', '/login?name=grace');
          const me = await client.request('GET', '/me');
          assert.equal(me.status, 200);
          assert.deepEqual(me.body.user, { name: 'grace', roles: ['reader'] });
        } finally {
          await cleanup();
        }
      });

      it('request without cookie has no user', async () => {
        const { client, cleanup } = await openApp(backend);
        try {
          const me = await client.request('GET', '/me');
          assert.equal(me.status, 200);
          assert.equal(me.body.user, null);
          assert.equal(client.cookie, undefined);
        } finally {
          await cleanup();
        }
      });

      it('unmodified request touches the expiry', async () => {
        const { store, raw, tableName, client, cleanup } = await openApp(backend);
        try {
          let touches = 0;
          let sets = 0;
          const touch = store.touch.bind(store);
          const set = store.set.bind(store);
          store.touch = (...args) => {
            touches += 1;
            return touch(...args);
          };
          store.set = (...args) => {
            sets += 1;
            return set(...args);
          };

          await client.request('POST', '/login?name=linus');
          const sid = sidOf(client.cookie);
          assert.equal(sets, 1);
          // Move the stored expiry to 100 s from now, so a touch to 600 s is plain to see.
          await writeExpiry(backend, raw, tableName, sid, new Date(Date.now() + 100000));
          const before = await expiresIn(backend, raw, tableName, sid);
          assert.ok(before < 101, `expiry before the request is ${before} s`);

          const me = await client.request('GET', '/me');
          assert.deepEqual(me.body.user, { name: 'linus', roles: ['reader'] });
          assert.equal(touches, 1);
          assert.equal(sets, 1);
          const after = await expiresIn(backend, raw, tableName, sid);
          assert.ok(after > MAX_AGE / 1000 - 10, `expiry after the request is ${after} s`);
          assert.ok(after <= MAX_AGE / 1000, `expiry after the request is ${after} s`);
        } finally {
          await cleanup();
        }
      });

      it('logout deletes the session row', async () => {
        const { raw, tableName, client, cleanup } = await openApp(backend);
        try {
          await client.request('POST', '/login?name=barbara');
          const sid = sidOf(client.cookie);
          assert.equal(await rawCount(backend, raw, tableName, sid), 1);
          const logout = await client.request('POST', '/logout');
          assert.equal(logout.status, 200);
          assert.equal(await rawCount(backend, raw, tableName, sid), 0);
        } finally {
          await cleanup();
        }
      });

      it('old cookie finds no session after logout', async () => {
        const { raw, tableName, client, cleanup } = await openApp(backend);
        try {
          await client.request('POST', '/login?name=edsger');
          const cookie = client.cookie;
          await client.request('POST', '/logout');
          assert.equal(client.cookie, cookie);
          const me = await client.request('GET', '/me');
          assert.equal(me.status, 200);
          assert.equal(me.body.user, null);
          assert.equal(await rawCount(backend, raw, tableName), 0);
        } finally {
          await cleanup();
        }
      });

      it('expired row is not served', async () => {
        const { raw, tableName, client, cleanup } = await openApp(backend);
        try {
          await client.request('POST', '/login?name=ken');
          const sid = sidOf(client.cookie);
          await writeExpiry(backend, raw, tableName, sid, new Date(Date.now() - 1000));
          const me = await client.request('GET', '/me');
          assert.equal(me.body.user, null);
          const seconds = await expiresIn(backend, raw, tableName, sid);
          assert.ok(seconds < 0, `touch moved an expired row to ${seconds} s`);
        } finally {
          await cleanup();
        }
      });
    });

    describe('session data across requests', () => {
      it('second request sees saved value', async () => {
        const { client, cleanup } = await openApp(backend);
        try {
          const first = await client.request('POST', '/count');
          assert.equal(first.body.x, 1);
          const second = await client.request('GET', '/count');
          assert.equal(second.body.x, 1);
        } finally {
          await cleanup();
        }
      });

      it('cookie expires is a Date', async () => {
        const { client, cleanup } = await openApp(backend);
        try {
          await client.request('POST', '/count');
          const before = Date.now();
          const second = await client.request('GET', '/count');
          assert.equal(second.body.expiresIsDate, true);
          assert.equal(typeof second.body.expiresTime, 'number');
          assert.ok(Number.isFinite(second.body.expiresTime));
          const ahead = second.body.expiresTime - before;
          assert.ok(ahead > MAX_AGE - 10000, `cookie expires ${ahead} ms ahead`);
          assert.ok(ahead <= MAX_AGE + 10000, `cookie expires ${ahead} ms ahead`);
        } finally {
          await cleanup();
        }
      });

      it('Set-Cookie carries a valid Expires', async () => {
        const { client, cleanup } = await openApp(backend);
        try {
          await client.request('POST', '/count');
          const before = Date.now();
          const second = await client.request('GET', '/count');
          const line = second.setCookies.find((cookie) => cookie.startsWith('connect.sid='));
          assert.notEqual(line, undefined, 'rolling: true sends the cookie on every response');
          const match = /;\s*Expires=([^;]+)/i.exec(line);
          assert.notEqual(match, null, `no Expires in ${line}`);
          assert.doesNotMatch(match[1], /Invalid Date/);
          const expires = Date.parse(match[1]);
          assert.ok(Number.isFinite(expires), `Expires=${match[1]} is not a date`);
          const ahead = expires - before;
          assert.ok(ahead > MAX_AGE - 10000, `Expires is ${ahead} ms ahead`);
          assert.ok(ahead <= MAX_AGE + 10000, `Expires is ${ahead} ms ahead`);
        } finally {
          await cleanup();
        }
      });
    });
  });
}
