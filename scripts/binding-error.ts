/**
 * Run after `napi build --js binding.js`: replaces the generated loader's "Cannot find native binding"
 * error (which blames an npm bug whatever happened) with one that names the platform it looked for and
 * the two ways to get a binary there: the prebuilt package, or a build from source with cargo.
 *
 * The block it replaces is found by its text; if a new @napi-rs/cli writes it differently this script
 * fails the build rather than ship the generic message (__test__/install.test.ts checks the result).
 *
 *   tsx scripts/binding-error.ts [binding.js]
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const file = process.argv[2] ?? join(root, 'binding.js');
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as {
  name: string;
  version: string;
  napi: { binaryName: string; targets: string[] };
};

/** napi's platform names (`<platform>-<arch>[-abi]`, as in npm/<name>/) of the targets in package.json. */
function platformName(triple: string): string {
  const [cpu, , system, abi] = triple.split('-');
  const arch = cpu === 'x86_64' ? 'x64' : cpu === 'aarch64' ? 'arm64' : cpu!;
  if (triple.includes('apple-darwin')) return `darwin-${arch}`;
  if (triple.includes('windows')) return `win32-${arch}-${system === 'windows' ? abi : system}`;
  return `${system}-${arch}-${abi}`;
}
const prebuilt = pkg.napi.targets.map(platformName);

const MARKER = '// audit-batcher: the error when no binary loads';
const replacement = `${MARKER} (written by scripts/binding-error.ts after napi build)
if (!nativeBinding) {
  const prebuilt = ${JSON.stringify(prebuilt)}
  const abi = process.platform === 'linux' ? (isMusl() ? '-musl' : '-gnu') : process.platform === 'win32' ? '-msvc' : ''
  const platform = \`\${process.platform}-\${process.arch}\${abi}\`
  const runtime = process.versions.bun
    ? \`Bun \${process.versions.bun}\`
    : process.versions.deno
      ? \`Deno \${process.versions.deno}\`
      : \`Node.js \${process.version}\`
  const pkg = '${pkg.name}-' + platform
  const failures = loadErrors
    .filter((e) => !(e && e.code === 'MODULE_NOT_FOUND'))
    .map((e) => '  - ' + String((e && e.message) || e).split('\\n')[0])
  const error = new Error(
    \`${pkg.name}: no native binary loaded for \${platform} (\${runtime}).\\n\` +
      (failures.length > 0 ? 'A binary was found but did not load:\\n' + failures.join('\\n') + '\\n' : '') +
      'Two ways to fix it:\\n' +
      (prebuilt.includes(platform)
        ? \`  1. Install the prebuilt package: npm install \${pkg}@${pkg.version}\\n\` +
          '     (npm installs it with ${pkg.name} as an optional dependency, unless optional dependencies were\\n' +
          '     left out: --omit=optional, --no-optional, or a lock file written on another platform.)\\n'
        : \`  1. There is no prebuilt package for \${platform} (prebuilt: \${prebuilt.join(', ')}).\\n\`) +
      '  2. Build from source (needs Rust\\'s cargo): in a clone of ${pkg.name}, run npm ci && npm run build (it writes\\n' +
      \`     ${pkg.napi.binaryName}.\${platform}.node beside binding.js), then install the clone: npm install <path to the clone>\`,
  )
  error.code = 'ERR_AUDIT_NATIVE_BINDING'
  if (loadErrors.length > 0) error.cause = createLoadErrorChain(loadErrors)
  throw error
}
`;

const source = readFileSync(file, 'utf8');
if (source.includes(MARKER)) {
  process.exit(0);
}
const start = source.indexOf('if (!nativeBinding) {\n  if (loadErrors.length > 0) {');
const endText = 'throw new Error(`Failed to load native binding`)\n}\n';
const end = source.indexOf(endText, start);
if (start < 0 || end < 0) {
  console.error(
    `scripts/binding-error.ts: the load-failure block of ${file} was not found (did @napi-rs/cli change its loader?); ` +
      'update this script so the error still names the platform and both fixes.',
  );
  process.exit(1);
}
writeFileSync(file, source.slice(0, start) + replacement + source.slice(end + endText.length));
