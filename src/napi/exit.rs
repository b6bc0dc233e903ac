//! `flushOnExit`: close the batcher when the process is about to exit or is asked to terminate.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use napi::bindgen_prelude::{FnArgs, Function, JsObjectValue, Object, Unknown};
use napi::Env;

use super::AnySink;
use crate::batcher::Batcher;

/// Exit flushes under way; SIGTERM is re-raised when the last one ends.
static EXIT_FLUSHES: AtomicUsize = AtomicUsize::new(0);

type Listener<'env> = Function<'env, (), ()>;

fn process(env: &Env) -> napi::Result<Object<'_>> {
    env.get_global()?.get_named_property("process")
}

fn add_listener(env: &Env, method: &str, event: &str, listener: Listener) -> napi::Result<()> {
    let process = process(env)?;
    let add: Function<FnArgs<(&str, Listener)>, Unknown> = process.get_named_property(method)?;
    add.apply(process, FnArgs::from((event, listener)))?;
    Ok(())
}

/// Listens for `beforeExit` (the event loop ran dry with entries still buffered) and SIGTERM, and closes
/// the batcher then, within `timeout`. Signal listeners and `beforeExit` do not keep the process alive.
///
/// On SIGTERM, once every batcher's exit flush has ended and nothing else listens for SIGTERM, the signal is
/// raised again so the process ends as it would have without us.
pub fn install(env: &Env, core: Arc<Batcher<AnySink>>, timeout: Duration) -> napi::Result<()> {
    let on_exit = core.clone();
    let before_exit = env.create_function_from_closure("auditBatcherBeforeExit", move |ctx| {
        if !on_exit.is_closing() && on_exit.pending() > 0 {
            let ticket = on_exit.begin_close(tokio::time::Instant::now() + timeout);
            let core = on_exit.clone();
            // A pending promise: the loop stays alive until the final flush ends, then exits.
            ctx.env.spawn_future(async move {
                let _ = ticket.run(&core).await;
                Ok(())
            })?;
        }
        Ok(())
    })?;
    add_listener(env, "on", "beforeExit", before_exit)?;

    let sigterm = env.create_function_from_closure("auditBatcherSigterm", move |ctx| {
        EXIT_FLUSHES.fetch_add(1, Ordering::SeqCst);
        let ticket = core.begin_close(tokio::time::Instant::now() + timeout);
        let core = core.clone();
        ctx.env.spawn_future_with_callback(
            async move {
                let _ = ticket.run(&core).await;
                Ok(())
            },
            |env, ()| {
                if EXIT_FLUSHES.fetch_sub(1, Ordering::SeqCst) == 1 {
                    let process = process(env)?;
                    let count: Function<&str, u32> = process.get_named_property("listenerCount")?;
                    if count.apply(process, "SIGTERM")? == 0 {
                        let kill: Function<FnArgs<(u32, &str)>, Unknown> =
                            process.get_named_property("kill")?;
                        kill.apply(process, FnArgs::from((std::process::id(), "SIGTERM")))?;
                    }
                }
                Ok(())
            },
        )?;
        Ok(())
    })?;
    add_listener(env, "once", "SIGTERM", sigterm)
}
