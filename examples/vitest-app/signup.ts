/** A piece of a user's app: signing up audits what happened. */
import type { AuditBatcher } from 'audit-batcher';

export function signUp(audit: AuditBatcher, email: string): { ok: boolean } {
  if (!email.includes('@')) {
    audit.log({ action: 'user.signup', actor: email, outcome: 'rejected', payload: { reason: 'invalid email' } });
    return { ok: false };
  }
  audit.log({ action: 'user.signup', actor: email, outcome: 'success' });
  return { ok: true };
}
