'use strict';

// Names of the prebuilt addon for this machine, as napi-rs lays them out: a file
// `connect-session-knex.<platform-arch-abi>.node` beside the package, or a package
// `connect-session-knex-<platform-arch-abi>` (e.g. linux-x64-gnu, darwin-arm64, win32-x64-msvc).
const fs = require('node:fs');
const path = require('node:path');

const BINARY_NAME = 'connect-session-knex';
const root = path.join(__dirname, '..');

/** Tells whether this Linux uses musl rather than glibc, the way napi-rs's loader does. */
function isMusl() {
  try {
    return fs.readFileSync('/usr/bin/ldd', 'utf8').includes('musl');
  } catch {
    // No ldd: ask the process report, skipping its slow network section.
  }
  if (!process.report || typeof process.report.getReport !== 'function') return false;
  process.report.excludeNetwork = true;
  const report = /** @type {any} */ (process.report.getReport());
  if (report && report.header && report.header.glibcVersionRuntime) return false;
  const objects = report && Array.isArray(report.sharedObjects) ? report.sharedObjects : [];
  return objects.some((/** @type {string} */ file) => file.includes('libc.musl-') || file.includes('ld-musl-'));
}

/**
 * Returns the napi-rs platform names that fit this machine, most specific first.
 * @returns {string[]}
 */
function platformNames() {
  const { platform, arch } = process;
  switch (platform) {
    case 'linux': {
      const musl = isMusl();
      if (arch === 'arm') return [musl ? 'linux-arm-musleabihf' : 'linux-arm-gnueabihf'];
      return [`linux-${arch}-${musl ? 'musl' : 'gnu'}`];
    }
    case 'darwin':
      return ['darwin-universal', `darwin-${arch}`];
    case 'win32':
      return [`win32-${arch}-msvc`];
    case 'android':
      return [arch === 'arm' ? 'android-arm-eabi' : `android-${arch}`];
    default:
      return [`${platform}-${arch}`];
  }
}

/**
 * Finds a prebuilt addon for this machine without loading it.
 * @returns {{ kind: 'file' | 'package', name: string, path: string } | undefined}  `path` is
 *   the file to `require`
 */
function findPrebuilt() {
  const names = platformNames();
  for (const name of names) {
    const file = path.join(root, `${BINARY_NAME}.${name}.node`);
    if (fs.existsSync(file)) return { kind: 'file', name: file, path: file };
  }
  for (const name of names) {
    const id = `${BINARY_NAME}-${name}`;
    try {
      return { kind: 'package', name: id, path: require.resolve(id, { paths: [root] }) };
    } catch {
      // not installed
    }
  }
  return undefined;
}

module.exports = { BINARY_NAME, platformNames, findPrebuilt, root };
