//! `flushOnExit`: close the batchers when the process is about to exit or is asked to terminate.
//!
//! However many batchers ask for it, the process gets one `beforeExit` and one SIGTERM listener, which hold
//! the batchers weakly: a listener never keeps a batcher (or its pool) alive, `close()` takes its batcher
//! off the list, and the listeners are removed when the list is empty.

use std::cell::RefCell;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::future::join_all;
use napi::bindgen_prelude::{FnArgs, Function, FunctionRef, JsObjectValue, Object, Unknown};
use napi::Env;

use crate::batcher::Batcher;
use crate::sink::AnySink;

type Core = Batcher<AnySink>;

/// The batchers to close on exit, and the listeners while any are registered. One per JavaScript thread.
#[derive(Default)]
struct Registry {
    next_id: u64,
    batchers: Vec<(u64, Weak<Core>, Duration)>,
    listeners: Option<Listeners>,
}

struct Listeners {
    before_exit: FunctionRef<(), ()>,
    sigterm: FunctionRef<(), ()>,
}

thread_local! {
    static REGISTRY: RefCell<Registry> = RefCell::new(Registry::default());
}

/// A batcher's place on the exit list; [`ExitHook::remove`] takes it off.
pub struct ExitHook {
    id: u64,
}

fn process(env: &Env) -> napi::Result<Object<'_>> {
    env.get_global()?.get_named_property("process")
}

/// `process.on`, `process.removeListener`: `(event, listener)`.
type ListenerMethod<'env> =
    Function<'env, FnArgs<(&'env str, Function<'env, (), ()>)>, Unknown<'env>>;

fn call_listener_method(
    env: &Env,
    method: &str,
    event: &str,
    listener: Function<(), ()>,
) -> napi::Result<()> {
    let process = process(env)?;
    let f: ListenerMethod = process.get_named_property(method)?;
    f.apply(process, FnArgs::from((event, listener)))?;
    Ok(())
}

/// Puts `core` on the exit list: on `beforeExit` (the event loop ran dry with entries still buffered) or
/// SIGTERM it is closed within `timeout`. JavaScript thread only.
pub fn install(env: &Env, core: &Arc<Core>, timeout: Duration) -> napi::Result<ExitHook> {
    let needs_listeners = REGISTRY.with_borrow(|r| r.listeners.is_none());
    if needs_listeners {
        let before_exit = env.create_function_from_closure("auditBatcherBeforeExit", |ctx| {
            for (core, timeout) in registered() {
                if !core.is_closing() && core.pending() > 0 {
                    let ticket = core.begin_close(tokio::time::Instant::now() + timeout);
                    // A pending promise: the loop stays alive until the final flush ends, then exits.
                    ctx.env.spawn_future(async move {
                        let _ = ticket.run(&core).await;
                        Ok(())
                    })?;
                }
            }
            Ok(())
        })?;
        let sigterm = env.create_function_from_closure("auditBatcherSigterm", |ctx| {
            let closes: Vec<_> = registered()
                .into_iter()
                .map(|(core, timeout)| {
                    let ticket = core.begin_close(tokio::time::Instant::now() + timeout);
                    async move {
                        let _ = ticket.run(&core).await;
                    }
                })
                .collect();
            ctx.env.spawn_future_with_callback(
                async move {
                    join_all(closes).await;
                    Ok(())
                },
                |env, ()| {
                    // Every batcher is closed: leave the signal to whoever else listens, or end the
                    // process as SIGTERM would have without us.
                    remove_listeners(env)?;
                    let process = process(env)?;
                    let count: Function<&str, u32> = process.get_named_property("listenerCount")?;
                    if count.apply(process, "SIGTERM")? == 0 {
                        let kill: Function<FnArgs<(u32, &str)>, Unknown> =
                            process.get_named_property("kill")?;
                        kill.apply(process, FnArgs::from((std::process::id(), "SIGTERM")))?;
                    }
                    Ok(())
                },
            )?;
            Ok(())
        })?;
        call_listener_method(env, "on", "beforeExit", before_exit)?;
        call_listener_method(env, "on", "SIGTERM", sigterm)?;
        let listeners = Listeners {
            before_exit: before_exit.create_ref()?,
            sigterm: sigterm.create_ref()?,
        };
        REGISTRY.with_borrow_mut(|r| r.listeners = Some(listeners));
    }
    let id = REGISTRY.with_borrow_mut(|r| {
        r.next_id += 1;
        r.batchers.push((r.next_id, Arc::downgrade(core), timeout));
        r.next_id
    });
    Ok(ExitHook { id })
}

impl ExitHook {
    /// Takes the batcher off the exit list, and removes the listeners when no batcher is left on it.
    /// JavaScript thread only.
    pub fn remove(&self, env: &Env) -> napi::Result<()> {
        let empty = REGISTRY.with_borrow_mut(|r| {
            r.batchers
                .retain(|(id, core, _)| *id != self.id && core.strong_count() > 0);
            r.batchers.is_empty()
        });
        if empty {
            remove_listeners(env)?;
        }
        Ok(())
    }
}

/// The batchers on the list that are still alive.
fn registered() -> Vec<(Arc<Core>, Duration)> {
    REGISTRY.with_borrow(|r| {
        r.batchers
            .iter()
            .filter_map(|(_, core, timeout)| core.upgrade().map(|c| (c, *timeout)))
            .collect()
    })
}

fn remove_listeners(env: &Env) -> napi::Result<()> {
    let Some(listeners) = REGISTRY.with_borrow_mut(|r| r.listeners.take()) else {
        return Ok(());
    };
    call_listener_method(
        env,
        "removeListener",
        "beforeExit",
        listeners.before_exit.borrow_back(env)?,
    )?;
    call_listener_method(
        env,
        "removeListener",
        "SIGTERM",
        listeners.sigterm.borrow_back(env)?,
    )
}
