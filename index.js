// audit-batcher's entry point: the native binding that napi-rs generates (binding.js, typed by index.d.ts),
// plus one fast path written in JavaScript.
//
// log(entry) is on every request's hot path. Reading an entry's eight properties through N-API costs a
// string lookup each; here V8 reads them (inline-cached) and serialises the payload, and the native side
// receives the fields one by one. Anything unusual (not a plain object, a payload JSON.stringify refuses)
// takes the native log(), which checks everything and throws the typed error, so both paths accept and
// refuse exactly the same entries.
'use strict'

module.exports = require('./binding.js')

const proto = module.exports.AuditBatcher.prototype
const nativeLog = proto.log
const logFields = proto.logFields

Object.defineProperty(proto, 'log', {
  configurable: true,
  writable: true,
  value: function log(entry) {
    if (typeof entry !== 'object' || entry === null || Array.isArray(entry) || entry instanceof Date) {
      return nativeLog.call(this, entry)
    }
    const payload = entry.payload
    let json
    if (payload !== undefined) {
      try {
        json = JSON.stringify(payload)
      } catch {
        return nativeLog.call(this, entry)
      }
      if (typeof json !== 'string') return nativeLog.call(this, entry)
    }
    return logFields.call(
      this,
      entry.action,
      entry.tenantId,
      entry.actor,
      entry.resource,
      entry.outcome,
      json,
      entry.id,
      entry.occurredAt,
      entry.critical,
    )
  },
})
