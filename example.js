'use strict';

// An Express app whose sessions live in connect-session-knex.sqlite in the working directory.
// Each response contains the view count, which survives a restart of the process.
//   node example.js            serves on PORT or 3000
//   DATABASE_URL=postgres://... node example.js   uses another database
const express = require('express');
const session = require('express-session');
const { KnexSessionStore } = require('.');

const store = new KnexSessionStore({
  knex: process.env.DATABASE_URL, // undefined: the default SQLite file
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

const port = Number(process.env.PORT || 3000);
const server = app.listen(port, () => {
  console.log(`listening on http://localhost:${port}`);
});

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
