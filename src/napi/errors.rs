//! The JavaScript errors the addon throws or rejects with. Each carries a stable `code`.

use napi::bindgen_prelude::{JsObjectValue, JsValue, Object, Unknown};
use napi::{Env, JsError, JsTypeError, Status};

/// `log()` was given an entry that breaks a rule (TypeError).
pub const INVALID_ENTRY: &str = "ERR_AUDIT_INVALID_ENTRY";
/// The constructor was given a bad option (TypeError).
pub const INVALID_OPTIONS: &str = "ERR_AUDIT_INVALID_OPTIONS";
/// A flush (or `close()`'s final flush, or `ensureSchema()`) failed.
pub const FLUSH_FAILED: &str = "ERR_AUDIT_FLUSH_FAILED";
/// The buffer is full and `onBufferFull` is `'reject'`.
pub const BUFFER_FULL: &str = "ERR_AUDIT_BUFFER_FULL";
/// The batcher was closed.
pub const CLOSED: &str = "ERR_AUDIT_CLOSED";
/// A method that needs `sink: 'memory'` was called on a PostgreSQL batcher.
pub const NOT_MEMORY_SINK: &str = "ERR_AUDIT_NOT_MEMORY_SINK";

/// The JavaScript class of an error.
#[derive(Clone, Copy)]
pub enum Kind {
    Error,
    TypeError,
}

/// Extra properties set on an error object (`sqlstate`, `pending`, ...).
pub enum Extra<'a> {
    Str(&'a str, &'a str),
    Num(&'a str, f64),
}

/// Makes an error object with `message`, `code` and the extra properties.
pub fn make(
    env: &Env,
    kind: Kind,
    code: &str,
    message: &str,
    extra: &[Extra],
) -> napi::Result<Object<'static>> {
    let error = napi::Error::new(code, message);
    // SAFETY: `env` is the live environment of the current call.
    let raw = unsafe {
        match kind {
            Kind::Error => JsError::from(error).into_value(env.raw()),
            Kind::TypeError => JsTypeError::from(error).into_value(env.raw()),
        }
    };
    if raw.is_null() {
        return Err(napi::Error::new(Status::GenericFailure, message.to_owned()));
    }
    // SAFETY: `raw` is the error object just created in `env`.
    let mut obj = Object::from_raw(env.raw(), raw);
    for e in extra {
        match *e {
            Extra::Str(k, v) => obj.set_named_property(k, v)?,
            Extra::Num(k, v) => obj.set_named_property(k, v)?,
        }
    }
    Ok(obj)
}

/// Throws the error now; the returned value tells napi-rs that an exception is pending.
pub fn throw(env: &Env, kind: Kind, code: &str, message: &str) -> napi::Error {
    match make(env, kind, code, message, &[]) {
        Ok(obj) => {
            if let Err(e) = env.throw(obj) {
                return e;
            }
            napi::Error::new(Status::PendingException, message.to_owned())
        }
        Err(e) => e,
    }
}

/// A rejection value for a promise: the error object, carried so napi-rs rejects with it as it is.
pub fn reject(env: &Env, kind: Kind, code: &str, message: &str, extra: &[Extra]) -> napi::Error {
    rejection(env, make(env, kind, code, message, extra))
}

/// A made error object as a rejection value (or the error of making it).
pub fn rejection(env: &Env, made: napi::Result<Object>) -> napi::Error {
    match made {
        // SAFETY: the object belongs to `env`, which is live during this callback.
        Ok(obj) => napi::Error::from(unsafe { Unknown::from_raw_unchecked(env.raw(), obj.raw()) }),
        Err(e) => e,
    }
}

/// The error for a failed write: `code: 'ERR_AUDIT_FLUSH_FAILED'`, with `sqlstate` and `pending` when known.
pub fn write_failed<'a>(
    env: &'a Env,
    message: &str,
    sqlstate: Option<&str>,
    pending: Option<usize>,
) -> napi::Result<Object<'a>> {
    let mut extra = Vec::new();
    if let Some(pending) = pending {
        extra.push(Extra::Num("pending", pending as f64));
    }
    if let Some(code) = sqlstate {
        extra.push(Extra::Str("sqlstate", code));
    }
    make(env, Kind::Error, FLUSH_FAILED, message, &extra)
}
