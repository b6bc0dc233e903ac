/** A user's vitest suite: the memory sink instead of a database. */
import { describe, expect, it } from 'vitest';
import { AuditBatcher } from 'audit-batcher';
import { signUp } from './signup.ts';

describe('signUp', () => {
  it('audits a rejected signup', async () => {
    const audit = new AuditBatcher({ sink: 'memory' });
    expect(signUp(audit, 'not-an-email')).toEqual({ ok: false });
    await audit.flush();
    expect(audit.memoryEntries()).toMatchObject([
      { action: 'user.signup', actor: 'not-an-email', outcome: 'rejected', payload: { reason: 'invalid email' } },
    ]);
  });

  it('audits a successful signup', async () => {
    const audit = new AuditBatcher({ sink: 'memory' });
    signUp(audit, 'a@example.com');
    await audit.close();
    expect(audit.memoryEntries().map((e) => e.outcome)).toEqual(['success']);
  });
});
