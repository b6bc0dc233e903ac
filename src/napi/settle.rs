//! Settles `flush()` and `write()` promises on the JavaScript thread, as many as are done per wake-up.
//!
//! A promise made by napi-rs's `spawn_future` carries its own threadsafe function, an error object with a
//! captured stack and an environment cleanup hook: tens of microseconds of main-thread work per flush, and
//! one event-loop wake-up per promise. Here one threadsafe function serves every flush of a batcher:
//! finished flushes queue their outcome, the first one in an empty queue wakes the JavaScript thread, and
//! that wake-up settles everything queued. With 64 flushes sharing one statement, that is one wake-up, not
//! 64.
//!
//! Guarantees:
//! - a promise settles on the JavaScript thread, with the outcome its flush reported, exactly once;
//! - while any promise is unsettled the threadsafe function is referenced, so `await audit.flush()` at the
//!   end of a script keeps Node running until the flush is done; with none pending it is unreferenced and
//!   never keeps the process alive;
//! - after Node tore the environment down (process exit, worker terminated), finishing a flush touches
//!   nothing of it.

use std::collections::HashMap;
use std::ffi::c_void;
use std::ptr;
use std::sync::Arc;

use napi::bindgen_prelude::{JsValue, PromiseRaw};
use napi::{sys, Env};
use parking_lot::Mutex;

use super::types::FlushResult;
use crate::batcher::{FlushError, FlushOutcome};
use crate::uuid7::Uuid;

/// What a flush ended with.
pub type Outcome = Result<FlushOutcome, FlushError>;

/// What a promise resolves with once its flush succeeded.
#[derive(Clone, Copy, Debug)]
pub enum Resolves {
    /// `flush()`: `{ written, pending }`.
    FlushResult,
    /// `write()`: the entry's id.
    EntryId(Uuid),
}

/// Turns an outcome into the value a promise is resolved with, or the error object it is rejected with.
/// Called on the JavaScript thread.
pub type Render = fn(&Env, Resolves, Outcome) -> Result<sys::napi_value, sys::napi_value>;

/// The batcher's end: makes promises (JavaScript thread only) and hands out [`Completion`]s.
pub struct Settler {
    inner: Arc<Inner>,
}

/// A flush's way back: report its outcome from any thread, once.
pub struct Completion {
    inner: Arc<Inner>,
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
    render: Render,
}

struct Waiting {
    next_id: u64,
    deferreds: HashMap<u64, (RawDeferred, Resolves)>,
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
    pub fn new(env: &Env, render: Render) -> napi::Result<Settler> {
        let shared = Arc::new(Shared {
            tsfn: Mutex::new(None),
            done: Mutex::new(Vec::new()),
            waiting: Mutex::new(Waiting {
                next_id: 0,
                deferreds: HashMap::new(),
                referenced: false,
            }),
            render,
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

    /// A new pending promise that resolves with `resolves` once its flush succeeded, and the completion
    /// that settles it. JavaScript thread only.
    pub fn promise<'env, T>(
        &self,
        env: &'env Env,
        resolves: Resolves,
    ) -> napi::Result<(PromiseRaw<'env, T>, Completion)> {
        let (deferred, promise) = create_promise(env)?;
        let shared = &self.inner.shared;
        let mut waiting = shared.waiting.lock();
        let id = waiting.next_id;
        waiting.next_id += 1;
        waiting
            .deferreds
            .insert(id, (RawDeferred(deferred), resolves));
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
                inner: self.inner.clone(),
                id,
            },
        ))
    }

    /// A promise settled at once with `outcome`, for a flush with nothing to wait for. JavaScript thread
    /// only.
    pub fn settled<'env>(
        &self,
        env: &'env Env,
        outcome: Outcome,
    ) -> napi::Result<PromiseRaw<'env, FlushResult>> {
        let (deferred, promise) = create_promise(env)?;
        let render = self.inner.shared.render;
        settle(env, deferred, render(env, Resolves::FlushResult, outcome));
        Ok(PromiseRaw::new(env.raw(), promise))
    }
}

impl Completion {
    /// Queues the flush's outcome; its promise settles on the JavaScript thread's next turn.
    pub fn complete(self, outcome: Outcome) {
        let shared = &self.inner.shared;
        let first = {
            let mut done = shared.done.lock();
            done.push((self.id, outcome));
            done.len() == 1
        };
        // Whoever makes the queue non-empty wakes the JavaScript thread; that wake-up empties it.
        if first {
            if let Some(tsfn) = *shared.tsfn.lock() {
                // SAFETY: the handle is live while it is in the slot, and the slot's lock is held.
                unsafe {
                    sys::napi_call_threadsafe_function(
                        tsfn.0,
                        ptr::null_mut(),
                        sys::ThreadsafeFunctionCallMode::nonblocking,
                    )
                };
            }
        }
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
    let ready: Vec<((RawDeferred, Resolves), Outcome)> = {
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
    for ((deferred, resolves), outcome) in ready {
        settle(&env, deferred.0, (shared.render)(&env, resolves, outcome));
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
