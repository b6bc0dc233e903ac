use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::*;
use crate::entry::TextField;
use crate::sink::{MemorySink, Staged};

/// A sink that records batches and fails while told to; it can also hold a write until released.
#[derive(Default)]
struct TestSink {
    memory: MemorySink,
    batches: Mutex<Vec<Vec<Uuid>>>,
    fail: AtomicBool,
    /// Fail after storing (a lost reply).
    fail_after_store: AtomicBool,
    gate: Mutex<Option<Arc<tokio::sync::Notify>>>,
    writes_started: AtomicUsize,
    closed: AtomicBool,
    /// Refuse (as a table would) any batch holding an entry with this actor.
    poison_actor: Mutex<Option<String>>,
    /// Fail transiently any batch holding an entry with this actor.
    flaky_actor: Mutex<Option<String>>,
    fail_dead_letters: AtomicBool,
    /// Never finish a write of a batch holding an entry with this actor (and no poisoned one).
    hold_actor: Mutex<Option<String>>,
    /// Per write: whether it came through `write_new` (the batch was never sent before).
    new_writes: Mutex<Vec<bool>>,
    /// Take two new batches at once through `stage_new` (`can_stage`).
    stages: AtomicBool,
    /// Batches staged so far.
    staged: AtomicUsize,
    /// Fail the stage of a batch holding an entry with this actor.
    fail_stage_actor: Mutex<Option<String>>,
    /// Fail, once and without storing it, the commit of a staged batch holding an entry with this actor.
    fail_commit_actor: Mutex<Option<String>>,
    /// The failed commit (`fail_commit_actor`) is a row the table refuses, not a lost connection.
    commit_rejects: AtomicBool,
    /// Commits wait for this gate while it is set (released by `release`).
    commit_gate: Mutex<Option<Arc<tokio::sync::Notify>>>,
    /// Stages wait for this gate while it is set.
    stage_gate: Mutex<Option<Arc<tokio::sync::Notify>>>,
    /// What the staging sink did, in order: `stage <first actor>`, `commit <first actor>`.
    events: Mutex<Vec<String>>,
}

/// Opens `gate` for good: what waits on it goes on, and so does what comes to it later.
fn release(gate: &Mutex<Option<Arc<tokio::sync::Notify>>>) {
    if let Some(g) = gate.lock().take() {
        g.notify_one();
    }
}

/// Sets `gate`, which holds whatever reaches it until [`release`].
fn close_gate(gate: &Mutex<Option<Arc<tokio::sync::Notify>>>) {
    *gate.lock() = Some(Arc::new(tokio::sync::Notify::new()));
}

impl Sink for Arc<TestSink> {
    async fn write_new(&self, batch: &[Entry]) -> Result<(), WriteError> {
        self.new_writes.lock().push(true);
        self.write_any(batch).await
    }
    async fn write(&self, batch: &[Entry]) -> Result<(), WriteError> {
        self.new_writes.lock().push(false);
        self.write_any(batch).await
    }
    async fn dead_letter(&self, entry: &Entry, cause: &WriteError) -> Result<(), WriteError> {
        if self.fail_dead_letters.load(Ordering::SeqCst) {
            return Err(WriteError::new("connection refused"));
        }
        self.memory.dead_letter(entry, cause).await
    }
    async fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }
    fn can_stage(&self, _rows: usize) -> bool {
        self.stages.load(Ordering::SeqCst)
    }
    async fn stage_new(&self, batch: &[Entry]) -> Result<Staged, WriteError> {
        self.staged.fetch_add(1, Ordering::SeqCst);
        let first = batch[0].text(TextField::Actor).unwrap_or("").to_owned();
        let gate = self.stage_gate.lock().clone();
        if let Some(gate) = gate {
            gate.notified().await;
        }
        self.events.lock().push(format!("stage {first}"));
        let holds = |actor: &Option<String>| {
            actor
                .as_deref()
                .is_some_and(|a| batch.iter().any(|e| e.text(TextField::Actor) == Some(a)))
        };
        if holds(&self.fail_stage_actor.lock()) {
            return Err(WriteError::new("stage failed"));
        }
        let fail_commit = holds(&self.fail_commit_actor.lock());
        let rejects = self.commit_rejects.load(Ordering::SeqCst);
        let (sink, batch) = (self.clone(), batch.to_vec());
        Ok(Staged::new(move || {
            Box::pin(async move {
                let gate = sink.commit_gate.lock().clone();
                if let Some(gate) = gate {
                    gate.notified().await;
                }
                sink.events.lock().push(format!("commit {first}"));
                if fail_commit {
                    sink.fail_commit_actor.lock().take();
                    return Err(if rejects {
                        WriteError::rejected("deferred constraint violated", Some("23514".into()))
                    } else {
                        WriteError::new("connection reset")
                    });
                }
                sink.batches
                    .lock()
                    .push(batch.iter().map(Entry::id).collect());
                sink.memory.write(&batch).await
            })
        }))
    }
}

impl TestSink {
    async fn write_any(&self, batch: &[Entry]) -> Result<(), WriteError> {
        self.writes_started.fetch_add(1, Ordering::SeqCst);
        let gate = self.gate.lock().clone();
        if let Some(gate) = gate {
            gate.notified().await;
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(WriteError::new("connection refused"));
        }
        let has = |actor: &Option<String>| {
            actor
                .as_deref()
                .is_some_and(|a| batch.iter().any(|e| e.text(TextField::Actor) == Some(a)))
        };
        if has(&self.poison_actor.lock()) {
            return Err(WriteError::rejected(
                "new row violates check constraint",
                Some("23514".into()),
            ));
        }
        if has(&self.flaky_actor.lock()) {
            return Err(WriteError::new("connection reset"));
        }
        if has(&self.hold_actor.lock()) {
            std::future::pending::<()>().await;
        }
        self.batches
            .lock()
            .push(batch.iter().map(Entry::id).collect());
        self.memory.write(batch).await?;
        if self.fail_after_store.load(Ordering::SeqCst) {
            return Err(WriteError::new("connection reset"));
        }
        Ok(())
    }
}

type TestBatcher = Arc<Batcher<Arc<TestSink>>>;

fn batcher_with(config: BatcherConfig) -> (TestBatcher, Arc<TestSink>) {
    let sink = Arc::new(TestSink::default());
    (Arc::new(Batcher::new(sink.clone(), config)), sink)
}

fn batcher(rows: usize) -> (TestBatcher, Arc<TestSink>) {
    batcher_with(BatcherConfig {
        max_batch_rows: rows,
        ..Default::default()
    })
}

fn entry(i: usize) -> EntryDraft {
    EntryDraft::new("act").with(TextField::Actor, format!("u{i}"))
}

fn critical(action: &str) -> EntryDraft {
    let mut draft = EntryDraft::new(action);
    draft.critical = true;
    draft
}

/// The ids of the entries waiting in memory, oldest first.
fn buffered_ids(b: &TestBatcher) -> Vec<Uuid> {
    b.buffered_entries().iter().map(Entry::id).collect()
}

fn log_n(b: &TestBatcher, n: usize) -> Vec<Uuid> {
    (0..n).map(|i| b.log(entry(i)).unwrap().id).collect()
}

/// Logs one entry per actor, in order, and returns their ids.
fn log_actors(b: &TestBatcher, actors: &[&str]) -> Vec<Uuid> {
    actors
        .iter()
        .map(|a| {
            b.log(EntryDraft::new("act").with(TextField::Actor, *a))
                .unwrap()
                .id
        })
        .collect()
}

fn written_ids(sink: &TestSink) -> Vec<Uuid> {
    sink.memory.entries().iter().map(Entry::id).collect()
}

fn batch_sizes(sink: &TestSink) -> Vec<usize> {
    sink.batches.lock().iter().map(Vec::len).collect()
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

fn spawn_flush(b: &TestBatcher) -> tokio::task::JoinHandle<Result<FlushOutcome, FlushError>> {
    let b = b.clone();
    tokio::spawn(async move { b.flush().await })
}

/// Waits for `cond`, checking every millisecond (of the paused clock, in `start_paused` tests); fails the
/// test after 60 s instead of hanging.
async fn until(cond: impl Fn() -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(60), async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "condition not met within 60 s");
}

fn assert_books_balance(s: &Stats) {
    assert_eq!(
        s.logged,
        s.buffered as u64 + s.written + s.dead_lettered + s.sampled_out + s.dropped,
        "{s:?}"
    );
}

#[tokio::test]
async fn flush_writes_everything_in_order_in_one_batch() {
    let (b, sink) = batcher(1000);
    let ids = log_n(&b, 5);
    assert_eq!(b.pending(), 5);
    let out = b.flush().await.unwrap();
    assert_eq!(
        out,
        FlushOutcome {
            written: 5,
            pending: 0
        }
    );
    assert_eq!(batch_sizes(&sink), [5]);
    assert_eq!(written_ids(&sink), ids);
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, ids, "generated ids increase in log order");
}

#[tokio::test]
async fn an_empty_flush_does_not_touch_the_sink() {
    let (b, sink) = batcher(10);
    assert_eq!(b.flush().await.unwrap().written, 0);
    assert_eq!(sink.writes_started.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_large_flush_is_split_into_max_batch_rows() {
    let (b, sink) = batcher(4);
    let ids = log_n(&b, 10);
    b.flush().await.unwrap();
    assert_eq!(batch_sizes(&sink), [4, 4, 2]);
    assert_eq!(written_ids(&sink), ids);
    let s = b.stats();
    assert_eq!((s.batch_size.p50, s.batch_size.max), (4.0, 4.0));
}

#[tokio::test]
async fn a_failed_flush_keeps_entries_ahead_of_newer_ones() {
    let (b, sink) = batcher(1000);
    let mut ids = log_n(&b, 3);
    sink.fail.store(true, Ordering::SeqCst);
    let err = b.flush().await.unwrap_err();
    assert!(
        matches!(err, FlushError::Failed { pending: 3, .. }),
        "{err:?}"
    );
    assert_eq!(b.stats().failed_flushes, 1);
    ids.extend(log_n(&b, 2));
    sink.fail.store(false, Ordering::SeqCst);
    assert_eq!(b.flush().await.unwrap().written, 5);
    assert_eq!(written_ids(&sink), ids);
}

#[tokio::test]
async fn a_retry_after_a_lost_reply_stores_each_entry_once() {
    let (b, sink) = batcher(1000);
    let ids = log_n(&b, 3);
    sink.fail_after_store.store(true, Ordering::SeqCst);
    assert!(b.flush().await.is_err());
    sink.fail_after_store.store(false, Ordering::SeqCst);
    b.flush().await.unwrap();
    assert_eq!(sink.batches.lock().len(), 2, "the batch was sent twice");
    assert_eq!(written_ids(&sink), ids, "but stored once");
}

#[tokio::test]
async fn a_failure_in_a_later_batch_keeps_the_earlier_batches_written() {
    let (b, sink) = batcher(2);
    let ids = log_n(&b, 5);
    let gate = Arc::new(tokio::sync::Notify::new());
    *sink.gate.lock() = Some(gate.clone());
    let flush = spawn_flush(&b);
    gate.notify_one(); // first batch succeeds
    until(|| sink.writes_started.load(Ordering::SeqCst) >= 2).await;
    sink.fail.store(true, Ordering::SeqCst);
    gate.notify_one(); // second fails
    let err = flush.await.unwrap().unwrap_err();
    assert!(
        matches!(err, FlushError::Failed { pending: 3, .. }),
        "{err:?}"
    );
    assert_eq!(written_ids(&sink), ids[..2]);
    *sink.gate.lock() = None;
    sink.fail.store(false, Ordering::SeqCst);
    b.flush().await.unwrap();
    assert_eq!(written_ids(&sink), ids);
}

#[tokio::test]
async fn concurrent_flushes_share_the_writer_and_never_send_an_entry_twice() {
    let (b, sink) = batcher(1000);
    let gate = Arc::new(tokio::sync::Notify::new());
    *sink.gate.lock() = Some(gate.clone());
    let mut ids = log_n(&b, 3);
    let first = spawn_flush(&b);
    until(|| sink.writes_started.load(Ordering::SeqCst) >= 1).await;
    // Logged while the first write is under way: not in its batch.
    ids.extend(log_n(&b, 2));
    let second = b.begin_flush().unwrap();
    let third = b.begin_flush().unwrap();
    *sink.gate.lock() = None;
    gate.notify_one();
    assert_eq!(first.await.unwrap().unwrap().written, 3);
    assert_eq!(second.run(&b).await.unwrap().written, 5);
    assert_eq!(third.run(&b).await.unwrap().written, 5);
    assert_eq!(
        batch_sizes(&sink),
        [3, 2],
        "the two waiting flushes shared one batch"
    );
    assert_eq!(written_ids(&sink), ids);
}

#[tokio::test]
async fn a_flush_covers_what_was_buffered_at_its_call_not_what_came_later() {
    let (b, sink) = batcher(1000);
    log_n(&b, 2);
    let ticket = b.begin_flush().unwrap();
    log_n(&b, 3);
    assert_eq!(
        ticket.run(&b).await.unwrap(),
        FlushOutcome {
            written: 2,
            pending: 3
        }
    );
    assert_eq!(batch_sizes(&sink), [2]);
}

#[tokio::test]
async fn an_abandoned_write_returns_its_batch_to_the_buffer() {
    let (b, sink) = batcher(1000);
    let ids = log_n(&b, 3);
    let gate = Arc::new(tokio::sync::Notify::new());
    *sink.gate.lock() = Some(gate);
    let flush = spawn_flush(&b);
    until(|| sink.writes_started.load(Ordering::SeqCst) >= 1).await;
    flush.abort();
    assert!(flush.await.unwrap_err().is_cancelled());
    assert_eq!(b.pending(), 3);
    *sink.gate.lock() = None;
    b.flush().await.unwrap();
    assert_eq!(written_ids(&sink), ids);
}

#[tokio::test]
async fn invalid_entries_change_nothing() {
    let (b, _) = batcher(1000);
    log_n(&b, 2);
    let err = b.log(EntryDraft::new("")).unwrap_err();
    assert!(
        matches!(&err, LogError::Invalid(e) if e.field == "action"),
        "{err:?}"
    );
    let s = b.stats();
    assert_eq!((s.logged, s.buffered, s.written), (2, 2, 0));
}

#[tokio::test]
async fn close_flushes_closes_the_sink_and_then_refuses() {
    let (b, sink) = batcher(1000);
    let ids = log_n(&b, 2);
    b.close(soon()).await.unwrap();
    assert!(sink.closed.load(Ordering::SeqCst));
    assert_eq!(written_ids(&sink), ids);
    assert_eq!(
        b.log(EntryDraft::new("late")).unwrap_err(),
        LogError::Closed
    );
    assert_eq!(b.flush().await.unwrap_err(), FlushError::Closed);
    b.close(soon()).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn close_retries_until_its_deadline_then_reports_and_keeps_what_it_could_not_write() {
    let (b, sink) = batcher(1000);
    let ids = log_n(&b, 2);
    sink.fail.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let err = b.close(started + Duration::from_secs(2)).await.unwrap_err();
    assert!(
        matches!(err, FlushError::Failed { pending: 2, .. }),
        "{err:?}"
    );
    assert!(started.elapsed() <= Duration::from_secs(2));
    assert!(b.stats().retries >= 2, "{:?}", b.stats());
    assert!(
        sink.closed.load(Ordering::SeqCst),
        "the sink is closed even so"
    );
    let kept = buffered_ids(&b);
    assert_eq!(kept, ids);
    // Later calls report the same outcome without trying again.
    let writes = sink.writes_started.load(Ordering::SeqCst);
    assert!(matches!(
        b.close(soon()).await,
        Err(FlushError::Failed { pending: 2, .. })
    ));
    assert_eq!(sink.writes_started.load(Ordering::SeqCst), writes);
}

#[tokio::test(start_paused = true)]
async fn close_gives_up_on_a_write_that_hangs_past_its_deadline() {
    let (b, sink) = batcher(1000);
    log_n(&b, 1);
    *sink.gate.lock() = Some(Arc::new(tokio::sync::Notify::new())); // never released
    let err = b
        .close(Instant::now() + Duration::from_millis(500))
        .await
        .unwrap_err();
    let FlushError::Failed { cause, pending } = err else {
        panic!()
    };
    assert_eq!(pending, 1);
    assert!(cause.message.contains("timeoutMs"), "{cause}");
}

#[tokio::test]
async fn sampling_keeps_about_the_rate_and_counts_the_rest() {
    let (b, sink) = batcher_with(BatcherConfig {
        sampling: Sampling {
            rate: 0.25,
            ..Default::default()
        },
        ..Default::default()
    });
    for i in 0..10_000 {
        b.log(entry(i)).unwrap();
    }
    let crit: Vec<Uuid> = (0..100)
        .map(|_| b.log(critical("must.keep")).unwrap().id)
        .collect();
    b.flush().await.unwrap();
    let s = b.stats();
    assert_books_balance(&s);
    assert!((2_200..=2_800).contains(&(s.written - 100)), "{s:?}");
    assert_eq!(s.sampled_out + s.written, 10_100);
    let written = written_ids(&sink);
    assert!(
        crit.iter().all(|id| written.contains(id)),
        "critical entries are never sampled"
    );
}

#[tokio::test]
async fn per_action_sampling() {
    let (b, sink) = batcher_with(BatcherConfig {
        sampling: Sampling {
            rate: 1.0,
            per_action: [("file.read".to_owned(), 0.0)].into(),
        },
        ..Default::default()
    });
    b.log(EntryDraft::new("file.read")).unwrap();
    let kept = b.log(EntryDraft::new("tool.call")).unwrap();
    assert_eq!(
        b.log(EntryDraft::new("file.read")).unwrap().disposition,
        Disposition::SampledOut
    );
    b.flush().await.unwrap();
    assert_eq!(written_ids(&sink), [kept.id]);
    assert_eq!(b.stats().sampled_out, 2);
}

fn bounded(policy: OverflowPolicy, entries: usize, bytes: usize) -> (TestBatcher, Arc<TestSink>) {
    batcher_with(BatcherConfig {
        max_buffered_entries: entries,
        max_buffered_bytes: bytes,
        on_buffer_full: policy,
        ..Default::default()
    })
}

#[tokio::test]
async fn reject_policy_refuses_at_the_entry_bound_but_takes_critical_entries() {
    let (b, sink) = bounded(OverflowPolicy::Reject, 3, usize::MAX);
    let mut ids = log_n(&b, 3);
    assert_eq!(
        b.log(entry(9)).unwrap_err(),
        LogError::BufferFull {
            entries: 3,
            bytes: b.stats().buffered_bytes
        }
    );
    ids.push(b.log(critical("must.keep")).unwrap().id);
    let s = b.stats();
    assert_eq!((s.rejected, s.buffered, s.logged), (1, 4, 4));
    b.flush().await.unwrap();
    assert_eq!(written_ids(&sink), ids);
    b.log(entry(10)).unwrap(); // room again
}

#[tokio::test]
async fn drop_policy_discards_and_counts_at_the_byte_bound() {
    let one = EntryDraft::new("act")
        .prepare(Timestamp::now())
        .unwrap()
        .size_bytes();
    let (b, _) = bounded(OverflowPolicy::Drop, usize::MAX, one * 2);
    b.log(EntryDraft::new("act")).unwrap();
    b.log(EntryDraft::new("act")).unwrap();
    let third = b.log(EntryDraft::new("act")).unwrap();
    assert_eq!(third.disposition, Disposition::Dropped);
    let s = b.stats();
    assert_eq!((s.dropped, s.buffered, s.logged), (1, 2, 3));
    assert!(s.buffered_bytes <= one * 2);
    assert_books_balance(&s);
}

#[tokio::test]
async fn a_write_ticket_covers_its_entry_and_everything_before_it() {
    let (b, sink) = batcher(1000);
    let mut ids = log_n(&b, 2);
    let logged = b.log(critical("write")).unwrap();
    ids.push(logged.id);
    let Disposition::Buffered { seq } = logged.disposition else {
        panic!()
    };
    log_n(&b, 2); // after it: not needed
    let out = b.ticket_through(seq).run(&b).await.unwrap();
    assert_eq!(out.written, 3);
    assert_eq!(written_ids(&sink), ids);
    assert_eq!(b.pending(), 2);
}

fn background(b: &TestBatcher, config: BackgroundConfig) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run_background(Arc::downgrade(b), config))
}

#[tokio::test(start_paused = true)]
async fn background_writer_flushes_when_the_size_is_reached() {
    let (b, sink) = batcher_with(BatcherConfig {
        flush_at_entries: Some(10),
        ..Default::default()
    });
    let task = background(&b, BackgroundConfig { interval: None });
    log_n(&b, 9);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(
        batch_sizes(&sink).is_empty(),
        "below the size, no interval: nothing written"
    );
    log_n(&b, 1);
    until(|| b.pending() == 0).await;
    assert_eq!(batch_sizes(&sink), [10]);
    b.close(soon()).await.unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_full_batch_is_written_without_waiting_for_a_flush_and_the_rest_waits() {
    let (b, sink) = batcher(10);
    let task = background(&b, BackgroundConfig { interval: None });
    let ids = log_n(&b, 9);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(
        batch_sizes(&sink).is_empty(),
        "no full batch: nothing written"
    );
    let more = log_n(&b, 16);
    until(|| b.pending() == 5).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(batch_sizes(&sink), [10, 10], "full batches only");
    assert_eq!(b.pending(), 5, "the rest waits for flush()");
    b.flush().await.unwrap();
    assert_eq!(
        batch_sizes(&sink),
        [10, 10, 5],
        "the boundaries a flush would make"
    );
    let all: Vec<_> = ids.into_iter().chain(more).collect();
    assert_eq!(written_ids(&sink), all);
    b.close(soon()).await.unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn background_writer_flushes_on_the_interval() {
    let (b, sink) = batcher(1000);
    let task = background(
        &b,
        BackgroundConfig {
            interval: Some(Duration::from_millis(200)),
        },
    );
    log_n(&b, 3);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(b.pending(), 3, "not before the interval");
    until(|| b.pending() == 0).await;
    let waited = started.elapsed();
    // The interval, plus the 1 ms granularity of `until`.
    assert!(waited <= Duration::from_millis(201), "{waited:?}");
    assert_eq!(batch_sizes(&sink), [3]);
    b.close(soon()).await.unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn background_writer_drains_a_burst_in_back_to_back_batches() {
    let (b, sink) = batcher_with(BatcherConfig {
        max_batch_rows: 100,
        flush_at_entries: Some(100),
        ..Default::default()
    });
    let task = background(&b, BackgroundConfig { interval: None });
    let ids = log_n(&b, 1000);
    until(|| b.pending() == 0).await;
    assert_eq!(batch_sizes(&sink), [100; 10]);
    assert_eq!(written_ids(&sink), ids);
    b.close(soon()).await.unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn background_writer_drains_what_arrived_during_a_write_even_below_the_size() {
    let (b, sink) = batcher_with(BatcherConfig {
        flush_at_entries: Some(100),
        ..Default::default()
    });
    let gate = Arc::new(tokio::sync::Notify::new());
    *sink.gate.lock() = Some(gate.clone());
    let task = background(&b, BackgroundConfig { interval: None });
    let mut ids = log_n(&b, 100);
    until(|| sink.writes_started.load(Ordering::SeqCst) == 1).await;
    ids.extend(log_n(&b, 30)); // logged during the write, below the size, and nothing comes after
    *sink.gate.lock() = None;
    gate.notify_one();
    until(|| b.pending() == 0).await;
    assert_eq!(batch_sizes(&sink), [100, 30]);
    assert_eq!(written_ids(&sink), ids);
    b.close(soon()).await.unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn background_writer_backs_off_while_the_sink_fails_and_recovers() {
    let (b, sink) = batcher_with(BatcherConfig {
        flush_at_entries: Some(1),
        ..Default::default()
    });
    sink.fail.store(true, Ordering::SeqCst);
    let task = background(&b, BackgroundConfig { interval: None });
    let mut ids = log_n(&b, 1);
    // Ten simulated seconds of outage with a steady producer.
    for _ in 0..100 {
        ids.extend(log_n(&b, 1));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let attempts = sink.writes_started.load(Ordering::SeqCst);
    // 100 ms, 200, 400, 800, 1.6 s, 3.2 s, 6.4 s (each jittered down to half): at most ~10 in 10 s.
    assert!((4..=12).contains(&attempts), "{attempts} attempts in 10 s");
    assert!(b.stats().retries >= 3);
    sink.fail.store(false, Ordering::SeqCst);
    until(|| b.pending() == 0).await;
    assert_eq!(written_ids(&sink), ids);
    b.close(soon()).await.unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn background_writer_stops_when_closed_or_dropped() {
    let (b, _) = batcher(1000);
    let task = background(
        &b,
        BackgroundConfig {
            interval: Some(Duration::from_secs(3600)),
        },
    );
    b.close(soon()).await.unwrap();
    task.await.unwrap();

    let (b, _) = batcher(1000);
    let task = background(
        &b,
        BackgroundConfig {
            interval: Some(Duration::from_millis(10)),
        },
    );
    drop(b);
    task.await.unwrap();
}

#[tokio::test]
async fn stats_track_latency_and_batch_sizes() {
    let (b, _) = batcher(1000);
    log_n(&b, 4);
    b.flush().await.unwrap();
    let s = b.stats();
    assert_eq!(s.batches, 1);
    assert_eq!(s.batch_size.max, 4.0);
    assert!(s.flush_latency_ms.p99 >= s.flush_latency_ms.p50);
    assert_books_balance(&s);
}

fn dead_ids(sink: &TestSink) -> Vec<Uuid> {
    sink.memory
        .dead_letters()
        .iter()
        .map(|(e, _)| e.id())
        .collect()
}

#[tokio::test]
async fn rows_the_table_refuses_are_isolated_and_dead_lettered_and_the_rest_written_in_order() {
    let (b, sink) = batcher(1000);
    *sink.poison_actor.lock() = Some("evil".into());
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for i in 0..20 {
        let actor = if i == 3 || i == 17 {
            "evil".to_owned()
        } else {
            format!("u{i}")
        };
        let id = b
            .log(EntryDraft::new("act").with(TextField::Actor, actor.clone()))
            .unwrap()
            .id;
        if actor == "evil" {
            bad.push(id)
        } else {
            good.push(id)
        }
    }
    let out = b.flush().await.unwrap();
    assert_eq!(out.pending, 0);
    assert_eq!(written_ids(&sink), good);
    assert_eq!(dead_ids(&sink), bad);
    let (_, cause) = &sink.memory.dead_letters()[0];
    assert_eq!(cause.sqlstate.as_deref(), Some("23514"));
    let s = b.stats();
    assert_eq!((s.written, s.dead_lettered, s.buffered), (18, 2, 0));
    assert_books_balance(&s);
    assert!(
        s.batches >= 4,
        "good rows are written in several statements around the bad ones"
    );
}

#[tokio::test]
async fn a_transient_failure_while_isolating_keeps_the_unsettled_rest_in_order() {
    let (b, sink) = batcher(1000);
    *sink.poison_actor.lock() = Some("evil".into());
    *sink.flaky_actor.lock() = Some("flaky".into());
    let ids = log_actors(&b, &["a", "evil", "b", "flaky", "c"]);
    let err = b.flush().await.unwrap_err();
    assert!(matches!(err, FlushError::Failed { .. }), "{err:?}");
    // "a" is written and "evil" dead-lettered before the flaky row stops the flush.
    assert_eq!(dead_ids(&sink), [ids[1]]);
    assert!(written_ids(&sink).starts_with(&[ids[0]]));
    let settled_before = written_ids(&sink).len() + 1;
    assert_eq!(b.pending(), 5 - settled_before);
    assert_books_balance(&b.stats());
    *sink.flaky_actor.lock() = None;
    b.flush().await.unwrap();
    assert_eq!(written_ids(&sink), [ids[0], ids[2], ids[3], ids[4]]);
    assert_books_balance(&b.stats());
}

#[tokio::test]
async fn a_flush_abandoned_while_isolating_keeps_what_it_settled_and_counts_nothing_twice() {
    let (b, sink) = batcher(1000);
    *sink.poison_actor.lock() = Some("evil".into());
    *sink.hold_actor.lock() = Some("hold".into());
    let ids = log_actors(&b, &["a", "evil", "c", "hold"]);
    let flush = spawn_flush(&b);
    // "a" is written and "evil" dead-lettered; the write of ["c", "hold"] never finishes.
    until(|| sink.memory.dead_letters().len() == 1 && written_ids(&sink).len() == 1).await;
    until(|| sink.writes_started.load(Ordering::SeqCst) >= 4).await;
    flush.abort();
    assert!(flush.await.unwrap_err().is_cancelled());
    let s = b.stats();
    assert_eq!((s.written, s.dead_lettered, s.buffered), (1, 1, 2));
    assert_books_balance(&s);
    assert_eq!(buffered_ids(&b), ids[2..]);
    *sink.hold_actor.lock() = None;
    b.flush().await.unwrap();
    assert_eq!(written_ids(&sink), [ids[0], ids[2], ids[3]]);
    assert_eq!(dead_ids(&sink), [ids[1]]);
    let s = b.stats();
    assert_eq!((s.written, s.dead_lettered, s.buffered), (3, 1, 0));
    assert_books_balance(&s);
}

#[tokio::test]
async fn an_entry_whose_dead_letter_cannot_be_stored_stays_buffered() {
    let (b, sink) = batcher(1000);
    *sink.poison_actor.lock() = Some("evil".into());
    sink.fail_dead_letters.store(true, Ordering::SeqCst);
    b.log(EntryDraft::new("act").with(TextField::Actor, "evil"))
        .unwrap();
    assert!(b.flush().await.is_err());
    assert_eq!(b.pending(), 1);
    sink.fail_dead_letters.store(false, Ordering::SeqCst);
    b.flush().await.unwrap();
    assert_eq!(b.stats().dead_lettered, 1);
}

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<String>>,
    /// The messages of the errors reported.
    errors: Mutex<Vec<String>>,
}

impl Observer for Recorder {
    fn on_flush(&self, rows: usize, _latency_ms: f64) {
        self.events.lock().push(format!("flush {rows}"));
    }
    fn on_error(&self, cause: &WriteError, pending: usize) {
        self.events.lock().push(format!("error {pending}"));
        self.errors.lock().push(cause.message.clone());
    }
    fn on_dead_letter(&self, entry: &Entry, cause: &WriteError) {
        let actor = entry.text(TextField::Actor).unwrap_or_default().to_owned();
        self.events.lock().push(format!(
            "dead {actor} {}",
            cause.sqlstate.as_deref().unwrap_or("")
        ));
    }
    fn on_high_water(&self, buffered: usize, _bytes: usize) {
        self.events.lock().push(format!("high {buffered}"));
    }
}

#[tokio::test]
async fn the_observer_hears_statements_failures_dead_letters_and_each_high_water_crossing() {
    let sink = Arc::new(TestSink::default());
    let recorder = Arc::new(Recorder::default());
    let b = Arc::new(
        Batcher::new(
            sink.clone(),
            BatcherConfig {
                max_batch_rows: 2,
                ..Default::default()
            },
        )
        .with_observer(Box::new(recorder.clone()), Some(3)),
    );
    log_n(&b, 4); // crosses 3 once
    b.flush().await.unwrap(); // two statements of 2
    *sink.poison_actor.lock() = Some("evil".into());
    b.log(EntryDraft::new("a").with(TextField::Actor, "evil"))
        .unwrap();
    b.flush().await.unwrap();
    sink.fail.store(true, Ordering::SeqCst);
    log_n(&b, 3); // crosses 3 again
    assert!(b.flush().await.is_err());
    assert_eq!(
        *recorder.events.lock(),
        [
            "high 3",
            "flush 2",
            "flush 2",
            "dead evil 23514",
            "high 3",
            "error 3"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn critical_flushes_are_coalesced_and_back_off_while_the_sink_fails() {
    let (b, sink) = batcher(1000);
    sink.fail.store(true, Ordering::SeqCst);
    let gate = Arc::new(tokio::sync::Notify::new());
    *sink.gate.lock() = Some(gate.clone());
    let mut spawned = 0;
    let mut log_critical = |n: usize| {
        for i in 0..n {
            let logged = b.log(critical(&format!("c{i}"))).unwrap();
            let Disposition::Buffered { seq } = logged.disposition else {
                panic!("critical entries are buffered")
            };
            if let Some(flush) = b.critical_flush(seq) {
                spawned += 1;
                tokio::spawn(flush);
            }
        }
    };
    log_critical(1);
    until(|| sink.writes_started.load(Ordering::SeqCst) == 1).await;
    // While the first attempt is under way, 999 more: they wait behind it, as one flush.
    log_critical(999);
    *sink.gate.lock() = None;
    gate.notify_one();
    // The first attempt fails; the waiting one runs after the backoff (100 ms, jittered into 50-100 ms),
    // and fails too; nothing waits behind it, so nothing else is tried.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(spawned, 1, "one flush task for 1,000 critical entries");
    assert_eq!(sink.writes_started.load(Ordering::SeqCst), 2);
    assert_eq!(b.stats().failed_flushes, 2);
    assert_eq!(b.pending(), 1000);
    // The sink is back: the next critical entry starts a flush of its own, which writes everything.
    sink.fail.store(false, Ordering::SeqCst);
    b.log(critical("after")).unwrap();
    let flush = b
        .critical_flush(1001)
        .expect("no critical flush is running");
    flush.await;
    assert_eq!(b.pending(), 0);
    assert_eq!(written_ids(&sink).len(), 1001);
}

#[tokio::test(start_paused = true)]
async fn when_close_runs_out_of_time_every_pending_flush_gives_up_and_keeps_its_entries() {
    let (b, sink) = batcher(1000);
    log_n(&b, 3);
    *sink.gate.lock() = Some(Arc::new(tokio::sync::Notify::new())); // never released
    let pending_flush = spawn_flush(&b);
    until(|| sink.writes_started.load(Ordering::SeqCst) == 1).await;
    let closed = b.close(Instant::now() + Duration::from_millis(300)).await;
    assert!(closed.is_err());
    let flushed = tokio::time::timeout(Duration::from_millis(10), pending_flush)
        .await
        .expect("the pending flush settles at close's deadline")
        .unwrap();
    let Err(FlushError::Failed { cause, pending }) = flushed else {
        panic!("{flushed:?}")
    };
    assert_eq!(pending, 3);
    assert!(cause.message.contains("timeoutMs"), "{cause}");
    assert_eq!(b.buffered_entries().len(), 3);
}

/// A sink whose every write first fails on a fast path, then succeeds another way.
#[derive(Default)]
struct RecoveringSink {
    memory: MemorySink,
    recovered: Mutex<Vec<WriteError>>,
}

impl Sink for Arc<RecoveringSink> {
    async fn write(&self, batch: &[Entry]) -> Result<(), WriteError> {
        self.recovered
            .lock()
            .push(WriteError::new("fast path cut mid-stream"));
        self.memory.write(batch).await
    }
    async fn dead_letter(&self, entry: &Entry, cause: &WriteError) -> Result<(), WriteError> {
        self.memory.dead_letter(entry, cause).await
    }
    async fn close(&self) {}
    fn take_recovered_failures(&self) -> Vec<WriteError> {
        std::mem::take(&mut *self.recovered.lock())
    }
}

#[tokio::test]
async fn failed_attempts_a_sink_recovered_from_are_counted_and_reported() {
    #[derive(Default)]
    struct Errors(Mutex<Vec<String>>);
    impl Observer for Errors {
        fn on_error(&self, cause: &WriteError, _pending: usize) {
            self.0.lock().push(cause.message.clone());
        }
    }
    let sink = Arc::new(RecoveringSink::default());
    let errors = Arc::new(Errors::default());
    let b = Batcher::new(sink.clone(), BatcherConfig::default())
        .with_observer(Box::new(errors.clone()), None);
    for i in 0..5 {
        b.log(entry(i)).unwrap();
    }
    b.flush().await.unwrap();
    let s = b.stats();
    assert_eq!((s.written, s.failed_flushes), (5, 1));
    assert_eq!(*errors.0.lock(), ["fast path cut mid-stream"]);
    assert_eq!(
        s.last_error.map(|(e, _)| e.message).as_deref(),
        Some("fast path cut mid-stream")
    );
}

#[tokio::test]
async fn a_batch_is_new_on_its_first_attempt_only_whatever_its_ids() {
    let (b, sink) = batcher(4);
    // Caller-supplied ids of any version: newness is the batcher's own acceptance order.
    for i in 0..6 {
        let mut d = entry(i);
        d.id = Uuid::parse(&format!("00000000-0000-4000-8000-{i:012}"));
        b.log(d).unwrap();
    }
    sink.fail.store(true, Ordering::SeqCst);
    assert!(b.flush().await.is_err());
    sink.fail.store(false, Ordering::SeqCst);
    b.flush().await.unwrap();
    // 1st attempt (4 new), retry of those 4, then the last 2 (new).
    assert_eq!(*sink.new_writes.lock(), [true, false, true]);
    log_actors(&b, &["ok", "bad", "ok2"]);
    *sink.poison_actor.lock() = Some("bad".into());
    b.flush().await.unwrap();
    // The whole batch is new; the halves bisection sends are not.
    let writes = sink.new_writes.lock().clone();
    assert!(writes[3], "the first attempt at the batch is new");
    assert!(writes[4..].iter().all(|new| !new), "{writes:?}");
}

// ---- The durable spool ----

mod spool {
    use super::*;
    use crate::spool::{SpoolConfig, SPOOL_PREFIX};
    use std::path::{Path, PathBuf};

    /// A fresh directory under the system's temporary directory, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let p = std::env::temp_dir().join(format!(
                "batcher-spool-{tag}-{}-{:08x}",
                std::process::id(),
                fastrand::u32(..)
            ));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn small() -> SpoolConfig {
        SpoolConfig {
            segment_bytes: 64 << 10,
            ..SpoolConfig::default()
        }
    }

    fn spooled(
        dir: &Path,
        config: BatcherConfig,
        spool: SpoolConfig,
    ) -> (TestBatcher, Arc<TestSink>) {
        let sink = Arc::new(TestSink::default());
        let (s, recovery) = Spool::open(dir, spool).unwrap();
        let b = Batcher::new(sink.clone(), config).with_spool(s, recovery);
        (Arc::new(b), sink)
    }

    fn spools_in(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(SPOOL_PREFIX))
            .map(|e| e.path())
            .collect();
        v.sort();
        v
    }

    /// What a batcher opened next on `dir` writes when closed: the entries dead batchers left there.
    async fn written_by_next_start(dir: &Path) -> Vec<Uuid> {
        let (next, sink) = spooled(dir, BatcherConfig::default(), small());
        next.close(soon()).await.unwrap();
        written_ids(&sink)
    }

    fn sorted_unique(mut ids: Vec<Uuid>) -> Vec<Uuid> {
        ids.sort();
        ids.dedup();
        ids
    }

    async fn maintain(b: &TestBatcher) -> bool {
        let b = b.clone();
        tokio::task::spawn_blocking(move || b.spool_maintain())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_close_that_writes_everything_leaves_no_spool() {
        let dir = TempDir::new("clean");
        let (b, sink) = spooled(&dir.0, BatcherConfig::default(), small());
        let ids = log_n(&b, 100);
        assert_eq!(b.stats().spool.unwrap().spool.appended, 100);
        assert!(maintain(&b).await);
        b.close(soon()).await.unwrap();
        assert_eq!(written_ids(&sink), ids);
        assert!(spools_in(&dir.0).is_empty(), "{:?}", spools_in(&dir.0));
        // The figures survive the close; the periodic work stops.
        assert_eq!(b.stats().spool.unwrap().spool.appended, 100);
        assert!(!maintain(&b).await);
    }

    #[tokio::test]
    async fn entries_of_a_dead_batcher_are_written_first_once_with_their_ids_and_times() {
        let dir = TempDir::new("replay");
        let (dead, dead_sink) = spooled(&dir.0, BatcherConfig::default(), small());
        let lost = log_n(&dead, 50);
        let times: Vec<_> = dead
            .buffered_entries()
            .iter()
            .map(Entry::occurred_at)
            .collect();
        // Some written before the crash: they come again (harmlessly, by id).
        dead.flush().await.unwrap();
        let unwritten = log_n(&dead, 30);
        drop(dead); // no close(): as after SIGKILL
        assert_eq!(written_ids(&dead_sink), lost);

        let (b, sink) = spooled(&dir.0, batcher_config(1000), small());
        let fresh = log_n(&b, 5);
        assert_eq!(b.stats().logged, 5);
        b.close(soon()).await.unwrap();
        let written = written_ids(&sink);
        let recovered: Vec<Uuid> = lost.iter().chain(&unwritten).copied().collect();
        assert_eq!(&written[..80], &recovered[..], "replayed first, in order");
        assert_eq!(&written[80..], &fresh[..]);
        let stored = sink.memory.entries();
        for (e, t) in stored.iter().zip(&times) {
            assert_eq!(e.occurred_at(), *t);
        }
        let s = b.stats();
        assert_books_balance(&s);
        let spool = s.spool.unwrap();
        assert_eq!(spool.spool.recovered, 80);
        assert_eq!(spool.replayed, 80);
        assert_eq!(s.logged, 5);
        assert!(spools_in(&dir.0).is_empty(), "{:?}", spools_in(&dir.0));
    }

    fn batcher_config(rows: usize) -> BatcherConfig {
        BatcherConfig {
            max_batch_rows: rows,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn replay_retries_after_a_failure_and_dead_letters_a_poison_entry() {
        let dir = TempDir::new("poison");
        let (dead, _) = spooled(&dir.0, BatcherConfig::default(), small());
        let ids = log_actors(&dead, &["a", "b", "poison", "c"]);
        drop(dead);

        let (b, sink) = spooled(&dir.0, batcher_config(2), small());
        sink.fail.store(true, Ordering::SeqCst);
        let fresh = log_n(&b, 1);
        assert!(b.flush().await.is_err());
        assert!(
            written_ids(&sink).is_empty(),
            "nothing new before the replay"
        );
        assert!(b.replay_pending());
        sink.fail.store(false, Ordering::SeqCst);
        *sink.poison_actor.lock() = Some("poison".into());
        b.flush().await.unwrap();
        assert!(!b.replay_pending());
        let mut expected = vec![ids[0], ids[1], ids[3]];
        expected.extend(&fresh);
        assert_eq!(written_ids(&sink), expected);
        let s = b.stats();
        let spool = s.spool.unwrap();
        assert_eq!((spool.replayed, spool.replay_dead_lettered), (3, 1));
        assert_eq!(
            s.dead_lettered, 0,
            "recovered entries are not this batcher's"
        );
        b.close(soon()).await.unwrap();
        assert!(spools_in(&dir.0).is_empty());
    }

    #[tokio::test]
    async fn a_full_spool_applies_on_buffer_full_and_still_takes_critical_entries() {
        let dir = TempDir::new("full");
        let tight = SpoolConfig {
            max_bytes: 256 << 10,
            ..small()
        };
        let (b, _sink) = spooled(&dir.0, BatcherConfig::default(), tight.clone());
        let mut taken = 0;
        let err = loop {
            match b.log(entry(taken)) {
                Ok(_) => taken += 1,
                Err(e) => break e,
            }
            assert!(taken < 100_000, "the spool never filled");
        };
        assert!(matches!(err, LogError::BufferFull { .. }), "{err:?}");
        assert_eq!(b.stats().rejected, 1);
        let c = b.log(critical("alarm")).unwrap();
        assert!(matches!(c.disposition, Disposition::Buffered { .. }));
        let s = b.stats();
        assert_eq!(s.logged, taken as u64 + 1);
        assert!(s.spool.as_ref().unwrap().spool.full >= 1);
        assert_eq!(s.spool.unwrap().spool.appended, taken as u64 + 1);

        let dir2 = TempDir::new("full-drop");
        let config = BatcherConfig {
            on_buffer_full: OverflowPolicy::Drop,
            ..Default::default()
        };
        let (d, _) = spooled(&dir2.0, config, tight);
        for i in 0..taken + 10 {
            d.log(entry(i)).unwrap();
        }
        let s = d.stats();
        assert_eq!(s.dropped, 10);
        assert_books_balance(&s);
    }

    #[tokio::test]
    async fn settled_segments_are_released_by_the_periodic_work() {
        let dir = TempDir::new("release");
        let (b, _sink) = spooled(&dir.0, BatcherConfig::default(), small());
        // Entries of about 1 KB: several 64 KiB segments.
        for i in 0..400 {
            b.log(
                EntryDraft::new("act").with(TextField::Actor, format!("{i}{}", "x".repeat(1000))),
            )
            .unwrap();
        }
        assert!(maintain(&b).await);
        let before = b.stats().spool.unwrap().spool.segments;
        assert!(before >= 5, "{before}");
        b.flush().await.unwrap();
        assert!(maintain(&b).await);
        let after = b.stats().spool.unwrap().spool;
        assert!(after.segments <= 2, "{after:?}");
        assert!(after.syncs >= 2);
        b.close(soon()).await.unwrap();
        assert!(spools_in(&dir.0).is_empty());
    }

    #[tokio::test]
    async fn a_close_that_runs_out_of_time_leaves_the_rest_for_the_next_start() {
        let dir = TempDir::new("timeout");
        let (b, sink) = spooled(&dir.0, BatcherConfig::default(), small());
        sink.fail.store(true, Ordering::SeqCst);
        let ids = log_n(&b, 20);
        let deadline = Instant::now() + Duration::from_millis(50);
        assert!(b.close(deadline).await.is_err());
        assert_eq!(spools_in(&dir.0).len(), 1);
        drop(b);

        assert_eq!(written_by_next_start(&dir.0).await, ids);
        assert!(spools_in(&dir.0).is_empty());
    }

    #[tokio::test]
    async fn a_spool_that_cannot_be_written_keeps_entries_in_memory_and_log_does_not_fail() {
        let dir = TempDir::new("broken");
        let (b, sink) = spooled(&dir.0, BatcherConfig::default(), small());
        let own = b.state.lock().spool.as_ref().unwrap().dir();
        // Take the spool's directory away: the next segment cannot be created.
        std::fs::remove_dir_all(&own).unwrap();
        let mut ids = Vec::new();
        // Enough to need a second segment.
        for i in 0..200 {
            let big =
                EntryDraft::new("act").with(TextField::Actor, format!("{i}{}", "y".repeat(1000)));
            ids.push(b.log(big).unwrap().id);
        }
        let s = b.stats();
        assert!(s.spool.as_ref().unwrap().unspooled > 0, "{s:?}");
        b.close(soon()).await.unwrap_or(());
        assert_eq!(written_ids(&sink), ids);
    }

    /// A spooled batcher whose observer records what it hears.
    fn observed(dir: &Path) -> (TestBatcher, Arc<Recorder>) {
        let recorder = Arc::new(Recorder::default());
        let (s, recovery) = Spool::open(dir, small()).unwrap();
        let b = Batcher::new(Arc::new(TestSink::default()), BatcherConfig::default())
            .with_spool(s, recovery)
            .with_observer(Box::new(recorder.clone()), None);
        (Arc::new(b), recorder)
    }

    #[tokio::test]
    async fn disk_trouble_is_reported_once_per_streak() {
        let dir = TempDir::new("report");
        let (b, recorder) = observed(&dir.0);
        let own = b.state.lock().spool.as_ref().unwrap().dir();
        std::fs::remove_dir_all(&own).unwrap();
        for i in 0..300 {
            let big =
                EntryDraft::new("act").with(TextField::Actor, format!("{i}{}", "z".repeat(1000)));
            b.log(big).unwrap();
        }
        let unspooled = b.stats().spool.unwrap().unspooled;
        assert!(unspooled > 1, "{unspooled}");
        let errors = recorder
            .events
            .lock()
            .iter()
            .filter(|e| e.starts_with("error"))
            .count();
        assert_eq!(errors, 1);
    }

    #[tokio::test]
    async fn a_failed_sync_is_reported_through_the_observer() {
        let dir = TempDir::new("syncreport");
        let (b, recorder) = observed(&dir.0);
        log_n(&b, 10);
        b.state.lock().spool.as_ref().unwrap().fail_next_syncs(1);
        assert!(maintain(&b).await);
        let events = recorder.events.lock().clone();
        let errors: Vec<_> = events.iter().filter(|e| e.starts_with("error")).collect();
        assert_eq!(errors.len(), 1, "{events:?}");
        let message = recorder.errors.lock()[0].clone();
        assert!(message.contains("fdatasync failed"), "{message}");
        assert!(maintain(&b).await, "a later sync succeeds, unreported");
        assert_eq!(recorder.events.lock().len(), events.len());
    }

    #[tokio::test]
    async fn after_a_failed_sync_unsettled_entries_are_appended_again_and_survive_a_crash() {
        let dir = TempDir::new("syncfail");
        let (b, sink) = spooled(&dir.0, BatcherConfig::default(), small());
        sink.fail.store(true, Ordering::SeqCst);
        let ids = log_n(&b, 40);
        b.state.lock().spool.as_ref().unwrap().fail_next_syncs(1);
        assert!(maintain(&b).await);
        let s = b.stats().spool.unwrap().spool;
        assert_eq!(s.sync_failures, 1, "{s:?}");
        assert_eq!(s.appended, 80, "the 40 entries went again to a new segment");
        assert!(maintain(&b).await);
        assert_eq!(b.stats().spool.unwrap().spool.syncs, 1);
        drop(b); // a crash

        // Replayed from the abandoned segment and from the new one: the test sink stores a repeated id
        // again, where PostgreSQL's ON CONFLICT (id) DO NOTHING keeps one row.
        let unique = sorted_unique(written_by_next_start(&dir.0).await);
        assert_eq!(unique.len(), 40);
        assert_eq!(unique, sorted_unique(ids));
        assert!(spools_in(&dir.0).is_empty());
    }

    /// A batch staged and not yet committed (kept in the writer's slot for the next flush) is unsettled:
    /// a failed sync appends it again, numbered as it was, and it survives a crash.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_a_failed_sync_a_staged_batch_is_appended_again() {
        let dir = TempDir::new("syncstaged");
        let (b, sink) = spooled(&dir.0, BatcherConfig::default(), small());
        let (one, _never_run, first, second) = stage_then_ask(&b, &sink).await;
        one.await.unwrap().unwrap();
        assert_eq!(*sink.batches.lock(), [first]);
        assert!(sink.events.lock().iter().any(|e| e == "stage b1"));
        assert_eq!(b.pending(), 2, "b1 and b2 staged, not committed");

        b.state.lock().spool.as_ref().unwrap().fail_next_syncs(1);
        assert!(maintain(&b).await);
        let s = b.stats().spool.unwrap().spool;
        assert_eq!(s.sync_failures, 1, "{s:?}");
        assert_eq!(
            s.appended,
            5 + 2,
            "the staged batch went again to a new segment"
        );
        drop(b); // a crash: the staged batch is undone

        // The next start writes it (and, from the abandoned segment, entries already written, which
        // PostgreSQL's ON CONFLICT (id) DO NOTHING would keep once).
        let again = written_by_next_start(&dir.0).await;
        assert!(second.iter().all(|id| again.contains(id)), "{again:?}");
    }

    // ---- Past the memory bound: entries held on disk only ----

    /// A batcher whose memory bound is 64 KiB, with a spool of 64 KiB segments, its sink failing.
    fn spilling(dir: &Path) -> (TestBatcher, Arc<TestSink>) {
        let config = BatcherConfig {
            max_buffered_bytes: 64 << 10,
            max_batch_rows: 100,
            ..Default::default()
        };
        let (b, sink) = spooled(dir, config, small());
        sink.fail.store(true, Ordering::SeqCst);
        (b, sink)
    }

    /// Logs `n` entries of about 1 KB.
    fn log_kb(b: &TestBatcher, n: usize) -> Vec<Uuid> {
        (0..n)
            .map(|i| {
                let draft = EntryDraft::new("act")
                    .with(TextField::Actor, format!("{i}{}", "k".repeat(1000)));
                b.log(draft).unwrap().id
            })
            .collect()
    }

    #[tokio::test]
    async fn past_the_memory_bound_entries_wait_on_disk_and_are_written_in_order() {
        let dir = TempDir::new("spill");
        let (b, sink) = spilling(&dir.0);
        let mut ids = log_kb(&b, 3000);
        let s = b.stats();
        assert_eq!((s.buffered, s.rejected, s.dropped), (3000, 0, 0), "{s:?}");
        assert!(s.buffered_bytes <= 64 << 10, "memory bound held: {s:?}");
        let spilled = s.spool.as_ref().unwrap().spilled;
        assert!(spilled > 2900, "{spilled}");
        assert!(b.flush().await.is_err(), "the sink is down");
        assert_eq!(b.pending(), 3000);
        // A critical entry behind the spilled ones is taken and written after them.
        ids.push(b.log(critical("alarm")).unwrap().id);
        sink.fail.store(false, Ordering::SeqCst);
        b.flush().await.unwrap();
        assert_eq!(written_ids(&sink), ids);
        assert!(batch_sizes(&sink).iter().all(|&n| n <= 100));
        let s = b.stats();
        assert_books_balance(&s);
        assert_eq!(s.spool.as_ref().unwrap().spilled, 0);
        assert_eq!(s.written, 3001);
        b.close(soon()).await.unwrap();
        assert!(spools_in(&dir.0).is_empty());
    }

    #[tokio::test]
    async fn entries_held_on_disk_only_survive_a_crash() {
        let dir = TempDir::new("spill-crash");
        let (b, _) = spilling(&dir.0);
        let ids = log_kb(&b, 2000);
        assert!(b.stats().spool.unwrap().spilled > 1900);
        drop(b); // no close(): as after SIGKILL

        assert_eq!(written_by_next_start(&dir.0).await, ids);
        assert!(spools_in(&dir.0).is_empty());
    }

    #[tokio::test]
    async fn disk_trouble_while_entries_wait_on_disk_keeps_later_ones_in_memory_in_order() {
        let dir = TempDir::new("spill-tail");
        let (b, sink) = spilling(&dir.0);
        let mut ids = log_kb(&b, 500);
        b.state.lock().spool.as_ref().unwrap().fail_next_appends(3);
        // Small entries: they fit in memory, after the spilled ones.
        ids.extend(log_n(&b, 10));
        let s = b.stats();
        assert_eq!(s.spool.as_ref().unwrap().unspooled, 3);
        assert_eq!(
            b.state.lock().tail.len(),
            10,
            "kept in memory behind the spilled entries"
        );
        sink.fail.store(false, Ordering::SeqCst);
        b.close(soon()).await.unwrap();
        assert_eq!(written_ids(&sink), ids);
        assert_books_balance(&b.stats());
    }

    #[tokio::test]
    async fn a_failed_sync_while_entries_wait_on_disk_appends_them_again_and_writes_each_once() {
        let dir = TempDir::new("spill-syncfail");
        let (b, sink) = spilling(&dir.0);
        let ids = log_kb(&b, 300);
        b.state.lock().spool.as_ref().unwrap().fail_next_syncs(1);
        assert!(maintain(&b).await);
        let s = b.stats().spool.unwrap();
        assert_eq!(s.spool.sync_failures, 1);
        // The first segment's fdatasync failed: its spilled entries went again to a new segment.
        assert!(s.spool.appended > 300, "{s:?}");
        sink.fail.store(false, Ordering::SeqCst);
        b.flush().await.unwrap();
        assert_eq!(written_ids(&sink), ids, "each once, in order");
        drop(b); // a crash after the write: the next start finds nothing unwritten to lose

        let dir2 = TempDir::new("spill-syncfail-crash");
        let (b, _) = spilling(&dir2.0);
        let ids = log_kb(&b, 300);
        b.state.lock().spool.as_ref().unwrap().fail_next_syncs(1);
        assert!(maintain(&b).await);
        drop(b);
        let unique = sorted_unique(written_by_next_start(&dir2.0).await);
        assert_eq!(unique, sorted_unique(ids));
    }
}

/// A sink that stages, with batches of 10: 25 entries logged.
fn staging_batcher() -> (TestBatcher, Arc<TestSink>, Vec<Uuid>) {
    let (b, sink) = batcher(10);
    sink.stages.store(true, Ordering::SeqCst);
    let ids = log_n(&b, 25);
    (b, sink, ids)
}

fn chunks(ids: &[Uuid], sizes: &[usize]) -> Vec<Vec<Uuid>> {
    let mut at = 0;
    sizes
        .iter()
        .map(|n| {
            at += n;
            ids[at - n..at].to_vec()
        })
        .collect()
}

#[tokio::test]
async fn two_new_batches_are_staged_together_and_committed_in_order() {
    let (b, sink, ids) = staging_batcher();
    b.flush().await.unwrap();
    // The first two together, then the last 5, staged alone and committed before the flush returns.
    assert_eq!(sink.staged.load(Ordering::SeqCst), 3);
    assert_eq!(*sink.batches.lock(), chunks(&ids, &[10, 10, 5]));
    assert_eq!(
        *sink.events.lock(),
        [
            "stage u0",
            "stage u10",
            "commit u0",
            "commit u10",
            "stage u20",
            "commit u20"
        ]
    );
    assert!(sink.new_writes.lock().is_empty());
    let stats = b.stats();
    assert_eq!(
        (stats.written, stats.batches, stats.failed_flushes),
        (25, 3, 0)
    );
}

#[tokio::test]
async fn when_the_first_staged_batch_fails_to_commit_the_second_is_never_committed() {
    let (b, sink, ids) = staging_batcher();
    *sink.fail_commit_actor.lock() = Some("u0".into());
    let err = b.flush().await.unwrap_err();
    assert!(
        matches!(err, FlushError::Failed { pending: 25, .. }),
        "{err:?}"
    );
    assert!(sink.batches.lock().is_empty());
    assert_eq!(buffered_ids(&b), ids);
    b.flush().await.unwrap();
    // Sent before, so written again one at a time through the idempotent write, in order; the last 5,
    // never sent, staged.
    assert_eq!(*sink.batches.lock(), chunks(&ids, &[10, 10, 5]));
    assert_eq!(*sink.new_writes.lock(), vec![false, false]);
    assert_eq!(b.stats().failed_flushes, 1);
    assert_eq!(b.stats().written, 25);
}

#[tokio::test]
async fn a_failed_commit_of_the_second_batch_keeps_the_first_written() {
    let (b, sink, ids) = staging_batcher();
    *sink.fail_commit_actor.lock() = Some("u10".into());
    let err = b.flush().await.unwrap_err();
    assert!(
        matches!(err, FlushError::Failed { pending: 15, .. }),
        "{err:?}"
    );
    assert_eq!(*sink.batches.lock(), chunks(&ids, &[10]));
    b.flush().await.unwrap();
    assert_eq!(*sink.batches.lock(), chunks(&ids, &[10, 10, 5]));
    assert_eq!(b.stats().written, 25);
}

#[tokio::test]
async fn a_commit_refused_for_a_row_writes_the_batches_again_one_at_a_time_in_the_same_flush() {
    let (b, sink, ids) = staging_batcher();
    *sink.fail_commit_actor.lock() = Some("u0".into());
    sink.commit_rejects.store(true, Ordering::SeqCst);
    b.flush().await.unwrap();
    assert_eq!(*sink.batches.lock(), chunks(&ids, &[10, 10, 5]));
    assert_eq!(*sink.new_writes.lock(), vec![false, false]);
    let stats = b.stats();
    assert_eq!((stats.written, stats.failed_flushes), (25, 1));
    assert_eq!(
        stats.last_error.unwrap().0.sqlstate.as_deref(),
        Some("23514")
    );
}

#[tokio::test]
async fn a_failed_stage_writes_both_batches_again_one_at_a_time() {
    let (b, sink, ids) = staging_batcher();
    *sink.fail_stage_actor.lock() = Some("u12".into());
    b.flush().await.unwrap();
    assert_eq!(*sink.batches.lock(), chunks(&ids, &[10, 10, 5]));
    assert_eq!(*sink.new_writes.lock(), vec![false, false]);
    let stats = b.stats();
    assert_eq!((stats.written, stats.failed_flushes), (25, 1));
}

#[tokio::test]
async fn a_pair_dropped_before_its_commits_puts_both_batches_back_in_order() {
    let (b, sink, ids) = staging_batcher();
    let gate = Arc::new(tokio::sync::Notify::new());
    *sink.commit_gate.lock() = Some(gate);
    let cut = tokio::time::timeout(Duration::from_millis(50), b.flush()).await;
    assert!(cut.is_err(), "the commit was held");
    assert_eq!(sink.staged.load(Ordering::SeqCst), 2);
    assert!(sink.batches.lock().is_empty());
    assert_eq!(buffered_ids(&b), ids);
    assert_eq!(b.pending(), 25);
    *sink.commit_gate.lock() = None;
    b.flush().await.unwrap();
    assert_eq!(*sink.batches.lock(), chunks(&ids, &[10, 10, 5]));
    assert_eq!(b.stats().written, 25);
}

/// With `sink` staging: logs `a1..a3` and starts a flush of them; while their batch is being staged
/// (held at the stage gate), logs `b1, b2` and asks for them with a second flush, returned unrun; then
/// opens the stage gate. Returns the first flush's task, the second flush, and the two groups of ids.
async fn stage_then_ask(
    b: &TestBatcher,
    sink: &TestSink,
) -> (
    tokio::task::JoinHandle<Result<FlushOutcome, FlushError>>,
    FlushTicket,
    Vec<Uuid>,
    Vec<Uuid>,
) {
    sink.stages.store(true, Ordering::SeqCst);
    close_gate(&sink.stage_gate);
    let first = log_actors(b, &["a1", "a2", "a3"]);
    let one = tokio::spawn({
        let b = b.clone();
        async move { b.flush().await }
    });
    while sink.staged.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    let second = log_actors(b, &["b1", "b2"]);
    let ticket = b.begin_flush().unwrap();
    release(&sink.stage_gate);
    (one, ticket, first, second)
}

/// Waits until `sink` has recorded `event`.
async fn event(sink: &TestSink, event: &str) {
    while !sink.events.lock().iter().any(|e| e == event) {
        tokio::task::yield_now().await;
    }
}

/// A batch staged by one flush is committed while the next flush's batch is staged: the commit of one
/// overlaps the writing of the next, and the commits stay in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_commits_its_batch_while_the_next_flush_stages_its_own() {
    let (b, sink) = batcher(100);
    close_gate(&sink.commit_gate);
    let (one, ticket, first, second) = stage_then_ask(&b, &sink).await;
    let two = tokio::spawn({
        let b = b.clone();
        async move { ticket.run(&b).await }
    });
    event(&sink, "stage b1").await;
    assert_eq!(*sink.events.lock(), ["stage a1", "stage b1"]);
    assert!(sink.batches.lock().is_empty(), "nothing committed yet");
    release(&sink.commit_gate);
    assert_eq!(one.await.unwrap().unwrap().written, 3);
    assert_eq!(two.await.unwrap().unwrap().pending, 0);
    assert_eq!(
        *sink.events.lock(),
        ["stage a1", "stage b1", "commit a1", "commit b1"]
    );
    assert_eq!(*sink.batches.lock(), [first, second]);
    assert_eq!(b.stats().written, 5);
}

/// The staged batch's commit fails: the batch staged beside it is undone, and both are written again
/// later, in order, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_undoes_the_batch_staged_beside_it() {
    let (b, sink) = batcher(100);
    *sink.fail_commit_actor.lock() = Some("a1".into());
    let (one, ticket, first, second) = stage_then_ask(&b, &sink).await;
    assert!(matches!(
        one.await.unwrap(),
        Err(FlushError::Failed { pending: 5, .. })
    ));
    assert!(sink.batches.lock().is_empty());
    assert_eq!(buffered_ids(&b), [first.clone(), second.clone()].concat());
    assert_eq!(ticket.run(&b).await.unwrap().pending, 0);
    assert_eq!(
        *sink.batches.lock(),
        [[first, second].concat()],
        "sent before: written again together, through the idempotent write"
    );
    assert_eq!(*sink.new_writes.lock(), vec![false]);
    assert_eq!(b.stats().failed_flushes, 1);
}
