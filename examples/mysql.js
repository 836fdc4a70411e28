'use strict';

// An Express app whose sessions live in MySQL or MariaDB. Each request returns its view
// count, and GET /stats shows the store's counters.
//   DATABASE_URL=mysql://user:password@host:3306/db node examples/mysql.js
// Without DATABASE_URL it uses mysql://root@127.0.0.1:3306/test. PORT (default 3000)
// and HOST (default 127.0.0.1) set where it listens, and SESSION_TABLE names the table.
const express = require('express');
const session = require('express-session');
const { KnexSessionStore } = require('connect-session-knex');

const store = new KnexSessionStore({
  // A knex instance or a knex config { client: 'mysql2', connection: { ... } } works here too.
  knex: process.env.DATABASE_URL || 'mysql://root@127.0.0.1:3306/test',
  tableName: process.env.SESSION_TABLE || 'sessions',
  pool: { max: 10 },
  onDbCleanupError: (error) => console.error('session cleanup failed:', error.message),
});

const app = express();
app.use(
  session({
    store,
    secret: process.env.SESSION_SECRET || 'replace this secret',
    resave: false,
    saveUninitialized: false,
    cookie: { maxAge: 24 * 60 * 60 * 1000 },
  }),
);

app.get('/', (req, res) => {
  req.session.views = (req.session.views || 0) + 1;
  res.type('text').send(`views: ${req.session.views}\n`);
});
app.get('/stats', (req, res) => res.json(store.stats()));

const port = Number(process.env.PORT || 3000);
const host = process.env.HOST || '127.0.0.1';
const server = app.listen(port, host, () => {
  console.log(`listening on http://${host}:${server.address().port}`);
});

// Stop taking requests, then close the pool, so that no query is cut off.
function shutdown() {
  server.close(() => {
    store.close().then(
      () => process.exit(0),
      (error) => {
        console.error(error);
        process.exit(1);
      },
    );
  });
  server.closeAllConnections();
}
process.on('SIGINT', shutdown);
process.on('SIGTERM', shutdown);
