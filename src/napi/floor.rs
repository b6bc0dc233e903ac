//! `_logFloor`: the benchmark's floor for `log()`. Not part of the API.

use napi::bindgen_prelude::Unknown;
use napi_derive::napi;

use super::AuditBatcher;

#[napi]
impl AuditBatcher {
    /// Does nothing. It exists for the benchmark (`bench/worker.ts`) only: it takes the same nine
    /// arguments as the native `logFields`, the method `index.js`'s `log()` calls after
    /// `JSON.stringify` of the payload, so that `JSON.stringify` plus a call of this method is `log()`'s
    /// floor: the cost of serialising the payload and crossing into native code with those arguments,
    /// with none of `log()`'s own work. Not part of the API.
    #[allow(clippy::too_many_arguments)]
    #[napi(catch_unwind, js_name = "_logFloor", skip_typescript)]
    pub fn log_floor(
        &self,
        _action: Unknown,
        _tenant_id: Unknown,
        _actor: Unknown,
        _resource: Unknown,
        _outcome: Unknown,
        _payload_json: Unknown,
        _id: Unknown,
        _occurred_at: Unknown,
        _critical: Unknown,
    ) {
    }
}
