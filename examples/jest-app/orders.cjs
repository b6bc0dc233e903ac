// A piece of a user's app.
function placeOrder(audit, userId, items) {
  const id = audit.log({ action: 'order.placed', actor: `user:${userId}`, payload: { items } })
  return { orderAuditId: id }
}
module.exports = { placeOrder }
