//! Settles the promises of a batcher on the JavaScript thread, as many as are done per wake-up.
//!
//! The rule: every promise an `AuditBatcher` method returns is made here. An outcome known at the call
//! (a closed batcher, invalid input, nothing to wait for) settles the promise at once ([`Settler::settled`]);
//! otherwise the work runs on the addon's runtime and reports through a [`Completion`]. No method uses
//! napi-rs's own promise helpers.
//!
//! A promise made by napi-rs's `spawn_future` carries its own threadsafe function, an error object with a
//! captured stack and an environment cleanup hook: tens of microseconds of main-thread work per flush, and
//! one event-loop wake-up per promise. Here one threadsafe function serves every flush of a batcher:
//! finished flushes queue their outcome, the first one in an empty queue wakes the JavaScript thread, and
//! that wake-up settles everything queued. With 64 flushes sharing one statement, that is one wake-up, not
//! 64.
//!
//! Guarantees:
//! - a promise settles on the JavaScript thread, with the outcome its work reported, exactly once; a
//!   [`Completion`] dropped without reporting (its task was dropped with the runtime) rejects it;
//! - while any promise is unsettled the threadsafe function is referenced, so `await audit.flush()` at the
//!   end of a script keeps Node running until the flush is done; with none pending it is unreferenced and
//!   never keeps the process alive;
//! - after Node tore the environment down (process exit, worker terminated), finishing a flush touches
//!   nothing of it.

use std::collections::HashMap;
use std::ffi::c_void;
use std::ptr;
use std::sync::{Arc, OnceLock};

use napi::bindgen_prelude::{JsValue, PromiseRaw, ToNapiValue};
use napi::{sys, Env};
use parking_lot::Mutex;

use super::errors::Failure;
use super::types::FlushResult;
use crate::batcher::FlushOutcome;
use crate::uuid7::Uuid;

/// What a promise resolves with.
#[derive(Clone, Copy, Debug)]
pub enum Value {
    /// `flush()`: `{ written, pending }`.
    Flush(FlushOutcome),
    /// `write()`: the entry's id.
    Id(Uuid),
    /// `close()`, `ensureSchema()`: `undefined`.
    Unit,
}

/// What a promise settles with: a value, or the error it rejects with.
pub type Outcome = Result<Value, Failure>;

/// The batcher's end: makes promises (JavaScript thread only) and hands out [`Completion`]s.
pub struct Settler {
    inner: Arc<Inner>,
}

/// A task's way back: report its outcome from any thread, once. Dropped without reporting, it rejects
/// its promise.
pub struct Completion {
    inner: Option<Arc<Inner>>,
    id: u64,
}

/// Releases the threadsafe function when the batcher and every unfinished flush are gone.
struct Inner {
    shared: Arc<Shared>,
}

/// What the threadsafe function's callback reaches through its context pointer.
struct Shared {
    /// `None` once Node finalized the threadsafe function, or after it was released.
    tsfn: Mutex<Option<RawTsfn>>,
    /// Outcomes reported and not yet delivered.
    done: Mutex<Vec<(u64, Outcome)>>,
    /// Unsettled promises. Only the JavaScript thread touches it.
    waiting: Mutex<Waiting>,
}

struct Waiting {
    next_id: u64,
    deferreds: HashMap<u64, RawDeferred>,
    /// Whether the threadsafe function is referenced (keeps the event loop alive).
    referenced: bool,
}

/// A threadsafe function handle; napi allows calling and releasing it from any thread.
#[derive(Clone, Copy)]
struct RawTsfn(sys::napi_threadsafe_function);
// SAFETY: napi_call_threadsafe_function and napi_release_threadsafe_function are thread-safe; ref and
// unref are only called on the JavaScript thread.
unsafe impl Send for RawTsfn {}

/// A promise's resolver; only ever used on the JavaScript thread that made it.
struct RawDeferred(sys::napi_deferred);
// SAFETY: it is stored in a `Shared` (so that type is Sync) but only read on the JavaScript thread.
unsafe impl Send for RawDeferred {}

impl Settler {
    /// Makes the batcher's threadsafe function, unreferenced. JavaScript thread only.
    pub fn new(env: &Env) -> napi::Result<Settler> {
        let shared = Arc::new(Shared {
            tsfn: Mutex::new(None),
            done: Mutex::new(Vec::new()),
            waiting: Mutex::new(Waiting {
                next_id: 0,
                deferreds: HashMap::new(),
                referenced: false,
            }),
        });
        let name = env.create_string("audit-batcher flush")?;
        let context = Arc::into_raw(shared.clone()) as *mut c_void;
        let mut raw = ptr::null_mut();
        // SAFETY: called on the JavaScript thread with live values; `context` is a leaked Arc that the
        // finalizer takes back.
        let status = unsafe {
            sys::napi_create_threadsafe_function(
                env.raw(),
                ptr::null_mut(),
                ptr::null_mut(),
                name.raw(),
                0,
                1,
                ptr::null_mut(),
                Some(finalize),
                context,
                Some(deliver),
                &mut raw,
            )
        };
        if status != sys::Status::napi_ok {
            // SAFETY: the threadsafe function was not made, so its finalizer will never take this back.
            drop(unsafe { Arc::from_raw(context as *const Shared) });
            return Err(napi::Error::from_reason(
                "audit-batcher: cannot create the flush threadsafe function",
            ));
        }
        // SAFETY: `raw` was just created on this thread.
        unsafe { sys::napi_unref_threadsafe_function(env.raw(), raw) };
        *shared.tsfn.lock() = Some(RawTsfn(raw));
        Ok(Settler {
            inner: Arc::new(Inner { shared }),
        })
    }

    /// The settler in `slot`, made there at the first call: how an object (`AuditBatcher`, `AuditWorker`)
    /// gets its one settler lazily, at the first method that returns a promise. JavaScript thread only.
    pub fn get_or_make<'s>(slot: &'s OnceLock<Settler>, env: &Env) -> napi::Result<&'s Settler> {
        if let Some(settler) = slot.get() {
            return Ok(settler);
        }
        let made = Settler::new(env)?;
        Ok(slot.get_or_init(|| made))
    }

    /// A new pending promise, and the completion that settles it. JavaScript thread only.
    pub fn promise<'env, T>(
        &self,
        env: &'env Env,
    ) -> napi::Result<(PromiseRaw<'env, T>, Completion)> {
        let (deferred, promise) = create_promise(env)?;
        let shared = &self.inner.shared;
        let mut waiting = shared.waiting.lock();
        let id = waiting.next_id;
        waiting.next_id += 1;
        waiting.deferreds.insert(id, RawDeferred(deferred));
        if !waiting.referenced {
            if let Some(tsfn) = *shared.tsfn.lock() {
                // SAFETY: JavaScript thread; the handle is live while it is in the slot.
                unsafe { sys::napi_ref_threadsafe_function(env.raw(), tsfn.0) };
                waiting.referenced = true;
            }
        }
        Ok((
            PromiseRaw::new(env.raw(), promise),
            Completion {
                inner: Some(self.inner.clone()),
                id,
            },
        ))
    }
}

/// A promise settled at once with `outcome`, for work with nothing to wait for; a rejection gets `cause`
/// (an exception caught while reading the input) as its `cause`. JavaScript thread only.
pub fn settled<'env, T>(
    env: &'env Env,
    outcome: Outcome,
    cause: Option<sys::napi_value>,
) -> napi::Result<PromiseRaw<'env, T>> {
    let (deferred, promise) = create_promise(env)?;
    let value = match (&outcome, cause) {
        (Err(failure), Some(cause)) => {
            // Throwing and catching again attaches the cause the same way a thrown error gets it.
            failure.throw(env, Some(cause));
            match super::errors::take_exception(env) {
                Some(error) => Err(error),
                None => render(env, outcome),
            }
        }
        _ => render(env, outcome),
    };
    settle(env, deferred, value);
    Ok(PromiseRaw::new(env.raw(), promise))
}

impl Completion {
    /// Queues the outcome; its promise settles on the JavaScript thread's next turn.
    pub fn complete(mut self, outcome: Outcome) {
        if let Some(inner) = self.inner.take() {
            queue(&inner.shared, self.id, outcome);
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            queue(
                &inner.shared,
                self.id,
                Err(Failure::internal(
                    "the addon's runtime stopped before the operation finished",
                )),
            );
        }
    }
}

/// Queues an outcome; whoever makes the queue non-empty wakes the JavaScript thread, and that wake-up
/// empties it. When the wake-up cannot be sent (Node is tearing the environment down), nothing will ever
/// be delivered: the queue is emptied so the outcomes are not kept for nothing.
fn queue(shared: &Shared, id: u64, outcome: Outcome) {
    let mut done = shared.done.lock();
    done.push((id, outcome));
    if done.len() > 1 {
        return;
    }
    let sent = match *shared.tsfn.lock() {
        // SAFETY: the handle is live while it is in the slot, and the slot's lock is held.
        Some(tsfn) => unsafe {
            sys::napi_call_threadsafe_function(
                tsfn.0,
                ptr::null_mut(),
                sys::ThreadsafeFunctionCallMode::nonblocking,
            ) == sys::Status::napi_ok
        },
        None => false,
    };
    if !sent {
        done.clear();
    }
}

/// The value a promise resolves with, or the error object it rejects with. JavaScript thread only.
fn render(env: &Env, outcome: Outcome) -> Result<sys::napi_value, sys::napi_value> {
    let raw = env.raw();
    // SAFETY: JavaScript thread, live environment.
    let thrown = |e: napi::Error| unsafe { napi::JsError::from(e).into_value(raw) };
    match outcome {
        // SAFETY (the three): JavaScript thread, live environment.
        Ok(Value::Flush(o)) => {
            unsafe { FlushResult::to_napi_value(raw, FlushResult::from(o)) }.map_err(thrown)
        }
        Ok(Value::Id(id)) => unsafe { String::to_napi_value(raw, id.to_string()) }.map_err(thrown),
        Ok(Value::Unit) => unsafe { <()>::to_napi_value(raw, ()) }.map_err(thrown),
        Err(failure) => match failure.to_object(env) {
            Ok(obj) => Err(obj.raw()),
            Err(e) => Err(thrown(e)),
        },
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(tsfn) = self.shared.tsfn.lock().take() {
            // SAFETY: the handle was live in the slot; releasing is allowed from any thread. Calls already
            // queued are still delivered, then Node finalizes it.
            unsafe {
                sys::napi_release_threadsafe_function(
                    tsfn.0,
                    sys::ThreadsafeFunctionReleaseMode::release,
                )
            };
        }
    }
}

fn create_promise(env: &Env) -> napi::Result<(sys::napi_deferred, sys::napi_value)> {
    let mut deferred = ptr::null_mut();
    let mut promise = ptr::null_mut();
    // SAFETY: JavaScript thread, live environment.
    let status = unsafe { sys::napi_create_promise(env.raw(), &mut deferred, &mut promise) };
    if status != sys::Status::napi_ok {
        return Err(napi::Error::from_reason(
            "audit-batcher: cannot create a promise",
        ));
    }
    Ok((deferred, promise))
}

fn settle(
    env: &Env,
    deferred: sys::napi_deferred,
    value: Result<sys::napi_value, sys::napi_value>,
) {
    // SAFETY: JavaScript thread; `deferred` is settled exactly once (it was just created, or just taken
    // out of `waiting`).
    unsafe {
        match value {
            Ok(v) => sys::napi_resolve_deferred(env.raw(), deferred, v),
            Err(e) => sys::napi_reject_deferred(env.raw(), deferred, e),
        };
    }
}

/// Runs on the JavaScript thread, once per wake-up: settles every queued outcome.
unsafe extern "C" fn deliver(
    env: sys::napi_env,
    _js_callback: sys::napi_value,
    context: *mut c_void,
    _data: *mut c_void,
) {
    // Null while Node tears the threadsafe function down: there is no JavaScript left to settle.
    if env.is_null() || context.is_null() {
        return;
    }
    // SAFETY: the context is the Arc leaked in `Settler::new`, alive until `finalize`.
    let shared = unsafe { &*(context as *const Shared) };
    let env = Env::from_raw(env);
    let done = std::mem::take(&mut *shared.done.lock());
    let ready: Vec<(RawDeferred, Outcome)> = {
        let mut waiting = shared.waiting.lock();
        let ready = done
            .into_iter()
            .filter_map(|(id, outcome)| waiting.deferreds.remove(&id).map(|d| (d, outcome)))
            .collect();
        if waiting.deferreds.is_empty() && waiting.referenced {
            if let Some(tsfn) = *shared.tsfn.lock() {
                // SAFETY: JavaScript thread; the handle is live while it is in the slot.
                unsafe { sys::napi_unref_threadsafe_function(env.raw(), tsfn.0) };
            }
            waiting.referenced = false;
        }
        ready
    };
    for (deferred, outcome) in ready {
        // A panic while rendering must not unwind into Node: the promise then rejects with a plain error.
        let value =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| render(&env, outcome)))
                .unwrap_or_else(|_| {
                    render(&env, Err(Failure::internal("rendering the outcome failed")))
                });
        settle(&env, deferred.0, value);
    }
}

/// Runs on the JavaScript thread when Node destroys the threadsafe function (released, or the
/// environment is going away): no call may reach it any more.
unsafe extern "C" fn finalize(_env: sys::napi_env, _data: *mut c_void, context: *mut c_void) {
    if context.is_null() {
        return;
    }
    // SAFETY: takes back the Arc leaked in `Settler::new`; Node calls the finalizer once.
    let shared = unsafe { Arc::from_raw(context as *const Shared) };
    shared.tsfn.lock().take();
}
