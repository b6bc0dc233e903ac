const { AuditBatcher } = require('../../index.js')

const url = process.env.AUDIT_TEST_DATABASE_URL
const table = process.env.AUDIT_TEST_TABLE

test('memory sink: log, flush, read back', async () => {
  const audit = new AuditBatcher({ sink: 'memory' })
  audit.log({ action: 'tool.call', actor: 'user:42' })
  await audit.flush()
  expect(audit.memoryEntries()).toMatchObject([{ action: 'tool.call', actor: 'user:42' }])
})

test('postgres: log, flush, close', async () => {
  const audit = new AuditBatcher({ connectionString: url, table })
  await audit.ensureSchema()
  audit.log({ action: 'tool.call' })
  expect(await audit.flush()).toEqual({ written: 1, pending: 0 })
  await audit.close()
})

test('postgres: a batcher left open (pool connected, never closed) does not keep jest alive', async () => {
  const audit = new AuditBatcher({ connectionString: url, table })
  audit.log({ action: 'left.open' })
  await audit.flush()
})
