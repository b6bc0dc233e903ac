/**
 * What the spool suites share: temporary directories removed at the end, and fresh tables of the default
 * shape.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { AuditBatcher } from '../../index.js';
import { uniqueTable } from './fixture.ts';

/** Makes fresh directories under the OS temp dir; `removeAll()` (in afterAll) removes every one made. */
export function tempDirs(): { make(tag: string): string; removeAll(): void } {
  const made: string[] = [];
  return {
    make(tag) {
      const d = fs.mkdtempSync(path.join(os.tmpdir(), `audit-spool-${tag}-`));
      made.push(d);
      return d;
    },
    removeAll() {
      for (const d of made.splice(0)) fs.rmSync(d, { recursive: true, force: true });
    },
  };
}

/** A new table of the product's default shape, made by `ensureSchema()`, on the database at `url`. */
export async function newTable(url: string, prefix: string): Promise<string> {
  const table = uniqueTable(prefix);
  const b = new AuditBatcher({ connectionString: url, table });
  await b.ensureSchema();
  await b.close();
  return table;
}
