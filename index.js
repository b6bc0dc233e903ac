// audit-batcher's entry point: the native binding that napi-rs generates (binding.js, typed by index.d.ts),
// plus one fast path written in JavaScript.
//
// log(entry) is on every request's hot path. Reading an entry's eight properties through N-API costs a
// string lookup each; here V8 reads them (inline-cached) and serialises the payload once, and the native
// side receives the fields one by one and checks them. Anything that is not a plain object takes the
// native log(), which reads and checks it itself. What a getter, a Proxy trap or a toJSON throws here is
// handed to the native side, which throws the typed error (ERR_AUDIT_INVALID_ENTRY) with it as `cause`;
// so both paths accept and refuse exactly the same entries, with the same errors, and run user code once.
'use strict'

module.exports = require('./binding.js')

const proto = module.exports.AuditBatcher.prototype
const nativeLog = proto.log
const logFields = proto.logFields
const entryThrew = proto.entryThrew

Object.defineProperty(proto, 'log', {
  configurable: true,
  writable: true,
  value: function log(entry) {
    if (typeof entry !== 'object' || entry === null) return nativeLog.call(this, entry)
    let field = 'entry'
    let action, tenantId, actor, resource, outcome, json, id, occurredAt, critical
    try {
      if (Array.isArray(entry) || entry instanceof Date) return nativeLog.call(this, entry)
      field = 'action'
      action = entry.action
      field = 'tenantId'
      tenantId = entry.tenantId
      field = 'actor'
      actor = entry.actor
      field = 'resource'
      resource = entry.resource
      field = 'outcome'
      outcome = entry.outcome
      field = 'payload'
      const payload = entry.payload
      if (payload !== undefined) {
        json = JSON.stringify(payload)
        // No JSON form (a function, a symbol): the payload itself goes, and the native side says so.
        if (typeof json !== 'string') json = payload
      }
      field = 'id'
      id = entry.id
      field = 'occurredAt'
      occurredAt = entry.occurredAt
      field = 'critical'
      critical = entry.critical
    } catch (cause) {
      return entryThrew.call(this, field, cause)
    }
    return logFields.call(this, action, tenantId, actor, resource, outcome, json, id, occurredAt, critical)
  },
})
