//! Event callbacks (`onFlush`, `onError`, `onDeadLetter`, `onHighWater`): delivered on the JavaScript
//! thread, never keeping the process alive, and never able to crash it when the callback throws.

use napi::bindgen_prelude::{
    FunctionCallContext, FunctionRef, JsObjectValue, JsValue, JsValuesTupleIntoVec, Object, Unknown,
};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{sys, Env, Status};
use napi_derive::napi;
use std::ptr;

use super::errors::Failure;
use super::options::Callbacks;
use super::types::AuditRecord;
use crate::batcher::Observer;
use crate::entry::Entry;
use crate::sink::WriteError;

/// What `onFlush` receives: one INSERT statement committed.
#[napi(object)]
pub struct FlushEvent {
    /// Rows the statement wrote.
    pub rows: u32,
    /// Its duration, in milliseconds.
    pub latency_ms: f64,
}

/// What `onHighWater` receives: the buffer reached `highWaterMark`, or (with `streamLength`) a Redis
/// producer learnt that the stream(s) reached `redis.highWaterLength`.
#[napi(object)]
pub struct HighWaterEvent {
    /// Entries buffered at that moment.
    pub buffered: i64,
    /// Bytes those entries hold.
    pub buffered_bytes: i64,
    /// For `redis.highWaterLength`: the stream length learnt (all shards together). Absent for
    /// `highWaterMark`.
    pub stream_length: Option<i64>,
}

/// What `onDeadLetter` receives: an entry the table refused, now in the dead-letter table.
#[napi(object)]
pub struct DeadLetterEvent {
    pub entry: AuditRecord,
    pub error: String,
    pub sqlstate: Option<String>,
}

/// A write failure, turned into an `Error` (`code: 'ERR_AUDIT_FLUSH_FAILED'`) before `onError` sees it.
#[napi(object)]
pub struct ErrorEvent {
    pub message: String,
    pub sqlstate: Option<String>,
    pub pending: i64,
}

/// Weak (unref'd): a pending event never keeps the process alive.
type Tsfn<T> = ThreadsafeFunction<T, (), T, Status, false, true>;

/// The callbacks given in the options, ready to be called from any thread.
#[derive(Default)]
pub struct JsObserver {
    on_flush: Option<Tsfn<FlushEvent>>,
    on_error: Option<Tsfn<ErrorEvent>>,
    on_dead_letter: Option<Tsfn<DeadLetterEvent>>,
    on_high_water: Option<Tsfn<HighWaterEvent>>,
}

impl JsObserver {
    /// Whether any callback was given.
    pub fn is_empty(&self) -> bool {
        self.on_flush.is_none()
            && self.on_error.is_none()
            && self.on_dead_letter.is_none()
            && self.on_high_water.is_none()
    }
}

impl JsObserver {
    /// Wraps the callbacks given in the options, so that they can be called from any thread.
    pub fn new(env: &Env, callbacks: Callbacks) -> napi::Result<JsObserver> {
        Ok(JsObserver {
            on_flush: callbacks
                .on_flush
                .map(|f| make_tsfn(env, f, false))
                .transpose()?,
            on_error: callbacks
                .on_error
                .map(|f| make_tsfn(env, f, true))
                .transpose()?,
            on_dead_letter: callbacks
                .on_dead_letter
                .map(|f| make_tsfn(env, f, false))
                .transpose()?,
            on_high_water: callbacks
                .on_high_water
                .map(|f| make_tsfn(env, f, false))
                .transpose()?,
        })
    }
}

/// A threadsafe function around a native wrapper that calls `user` with the event and swallows what it
/// throws: an exception escaping a threadsafe call would end the process.
fn make_tsfn<T: JsValuesTupleIntoVec + Send + 'static>(
    env: &Env,
    user: FunctionRef<(), ()>,
    to_error: bool,
) -> napi::Result<Tsfn<T>> {
    let wrapper = env.create_function_from_closure::<T, (), _>(
        "auditBatcherEvent",
        move |ctx: FunctionCallContext| {
            let callback = user.borrow_back(ctx.env)?;
            let event: Unknown = ctx.get(0)?;
            let arg = if to_error {
                error_from_event(ctx.env, &event)?
            } else {
                event
            };
            call_ignoring_exceptions(ctx.env, callback.raw(), arg.raw());
            Ok(())
        },
    )?;
    wrapper
        .build_threadsafe_function::<T>()
        .weak::<true>()
        .callee_handled::<false>()
        .build()
}

/// Calls `f(arg)`; an exception it throws is cleared (the audit trail must not take the app down).
fn call_ignoring_exceptions(env: &Env, f: sys::napi_value, arg: sys::napi_value) {
    let raw = env.raw();
    let mut undefined = ptr::null_mut();
    let mut result = ptr::null_mut();
    // SAFETY: `f` and `arg` are live values of `env`, on its thread.
    unsafe {
        sys::napi_get_undefined(raw, &mut undefined);
        let status = sys::napi_call_function(raw, undefined, f, 1, &arg, &mut result);
        if status == sys::Status::napi_pending_exception {
            let mut exception = ptr::null_mut();
            sys::napi_get_and_clear_last_exception(raw, &mut exception);
        }
    }
}

fn error_from_event<'a>(env: &'a Env, event: &Unknown<'a>) -> napi::Result<Unknown<'a>> {
    // SAFETY: the wrapper is only ever called with an ErrorEvent object.
    let obj = unsafe { event.cast::<Object>()? };
    let message: String = obj.get_named_property("message")?;
    let pending: f64 = obj.get_named_property("pending")?;
    let sqlstate: Option<String> = obj.get_named_property("sqlstate")?;
    let cause = WriteError {
        sqlstate,
        ..WriteError::new(message.clone())
    };
    let err = Failure::write_failed(&cause, &message, Some(pending as usize)).to_object(env)?;
    // SAFETY: the error object belongs to `env`.
    Ok(unsafe { Unknown::from_raw_unchecked(env.raw(), err.raw()) })
}

fn send<T: JsValuesTupleIntoVec + 'static>(tsfn: &Option<Tsfn<T>>, event: impl FnOnce() -> T) {
    if let Some(tsfn) = tsfn {
        tsfn.call(event(), ThreadsafeFunctionCallMode::NonBlocking);
    }
}

impl Observer for JsObserver {
    fn on_flush(&self, rows: usize, latency_ms: f64) {
        send(&self.on_flush, || FlushEvent {
            rows: rows as u32,
            latency_ms,
        });
    }

    fn on_error(&self, cause: &WriteError, pending: usize) {
        send(&self.on_error, || ErrorEvent {
            message: format!("write failed: {cause}; entries still buffered: {pending}"),
            sqlstate: cause.sqlstate.clone(),
            pending: pending as i64,
        });
    }

    fn on_dead_letter(&self, entry: &Entry, cause: &WriteError) {
        send(&self.on_dead_letter, || DeadLetterEvent {
            entry: AuditRecord::from(entry),
            error: cause.message.clone(),
            sqlstate: cause.sqlstate.clone(),
        });
    }

    fn on_high_water(&self, buffered: usize, buffered_bytes: usize) {
        send(&self.on_high_water, || HighWaterEvent {
            buffered: buffered as i64,
            buffered_bytes: buffered_bytes as i64,
            stream_length: None,
        });
    }
}

impl JsObserver {
    /// A Redis producer learnt that the stream(s) reached `redis.highWaterLength`.
    pub fn on_stream_high_water(&self, length: u64, buffered: usize, buffered_bytes: usize) {
        send(&self.on_high_water, || HighWaterEvent {
            buffered: buffered as i64,
            buffered_bytes: buffered_bytes as i64,
            stream_length: Some(length as i64),
        });
    }
}
