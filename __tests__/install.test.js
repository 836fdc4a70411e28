'use strict';

// Installs the package the way a user does: `npm pack`, then `npm install <tarball> express
// express-session` in an empty folder, which builds the addon from source with cargo. Then runs
// a small Express app from that folder with `require` and with `import`, one request each.
//
// cargo builds into this checkout's target/ (CARGO_TARGET_DIR), so only the crate itself is
// compiled again; its dependencies come from the build of `npm install` here. Takes a minute or
// more.
const test = require('node:test');
const assert = require('node:assert/strict');
const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');

const repo = path.join(__dirname, '..');
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';

/** Returns the environment without the npm_* variables of an enclosing `npm test`. */
function cleanEnv(extra = {}) {
  const env = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (!/^npm_/i.test(key)) env[key] = value;
  }
  return { ...env, ...extra };
}

/** Prints a command before it runs, on stderr so that it shows beside the command's output. */
function announce(line) {
  process.stderr.write(`install.test: ${line}\n`);
}

/** Runs a command to completion after printing it; its output is copied to stderr. */
function run(command, args, { echoStdout = true, ...options }) {
  announce(`$ ${command} ${args.join(' ')}  (in ${options.cwd})`);
  const result = spawnSync(command, args, { ...options, stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' });
  if (result.stdout && echoStdout) process.stderr.write(result.stdout);
  if (result.stderr) process.stderr.write(result.stderr);
  return result;
}

const CJS_APP = `'use strict';
const path = require('node:path');
const express = require('express');
const session = require('express-session');
const connectSessionKnex = require('connect-session-knex');
const { KnexSessionStore } = connectSessionKnex;

const store = new KnexSessionStore({ knex: 'sqlite://' + path.join(__dirname, 'cjs.sqlite') });
const app = express();
app.use(session({ store, secret: 'install test', resave: false, saveUninitialized: false }));
app.get('/', (req, res) => {
  req.session.views = (req.session.views || 0) + 1;
  const factory = connectSessionKnex(session) === KnexSessionStore;
  res.type('text').send('require views=' + req.session.views + ' factory=' + factory);
});
const server = app.listen(0, '127.0.0.1', () => console.log('listening ' + server.address().port));
process.on('SIGTERM', () => {
  server.close();
  server.closeAllConnections();
  store.close().then(() => process.exit(0));
});
`;

const ESM_APP = `import path from 'node:path';
import { fileURLToPath } from 'node:url';
import express from 'express';
import session from 'express-session';
import Default, { KnexSessionStore } from 'connect-session-knex';

const folder = path.dirname(fileURLToPath(import.meta.url));
const store = new KnexSessionStore({ knex: 'sqlite://' + path.join(folder, 'esm.sqlite') });
const app = express();
app.use(session({ store, secret: 'install test', resave: false, saveUninitialized: false }));
app.get('/', (req, res) => {
  req.session.views = (req.session.views || 0) + 1;
  res.type('text').send('import views=' + req.session.views + ' default=' + (Default === KnexSessionStore));
});
const server = app.listen(0, '127.0.0.1', () => console.log('listening ' + server.address().port));
process.on('SIGTERM', () => {
  server.close();
  server.closeAllConnections();
  store.close().then(() => process.exit(0));
});
`;

/** Starts `file` with node, waits for its port, makes one request, stops it with SIGTERM. */
async function requestApp(cwd, file) {
  announce(`$ node ${file}  (in ${cwd}), then GET / on 127.0.0.1 and SIGTERM`);
  const child = spawn(process.execPath, [file], { cwd, env: cleanEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (chunk) => (stderr += chunk));
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  try {
    const port = await new Promise((resolve, reject) => {
      let stdout = '';
      child.stdout.on('data', (chunk) => {
        stdout += chunk;
        const match = /listening (\d+)/.exec(stdout);
        if (match) resolve(Number(match[1]));
      });
      child.on('exit', (code) => reject(new Error(`${file} exited with ${code} before listening: ${stderr}`)));
    });
    const response = await new Promise((resolve, reject) => {
      http
        .get({ host: '127.0.0.1', port, path: '/' }, (res) => {
          let body = '';
          res.setEncoding('utf8');
          res.on('data', (chunk) => (body += chunk));
          res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body }));
        })
        .on('error', reject);
    });
    child.kill('SIGTERM');
    const exit = await exited;
    assert.deepEqual(exit, { code: 0, signal: null }, `${file} did not exit cleanly: ${stderr}`);
    return response;
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
}

test(
  'packed tarball installs and serves Express',
  {
    timeout: 15 * 60 * 1000,
  },
  async (t) => {
    const started = Date.now();
    const work = fs.mkdtempSync(path.join(os.tmpdir(), 'csk-install-'));
    t.after(() => fs.rmSync(work, { recursive: true, force: true }));

    const packed = run(npm, ['pack', '--json', '--pack-destination', work], {
      cwd: repo,
      env: cleanEnv(),
      echoStdout: false,
    });
    assert.equal(packed.status, 0, 'npm pack failed');
    const [info] = JSON.parse(packed.stdout);
    const files = info.files.map((file) => file.path);
    for (const needed of ['index.js', 'index.mjs', 'index.d.ts', 'scripts/build.js', 'Cargo.toml', 'Cargo.lock']) {
      assert.ok(files.includes(needed), `the tarball lacks ${needed}`);
    }
    for (const file of files) {
      assert.doesNotMatch(file, /^(__tests__|bench|target|examples|node_modules)\/|\.node$|\.sqlite/, file);
    }

    const app = path.join(work, 'app');
    fs.mkdirSync(app);
    fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'install-test-app', private: true }));
    const installed = run(
      npm,
      [
        'install',
        '--no-audit',
        '--no-fund',
        '--prefer-offline',
        '--foreground-scripts',
        path.join(work, info.filename),
        'express',
        'express-session',
      ],
      { cwd: app, env: cleanEnv({ CARGO_TARGET_DIR: path.join(repo, 'target') }) },
    );
    assert.equal(installed.status, 0, 'npm install of the tarball failed');
    const pkg = path.join(app, 'node_modules', 'connect-session-knex');
    assert.ok(fs.existsSync(path.join(pkg, 'connect-session-knex.node')), 'the install did not build the addon');
    announce(`install took ${((Date.now() - started) / 1000).toFixed(1)} s`);

    // Without cargo, a build stops with one message that names what to install.
    const missing = run(process.execPath, ['scripts/build.js'], {
      cwd: pkg,
      env: cleanEnv({ CARGO: path.join(work, 'no-such-cargo') }),
    });
    assert.equal(missing.status, 1);
    assert.equal(missing.stderr.trim().split('\n').length, 1, missing.stderr);
    assert.match(missing.stderr, /cannot be run \(ENOENT\).*rustup\.rs.*npm rebuild connect-session-knex/);
    const skipped = run(process.execPath, ['scripts/build.js', '--if-missing'], {
      cwd: pkg,
      env: cleanEnv({ CARGO: path.join(work, 'no-such-cargo') }),
    });
    assert.equal(skipped.status, 0, 'the install script rebuilt an addon that was already there');

    fs.writeFileSync(path.join(app, 'app.cjs'), CJS_APP);
    fs.writeFileSync(path.join(app, 'app.mjs'), ESM_APP);

    const viaRequire = await requestApp(app, 'app.cjs');
    assert.equal(viaRequire.status, 200);
    assert.equal(viaRequire.body, 'require views=1 factory=true');
    assert.match(String(viaRequire.headers['set-cookie']), /^connect\.sid=/);

    const viaImport = await requestApp(app, 'app.mjs');
    assert.equal(viaImport.status, 200);
    assert.equal(viaImport.body, 'import views=1 default=true');
    assert.match(String(viaImport.headers['set-cookie']), /^connect\.sid=/);
    announce(`whole test took ${((Date.now() - started) / 1000).toFixed(1)} s`);
  },
);
