'use strict';

// Builds the native addon with cargo and copies it to connect-session-knex.node.
// Usage: node scripts/build.js [--debug] [--if-missing]
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
const output = path.join(root, 'connect-session-knex.node');
const debug = process.argv.includes('--debug');

if (process.argv.includes('--if-missing')) {
  // A build from an earlier install, or a prebuilt file or package for this platform.
  if (fs.existsSync(output)) process.exit(0);
  const { findPrebuilt } = require('../lib/platform');
  if (findPrebuilt()) process.exit(0);
}

const cargo = process.env.CARGO || 'cargo';
const probe = spawnSync(cargo, ['--version'], { cwd: root, stdio: 'ignore' });
if (probe.error) {
  const { platformNames } = require('../lib/platform');
  console.error(
    `connect-session-knex: no prebuilt addon for ${platformNames()[0]}, and cargo (${cargo}) ` +
      `cannot be run (${probe.error.code}) to build one. Install Rust from https://rustup.rs, ` +
      'then run "npm rebuild connect-session-knex".',
  );
  process.exit(1);
}

const args = ['build', '--lib', '--locked'];
if (!debug) args.push('--release');
console.error(`connect-session-knex: building the native addon (${cargo} ${args.join(' ')}); this takes a few minutes`);
const result = spawnSync(cargo, args, { cwd: root, stdio: 'inherit' });
if (result.error) {
  console.error(`connect-session-knex: cargo (${cargo}) failed to start: ${result.error.message}`);
  process.exit(1);
}
if (result.status !== 0) process.exit(result.status || 1);

const targetDir = process.env.CARGO_TARGET_DIR || path.join(root, 'target');
const library =
  {
    darwin: 'libconnect_session_knex.dylib',
    win32: 'connect_session_knex.dll',
  }[process.platform] || 'libconnect_session_knex.so';
const built = path.join(targetDir, debug ? 'debug' : 'release', library);
// Copy through a temporary name so a running process never loads a half-written file.
fs.copyFileSync(built, `${output}.tmp`);
fs.renameSync(`${output}.tmp`, output);

// Installed as a dependency, the package keeps only the addon: cargo's build folder is a few
// hundred MB that nothing reads again. A checkout, or a shared CARGO_TARGET_DIR, keeps it.
const isDependency = root.split(path.sep).includes('node_modules');
if (isDependency && !process.env.CARGO_TARGET_DIR) {
  fs.rmSync(targetDir, { recursive: true, force: true });
}
console.error(`connect-session-knex: wrote ${path.relative(process.cwd(), output) || output}`);
