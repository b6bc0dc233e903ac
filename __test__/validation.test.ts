/**
 * Bad input: every invalid entry and option gets a typed error naming what was wrong, at the call that
 * made it, and nothing already accepted is lost because of it.
 */
import { describe, expect, it } from 'vitest';
import { AuditBatcher, type AuditBatcherOptions } from '../index.js';
import { thrownBy } from './support/fixture.ts';

const circular: Record<string, unknown> = {};
circular['self'] = circular;

const invalidEntries: Array<[string, unknown, string]> = [
  ['no action', { actor: 'x' }, '`action` is required'],
  ['empty action', { action: '' }, '`action` must be a non-empty string'],
  ['action not a string', { action: 42 }, '`action` must be a non-empty string, got a number'],
  ['actor not a string', { action: 'a', actor: 7 }, '`actor` must be a string, got a number'],
  ['tenantId an object', { action: 'a', tenantId: {} }, '`tenantId` must be a string, got an object'],
  ['resource an array', { action: 'a', resource: ['x'] }, '`resource` must be a string, got an array'],
  ['outcome a boolean', { action: 'a', outcome: true }, '`outcome` must be a string, got a boolean'],
  ['circular payload', { action: 'a', payload: circular }, '`payload` is not JSON-serialisable'],
  ['BigInt payload', { action: 'a', payload: { n: 10n } }, '`payload` is not JSON-serialisable'],
  ['function payload', { action: 'a', payload: () => 1 }, '`payload` is not JSON-serialisable'],
  ['symbol payload', { action: 'a', payload: Symbol('s') }, '`payload` is not JSON-serialisable'],
  ['id not a uuid', { action: 'a', id: 'not-a-uuid' }, '`id` must be a UUID'],
  ['id a number', { action: 'a', id: 1 }, '`id` must be a UUID string'],
  [
    'id one character too long',
    { action: 'a', id: '01932c07-8f3a-7c3e-9b1d-3f0a2c4e5d6f0' },
    '`id` must be a UUID in canonical 8-4-4-4-12 hex form, got "01932c07-8f3a-7c3e-9b1d-3f0a2c4e5d6f0"',
  ],
  ['id with a non-ASCII digit', { action: 'a', id: '01932c07-8f3a-7c3e-9b1d-3f0a2c4e5d6é' }, 'got "01932c07-8f3a-7c3e-9b1d-3f0a2c4e5d6é"'],
  ['id braced', { action: 'a', id: '{01932c07-8f3a-7c3e-9b1d-3f0a2c4e5d6f}' }, '`id` must be a UUID in canonical'],
  ['occurredAt invalid Date', { action: 'a', occurredAt: new Date('nope') }, '`occurredAt` must be a valid Date'],
  ['occurredAt garbage string', { action: 'a', occurredAt: 'yesterday' }, '`occurredAt` must be an ISO 8601'],
  ['occurredAt without offset', { action: 'a', occurredAt: '2026-01-01T00:00:00' }, '`occurredAt` must be an ISO 8601'],
  ['occurredAt NaN', { action: 'a', occurredAt: Number.NaN }, '`occurredAt` must be finite epoch milliseconds'],
  ['occurredAt Infinity', { action: 'a', occurredAt: Infinity }, '`occurredAt` must be finite epoch milliseconds'],
  ['occurredAt boolean', { action: 'a', occurredAt: true }, '`occurredAt` must be a Date, an ISO 8601 string or epoch'],
  ['critical not a boolean', { action: 'a', critical: 'yes' }, '`critical` must be a boolean, got a string'],
  ['entry null', null, '`entry` must be an object, got null'],
  ['entry a string', 'tool.call', '`entry` must be an object, got a string'],
  ['entry an array', [{ action: 'a' }], '`entry` must be an object, got an array'],
];

describe('invalid entries', () => {
  it.each(invalidEntries)('%s: TypeError ERR_AUDIT_INVALID_ENTRY naming the field', (_, entry, message) => {
    const audit = new AuditBatcher({ sink: 'memory' });
    const err = thrownBy(() => audit.log(entry as never));
    expect(err).toBeInstanceOf(TypeError);
    expect(err.code).toBe('ERR_AUDIT_INVALID_ENTRY');
    expect(err.message).toContain(message);
    expect(audit.pending).toBe(0);
  });

  it('take nothing, and leave what was already buffered intact and in order', async () => {
    const audit = new AuditBatcher({ sink: 'memory' });
    const ids = [audit.log({ action: 'one' }), audit.log({ action: 'two' })];
    for (const [, entry] of invalidEntries) thrownBy(() => audit.log(entry as never));
    ids.push(audit.log({ action: 'three' }));
    expect(audit.pending).toBe(3);
    expect(audit.stats()).toMatchObject({ logged: 3, buffered: 3 });
    await audit.flush();
    expect(audit.memoryEntries().map((e) => e.id)).toEqual(ids);
  });

  it('accept null and undefined as "absent" for optional fields', async () => {
    const audit = new AuditBatcher({ sink: 'memory' });
    audit.log({ action: 'a', actor: null, tenantId: undefined, payload: undefined, occurredAt: null } as never);
    await audit.flush();
    expect(audit.memoryEntries()[0]).toMatchObject({ action: 'a', payload: {} });
    expect(audit.memoryEntries()[0]?.actor).toBeUndefined();
  });

  it('capture the payload at log(): later mutation is not recorded', async () => {
    const audit = new AuditBatcher({ sink: 'memory' });
    const payload = { step: 1 };
    audit.log({ action: 'a', payload });
    payload.step = 2;
    await audit.flush();
    expect(audit.memoryEntries()[0]?.payload).toEqual({ step: 1 });
  });

  it('surface an exception thrown by a getter on the entry as it is', () => {
    const audit = new AuditBatcher({ sink: 'memory' });
    const entry = {
      action: 'a',
      get actor(): string {
        throw new RangeError('boom from getter');
      },
    };
    expect(() => audit.log(entry)).toThrow('boom from getter');
    expect(audit.pending).toBe(0);
  });
});

const invalidOptions: Array<[string, unknown, string]> = [
  ['no options', undefined, '`options` must be an object'],
  ['missing connectionString', {}, '`connectionString` is required'],
  ['blank connectionString', { connectionString: '  ' }, '`connectionString` is required'],
  ['connectionString a number', { connectionString: 5432 }, '`connectionString` must be a string'],
  ['unparsable connectionString', { connectionString: 'postgres://u@h:port/d' }, '`connectionString` is not a valid'],
  ['poolSize 0', { sink: 'memory', poolSize: 0 }, '`poolSize` must be an integer from 1'],
  ['poolSize fractional', { sink: 'memory', poolSize: 1.5 }, '`poolSize` must be an integer'],
  ['poolSize a string', { sink: 'memory', poolSize: '2' }, '`poolSize` must be a number, got a string'],
  ['maxBatchRows negative', { sink: 'memory', maxBatchRows: -1 }, '`maxBatchRows` must be an integer from 1'],
  ['maxBatchRows too large', { sink: 'memory', maxBatchRows: 1e9 }, '`maxBatchRows` must be an integer from 1 to 100000'],
  ['connectTimeoutMs 0', { sink: 'memory', connectTimeoutMs: 0 }, '`connectTimeoutMs` must be an integer'],
  ['table with a quote', { sink: 'memory', table: 'audit"log' }, '`table` "audit\\"log" is not a plain SQL identifier'],
  ['table with a semicolon', { sink: 'memory', table: 'a; DROP TABLE x' }, '`table`'],
  ['table three parts', { sink: 'memory', table: 'a.b.c' }, '`table`'],
  ['table too long', { sink: 'memory', table: 'x'.repeat(64) }, 'longer than 63 bytes'],
  ['columns not an object', { sink: 'memory', columns: 'actor' }, '`columns` must be an object'],
  ['columns unknown field', { sink: 'memory', columns: { user: 'u' } }, '`columns.user` is not an entry field'],
  ['columns bad name', { sink: 'memory', columns: { actor: 'user id' } }, '`columns.actor`'],
  ['columns not a string', { sink: 'memory', columns: { actor: 1 } }, '`columns.actor` must be a column name'],
  ['columns collide', { sink: 'memory', columns: { actor: 'action' } }, 'which another field already uses'],
  ['sink unknown', { sink: 'file' }, "`sink` must be 'postgres' or 'memory'"],
  ['misspelt option', { sink: 'memory', maxBatchSize: 10 }, '`maxBatchSize` is not an option'],
  ['sampleRate above 1', { sink: 'memory', sampleRate: 1.5 }, '`sampleRate` must be a number from 0 to 1, got 1.5'],
  ['sampleRate a string', { sink: 'memory', sampleRate: '0.5' }, '`sampleRate` must be a number, got a string'],
  ['sampleRates not an object', { sink: 'memory', sampleRates: 0.5 }, '`sampleRates` must be an object'],
  ['sampleRates bad rate', { sink: 'memory', sampleRates: { 'file.read': -1 } }, '`sampleRates.file.read` must be a number from 0 to 1'],
  ['onBufferFull unknown', { sink: 'memory', onBufferFull: 'block' }, "`onBufferFull` must be 'reject' or 'drop'"],
  ['flushIntervalMs 0', { sink: 'memory', flushIntervalMs: 0 }, '`flushIntervalMs` must be an integer from 1'],
  ['flushAtEntries fractional', { sink: 'memory', flushAtEntries: 2.5 }, '`flushAtEntries` must be an integer'],
  ['flushAtEntries above the bound', { sink: 'memory', flushAtEntries: 10, maxBufferedEntries: 5 }, '`flushAtEntries` must not exceed maxBufferedEntries (5)'],
  ['maxBufferedEntries 0', { sink: 'memory', maxBufferedEntries: 0 }, '`maxBufferedEntries` must be an integer from 1'],
  ['maxBufferedBytes too small', { sink: 'memory', maxBufferedBytes: 10 }, '`maxBufferedBytes` must be an integer from 1024'],
  ['flushOnExit not a boolean', { sink: 'memory', flushOnExit: 'yes' }, '`flushOnExit` must be a boolean, got a string'],
  ['closeTimeoutMs negative', { sink: 'memory', closeTimeoutMs: -5 }, '`closeTimeoutMs` must be an integer from 0'],
];

describe('invalid options', () => {
  it.each(invalidOptions)('%s: TypeError ERR_AUDIT_INVALID_OPTIONS naming the option', (_, options, message) => {
    const err = thrownBy(() => new AuditBatcher(options as AuditBatcherOptions));
    expect(err).toBeInstanceOf(TypeError);
    expect(err.code).toBe('ERR_AUDIT_INVALID_OPTIONS');
    expect(err.message).toContain(message);
  });

  it('accept schema-qualified tables and Prisma-style camelCase names', () => {
    expect(
      () =>
        new AuditBatcher({
          connectionString: 'postgres://u@127.0.0.1/d',
          table: 'audit.AuditLog',
          columns: { occurredAt: 'createdAt', actor: 'userId' },
        }),
    ).not.toThrow();
  });
});
