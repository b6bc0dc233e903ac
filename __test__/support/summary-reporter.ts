/**
 * Ends the vitest run with one plain line, `vitest: N passed, N failed, N skipped`, that CI logs and
 * humans can read without ANSI colours.
 */
import type { Reporter, TestModule } from 'vitest/node';

export default class SummaryReporter implements Reporter {
  onTestRunEnd(testModules: ReadonlyArray<TestModule>): void {
    const count = { passed: 0, failed: 0, skipped: 0 };
    for (const module of testModules) {
      if (module.state() === 'failed' && module.children.size === 0) count.failed++;
      for (const test of module.children.allTests()) {
        const state = test.result().state;
        if (state === 'passed') count.passed++;
        else if (state === 'failed') count.failed++;
        else count.skipped++;
      }
    }
    process.stdout.write(`vitest: ${count.passed} passed, ${count.failed} failed, ${count.skipped} skipped\n`);
  }
}
