import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['__test__/**/*.test.ts', 'examples/**/*.test.ts'],
    globalSetup: ['__test__/support/global-setup.ts'],
    // One test file at a time: the files share one PostgreSQL server and the
    // fault-injection tests are timing sensitive; the machine has 2 cores.
    fileParallelism: false,
    testTimeout: 30_000,
    hookTimeout: 60_000,
    teardownTimeout: 30_000,
    // Child processes (not worker threads): a native addon that misbehaves
    // takes down only its own test file's process.
    pool: 'forks',
    reporters: ['default', './__test__/support/summary-reporter.ts'],
  },
});
