//! The JavaScript errors the addon throws or rejects with. Each carries a stable `code`; each is made from
//! one [`Failure`], whether it is thrown at once or rejects a promise later.

use std::ptr;

use napi::bindgen_prelude::{JsObjectValue, JsValue, Object};
use napi::{sys, Env, JsError, JsTypeError, Status};

use crate::batcher::{FlushError, LogError};
use crate::entry::InvalidEntry;
use crate::options::InvalidOption;
use crate::sink::WriteError;

/// `log()` was given an entry that breaks a rule, or that threw when read (TypeError).
pub const INVALID_ENTRY: &str = "ERR_AUDIT_INVALID_ENTRY";
/// The constructor (or `close()`, `metricsText()`) was given a bad option (TypeError).
pub const INVALID_OPTIONS: &str = "ERR_AUDIT_INVALID_OPTIONS";
/// A flush (or `close()`'s final flush, or `ensureSchema()`) failed.
pub const FLUSH_FAILED: &str = "ERR_AUDIT_FLUSH_FAILED";
/// The buffer is full and `onBufferFull` is `'reject'`.
pub const BUFFER_FULL: &str = "ERR_AUDIT_BUFFER_FULL";
/// The batcher was closed.
pub const CLOSED: &str = "ERR_AUDIT_CLOSED";
/// A method that needs `sink: 'memory'` was called on a PostgreSQL batcher.
pub const NOT_MEMORY_SINK: &str = "ERR_AUDIT_NOT_MEMORY_SINK";

/// An `AuditWorker` could not start (Redis or the group unreachable), or stopped with entries left
/// unacknowledged.
pub const WORKER_FAILED: &str = "ERR_AUDIT_WORKER_FAILED";

/// The JavaScript class of an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Error,
    TypeError,
}

/// An error to give JavaScript, described without touching the engine, so it can be made on any thread
/// and turned into an object later, on the JavaScript thread.
#[derive(Clone, Debug)]
pub struct Failure {
    pub kind: Kind,
    pub code: &'static str,
    pub message: String,
    /// PostgreSQL's SQLSTATE, for write failures that have one.
    pub sqlstate: Option<String>,
    /// Entries still buffered, for write failures.
    pub pending: Option<usize>,
}

impl Failure {
    fn new(kind: Kind, code: &'static str, message: String) -> Failure {
        Failure {
            kind,
            code,
            message,
            sqlstate: None,
            pending: None,
        }
    }

    /// `ERR_AUDIT_INVALID_OPTIONS`, a TypeError naming the option.
    pub fn invalid_option(e: &InvalidOption) -> Failure {
        Failure::new(
            Kind::TypeError,
            INVALID_OPTIONS,
            format!("audit-batcher: {e}"),
        )
    }

    /// `ERR_AUDIT_INVALID_ENTRY`, a TypeError naming the field.
    pub fn invalid_entry(e: &InvalidEntry) -> Failure {
        Failure::new(
            Kind::TypeError,
            INVALID_ENTRY,
            format!("audit-batcher: {e}"),
        )
    }

    /// Why `what` (`log()`, `write()`) did not take an entry.
    pub fn log(e: &LogError, what: &str) -> Failure {
        match e {
            LogError::Invalid(e) => Failure::invalid_entry(e),
            LogError::Closed => Failure::closed(what),
            LogError::BufferFull { .. } => Failure::new(
                Kind::Error,
                BUFFER_FULL,
                format!("audit-batcher: {what}: {e}"),
            ),
        }
    }

    /// `ERR_AUDIT_CLOSED`: `what` was called after `close()`.
    pub fn closed(what: &str) -> Failure {
        Failure::new(
            Kind::Error,
            CLOSED,
            format!("audit-batcher: {what} after close()"),
        )
    }

    /// Why `what` (`flush()`, `write()`, `close()`) did not write everything it was asked to.
    pub fn flush(e: &FlushError, what: &str) -> Failure {
        match e {
            FlushError::Closed => Failure::closed(what),
            FlushError::Failed { cause, pending } => {
                Failure::write_failed(cause, &format!("{what} failed: {e}"), Some(*pending))
            }
        }
    }

    /// `ERR_AUDIT_FLUSH_FAILED` with the cause's SQLSTATE and, when known, the entries still buffered.
    pub fn write_failed(cause: &WriteError, message: &str, pending: Option<usize>) -> Failure {
        Failure {
            sqlstate: cause.sqlstate.clone(),
            pending,
            ..Failure::new(
                Kind::Error,
                FLUSH_FAILED,
                format!("audit-batcher: {message}"),
            )
        }
    }

    /// `ERR_AUDIT_NOT_MEMORY_SINK`: `what` needs `sink: 'memory'`.
    pub fn not_memory_sink(what: &str) -> Failure {
        Failure::new(
            Kind::Error,
            NOT_MEMORY_SINK,
            format!("audit-batcher: {what} needs sink: 'memory'"),
        )
    }

    /// `ERR_AUDIT_FLUSH_FAILED` for a fault of the addon itself (a panic, a runtime that stopped).
    pub fn internal(what: &str) -> Failure {
        Failure::new(
            Kind::Error,
            FLUSH_FAILED,
            format!("audit-batcher: internal error: {what}"),
        )
    }

    /// `ERR_AUDIT_WORKER_FAILED`: `message` says what (it holds no password).
    pub fn worker_failed(message: &str) -> Failure {
        Failure::new(
            Kind::Error,
            WORKER_FAILED,
            format!("audit-batcher: {message}"),
        )
    }

    /// The error object. JavaScript thread only.
    pub fn to_object<'env>(&self, env: &'env Env) -> napi::Result<Object<'env>> {
        let error = napi::Error::new(self.code, &self.message);
        // SAFETY: `env` is the live environment of the current call.
        let raw = unsafe {
            match self.kind {
                Kind::Error => JsError::from(error).into_value(env.raw()),
                Kind::TypeError => JsTypeError::from(error).into_value(env.raw()),
            }
        };
        if raw.is_null() {
            return Err(napi::Error::new(
                Status::GenericFailure,
                self.message.clone(),
            ));
        }
        let mut obj = Object::from_raw(env.raw(), raw);
        if let Some(pending) = self.pending {
            obj.set_named_property("pending", pending as f64)?;
        }
        if let Some(code) = &self.sqlstate {
            obj.set_named_property("sqlstate", code.as_str())?;
        }
        Ok(obj)
    }

    /// Throws the error now, with `cause` (an exception caught while reading the input) as its `cause`;
    /// the returned value tells napi-rs that an exception is pending.
    pub fn throw(&self, env: &Env, cause: Option<sys::napi_value>) -> napi::Error {
        let obj = match self.to_object(env) {
            Ok(obj) => obj,
            Err(e) => return e,
        };
        if let Some(cause) = cause {
            // SAFETY: `cause` is a live value of `env`, taken in this same call.
            unsafe { set_cause(env, obj.raw(), cause) };
        }
        if let Err(e) = env.throw(obj) {
            return e;
        }
        napi::Error::new(Status::PendingException, self.message.clone())
    }
}

/// `error.cause = cause`; a failure leaves the error without a cause.
///
/// # Safety
/// `error` and `cause` must be live values of `env`, on its thread.
unsafe fn set_cause(env: &Env, error: sys::napi_value, cause: sys::napi_value) {
    // SAFETY: as the caller promises; a failed set leaves an exception pending, which is cleared.
    unsafe {
        if sys::napi_set_named_property(env.raw(), error, c"cause".as_ptr(), cause)
            != sys::Status::napi_ok
        {
            let mut ignored = ptr::null_mut();
            sys::napi_get_and_clear_last_exception(env.raw(), &mut ignored);
        }
    }
}

/// Takes the exception pending in the engine (a getter, a Proxy trap or a `toJSON` threw), so that it can
/// become the `cause` of a typed error. `None` when nothing is pending.
pub fn take_exception(env: &Env) -> Option<sys::napi_value> {
    let mut pending = false;
    // SAFETY (both): JavaScript thread, live environment.
    unsafe { sys::napi_is_exception_pending(env.raw(), &mut pending) };
    if !pending {
        return None;
    }
    let mut exception = ptr::null_mut();
    let status = unsafe { sys::napi_get_and_clear_last_exception(env.raw(), &mut exception) };
    (status == sys::Status::napi_ok && !exception.is_null()).then_some(exception)
}

/// How an exception reads in a message: its `message` when it is an Error, else its string form, else its
/// type. Never throws.
pub fn describe_exception(env: &Env, exception: sys::napi_value) -> String {
    let raw = env.raw();
    let mut text = ptr::null_mut();
    // SAFETY: `exception` is a live value of `env`; every failure is checked, and an exception raised by a
    // `toString` is cleared.
    unsafe {
        let mut is_error = false;
        sys::napi_is_error(raw, exception, &mut is_error);
        let status = if is_error {
            let mut message = ptr::null_mut();
            match sys::napi_get_named_property(raw, exception, c"message".as_ptr(), &mut message) {
                sys::Status::napi_ok => sys::napi_coerce_to_string(raw, message, &mut text),
                other => other,
            }
        } else {
            sys::napi_coerce_to_string(raw, exception, &mut text)
        };
        if status != sys::Status::napi_ok || text.is_null() {
            let mut ignored = ptr::null_mut();
            sys::napi_get_and_clear_last_exception(raw, &mut ignored);
            return "a value that cannot be shown".to_owned();
        }
        let mut len = 0usize;
        if sys::napi_get_value_string_utf8(raw, text, ptr::null_mut(), 0, &mut len)
            != sys::Status::napi_ok
        {
            return "a value that cannot be shown".to_owned();
        }
        let shown = len.min(500);
        let mut buf = vec![0u8; shown + 1];
        let mut written = 0usize;
        sys::napi_get_value_string_utf8(
            raw,
            text,
            buf.as_mut_ptr().cast(),
            shown + 1,
            &mut written,
        );
        buf.truncate(written);
        String::from_utf8_lossy(&buf).into_owned()
    }
}
