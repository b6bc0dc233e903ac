const { AuditBatcher } = require('audit-batcher')
const { placeOrder } = require('./orders.cjs')

test('placing an order is audited', async () => {
  const audit = new AuditBatcher({ sink: 'memory' })
  const { orderAuditId } = placeOrder(audit, 7, ['book'])
  await audit.flush()
  expect(audit.memoryEntries()).toEqual([
    expect.objectContaining({ id: orderAuditId, action: 'order.placed', actor: 'user:7', payload: { items: ['book'] } }),
  ])
})
