'use strict';

// Loads the compiled addon: the file `npm install` builds from source (scripts/build.js), or a
// per-platform prebuilt file or package named as napi-rs lays them out.
const path = require('node:path');
const fs = require('node:fs');

const root = path.join(__dirname, '..');

function platformSuffix() {
  const { platform, arch } = process;
  if (platform === 'linux') {
    const report = process.report && process.report.getReport();
    const glibc = report && report.header && report.header.glibcVersionRuntime;
    return `linux-${arch}-${glibc ? 'gnu' : 'musl'}`;
  }
  if (platform === 'win32') return `win32-${arch}-msvc`;
  return `${platform}-${arch}`;
}

function load() {
  const suffix = platformSuffix();
  const candidates = [
    path.join(root, 'connect-session-knex.node'),
    path.join(root, `connect-session-knex.${suffix}.node`),
  ];
  for (const file of candidates) {
    if (fs.existsSync(file)) return require(file);
  }
  try {
    return require(`connect-session-knex-${suffix}`);
  } catch (error) {
    if (error.code !== 'MODULE_NOT_FOUND') throw error;
  }
  const error = new Error(
    `connect-session-knex: the native addon is not built for ${suffix}. ` +
      `Run "npm rebuild connect-session-knex" with Rust (cargo) installed, or "npm run build" in its folder.`,
  );
  error.code = 'ERR_ADDON_MISSING';
  throw error;
}

module.exports = load();
