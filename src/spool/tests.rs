//! The spool against real files: round trips, crashes (dropped handles and a killed child process), torn
//! and damaged segments, bounds, a full disk, and the append cost.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::lock::DirLock;
use super::record::tests::sample_entry;
use super::record::{encoded_len, HEADER_LEN};
use super::segment::{file_header, list_segments, FILE_HEADER_LEN};
use super::*;

/// A fresh directory under the system's temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "spool-test-{tag}-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn small(backend: Backend) -> SpoolConfig {
    SpoolConfig {
        segment_bytes: 64 << 10,
        backend,
        ..SpoolConfig::default()
    }
}

fn open(dir: &Path, config: SpoolConfig) -> (Spool, Recovery) {
    Spool::open(dir, config).unwrap()
}

fn append_range(spool: &Spool, seqs: std::ops::RangeInclusive<u64>, size: usize) {
    for n in seqs {
        spool.append(n, &sample_entry(n, size)).unwrap();
    }
}

/// Opens `dir` again (as a restarted process would) and reads everything it recovers.
fn recover(dir: &Path) -> (Spool, Vec<Recovered>) {
    let (spool, recovery) = open(dir, small(Backend::Auto));
    let got: Vec<Recovered> = recovery.collect();
    (spool, got)
}

fn seqs(r: &[Recovered]) -> Vec<u64> {
    r.iter().map(|r| r.original_seq).collect()
}

#[test]
fn entries_survive_a_dropped_handle_with_ids_times_and_fields_in_order() {
    for backend in [Backend::Mapped, Backend::Write] {
        let dir = TempDir::new("roundtrip");
        let (spool, recovery) = open(dir.path(), small(backend));
        assert!(recovery.is_empty());
        append_range(&spool, 1..=50, 600);
        assert_eq!(spool.stats().mapped, backend == Backend::Mapped);
        drop(recovery);
        drop(spool); // no close(): as after a crash
        let (spool, got) = recover(dir.path());
        assert_eq!(seqs(&got), (1..=50).collect::<Vec<_>>());
        for r in &got {
            assert_eq!(r.entry, sample_entry(r.original_seq, 600));
            assert_eq!(r.replay_seq, r.original_seq);
        }
        let stats = spool.stats();
        assert_eq!(
            (stats.recovered, stats.damaged, stats.torn_tails),
            (50, 0, 0)
        );
    }
}

#[test]
fn order_holds_across_segments_and_backlog_reads_from_a_seq() {
    let dir = TempDir::new("segments");
    let (spool, _r) = open(dir.path(), small(Backend::Auto));
    append_range(&spool, 1..=600, 600);
    let stats = spool.stats();
    assert!(stats.segments >= 5, "{stats:?}");
    let back: Vec<u64> = spool.backlog(250).map(|r| r.seq).collect();
    assert_eq!(back, (250..=600).collect::<Vec<_>>());
    drop(spool);
    let (_spool, got) = recover(dir.path());
    assert_eq!(seqs(&got), (1..=600).collect::<Vec<_>>());
}

/// Writes `segment` as the only segment of a dead spool under `dir`.
fn plant(dir: &Path, name: &str, segments: &[Vec<u8>]) -> PathBuf {
    let spool = dir.join(format!("{SPOOL_PREFIX}{name}"));
    std::fs::create_dir_all(&spool).unwrap();
    for (i, bytes) in segments.iter().enumerate() {
        std::fs::write(spool.join(segment_name(i as u64 + 1)), bytes).unwrap();
    }
    spool
}

/// A segment holding the records of `seqs`, as write(2) leaves it, and the offset where each record starts.
fn segment_bytes(seqs: std::ops::RangeInclusive<u64>, size: usize) -> (Vec<u8>, Vec<usize>) {
    let mut bytes = file_header().to_vec();
    let mut starts = Vec::new();
    for n in seqs {
        let e = sample_entry(n, size);
        let len = encoded_len(&e).unwrap();
        starts.push(bytes.len());
        let at = bytes.len();
        bytes.resize(at + len, 0);
        record::encode_into(&mut bytes[at..], n, &e);
    }
    (bytes, starts)
}

#[test]
fn a_torn_last_record_is_cut_at_every_byte_offset() {
    let (bytes, starts) = segment_bytes(1..=3, 300);
    let last = *starts.last().unwrap();
    for cut in last..bytes.len() {
        // Cut short (write(2) died mid-record) and zero-filled (a mapped segment's preallocated tail).
        let mut zeroed = bytes.clone();
        zeroed[cut..].fill(0);
        zeroed.resize(bytes.len() + 4096, 0);
        for seg in [bytes[..cut].to_vec(), zeroed] {
            let dir = TempDir::new("torn");
            plant(dir.path(), "dead", &[seg]);
            let (spool, got) = recover(dir.path());
            assert_eq!(seqs(&got), vec![1, 2], "cut at {cut}");
            let s = spool.stats();
            assert_eq!(s.damaged, 0, "cut at {cut}");
            // A cut right at the record's start leaves no trace of it.
            assert_eq!(s.torn_tails, u64::from(cut > last), "cut at {cut}");
        }
    }
}

#[test]
fn a_flipped_byte_mid_segment_skips_one_record_counts_it_and_quarantines_the_segment() {
    let (bytes, starts) = segment_bytes(1..=5, 200);
    let (from, to) = (starts[2], starts[3]);
    for at in (from..to).step_by(3) {
        let dir = TempDir::new("flip");
        let mut seg = bytes.clone();
        seg[at] ^= 0x5a;
        let spool_dir = plant(dir.path(), "dead", &[seg]);
        let (spool, recovery) = open(dir.path(), small(Backend::Auto));
        let got: Vec<Recovered> = recovery.collect();
        let s = spool.stats();
        let padding = at >= from + HEADER_LEN + 60 + record_text_len(3, 200);
        if padding {
            assert_eq!(seqs(&got), vec![1, 2, 3, 4, 5], "flip at {at}");
            continue;
        }
        assert_eq!(seqs(&got), vec![1, 2, 4, 5], "flip at {at}");
        assert_eq!((s.damaged, s.torn_tails), (1, 0), "flip at {at}");
        spool.release_recovered_through(got.len() as u64).unwrap();
        assert!(!spool_dir.exists(), "the claimed spool is removed");
        let q: Vec<_> = std::fs::read_dir(dir.path().join(QUARANTINE))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(q, vec![format!("{SPOOL_PREFIX}dead-{}", segment_name(1))]);
    }
}

fn record_text_len(n: u64, size: usize) -> usize {
    let e = sample_entry(n, size);
    let t = [
        Some(e.action()),
        e.text(crate::entry::TextField::TenantId),
        e.text(crate::entry::TextField::Actor),
        e.text(crate::entry::TextField::Resource),
        e.text(crate::entry::TextField::Outcome),
        Some(e.payload_json()),
    ];
    t.iter().flatten().map(|s| s.len()).sum()
}

#[test]
fn garbage_segments_never_stop_start_up() {
    let dir = TempDir::new("garbage");
    let mut rng = fastrand::Rng::with_seed(7);
    let (good, _) = segment_bytes(1..=4, 100);
    let random: Vec<u8> = (0..5000).map(|_| rng.u8(..)).collect();
    let mut headed = file_header().to_vec();
    headed.extend(&random);
    plant(
        dir.path(),
        "a",
        &[random.clone(), headed, vec![0; 10], vec![1, 2, 3], good],
    );
    let (spool, got) = recover(dir.path());
    assert_eq!(seqs(&got), vec![1, 2, 3, 4]);
    let s = spool.stats();
    assert!(s.damaged >= 2 && s.damaged + s.torn_tails >= 3, "{s:?}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    #[test]
    fn any_damage_yields_a_subsequence_of_the_entries_in_order(
        flips in proptest::collection::vec((0usize..4000, proptest::prelude::any::<u8>()), 0..6),
        cut in 0usize..4000,
    ) {
        let (mut bytes, _) = segment_bytes(1..=12, 150);
        for (at, x) in flips {
            let i = at % bytes.len();
            bytes[i] ^= x;
        }
        bytes.truncate(cut.max(1).min(bytes.len()));
        let dir = TempDir::new("prop");
        plant(dir.path(), "p", &[bytes]);
        let (_spool, got) = recover(dir.path());
        let s = seqs(&got);
        proptest::prop_assert!(s.windows(2).all(|w| w[0] < w[1]));
        for r in &got {
            proptest::prop_assert_eq!(&r.entry, &sample_entry(r.original_seq, 150));
        }
    }
}

#[test]
fn two_live_handles_never_share_a_spool_and_a_dropped_ones_is_claimed() {
    let dir = TempDir::new("locks");
    let (a, _ra) = open(dir.path(), small(Backend::Auto));
    append_range(&a, 1..=10, 100);
    let (b, rb) = open(dir.path(), small(Backend::Auto));
    assert!(rb.is_empty(), "a live spool is not claimed");
    assert_ne!(a.dir(), b.dir());
    assert!(DirLock::try_take(&a.dir()).unwrap().is_none());
    append_range(&b, 1..=3, 100);
    drop(a);
    drop(_ra);
    let (c, rc) = open(dir.path(), small(Backend::Auto));
    let got: Vec<Recovered> = rc.collect();
    assert_eq!(
        seqs(&got),
        (1..=10).collect::<Vec<_>>(),
        "only the dead one"
    );
    drop((b, c));
}

#[test]
fn claimed_spools_replay_oldest_first_and_are_removed_once_released() {
    let dir = TempDir::new("claim");
    let (seg_a, _) = segment_bytes(1..=3, 100);
    let (seg_b, _) = segment_bytes(7..=8, 100);
    let (seg_c, _) = segment_bytes(4..=6, 100);
    let a = plant(dir.path(), "0001-a", &[seg_a, seg_c]);
    let b = plant(dir.path(), "0002-b", &[seg_b]);
    let empty = plant(dir.path(), "0003-empty", &[]);
    let (spool, recovery) = open(dir.path(), small(Backend::Auto));
    assert!(!empty.exists(), "an empty dead spool is removed at once");
    assert_eq!(recovery.segments(), 3);
    let before = spool.stats();
    let got: Vec<Recovered> = recovery.collect();
    assert_eq!(seqs(&got), vec![1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(
        got.iter().map(|r| r.replay_seq).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
    spool.release_recovered_through(5).unwrap();
    assert!(!a.join(segment_name(1)).exists() && a.join(segment_name(2)).exists());
    spool.release_recovered_through(8).unwrap();
    assert!(!a.exists() && !b.exists());
    let after = spool.stats();
    assert!(
        after.bytes < before.bytes && after.segments == 1,
        "{after:?}"
    );
    spool.sync().unwrap();
}

#[test]
fn a_killed_child_process_holds_its_spool_until_it_dies_then_loses_nothing() {
    let dir = TempDir::new("child");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "spool::tests::child_appends_then_waits",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SPOOL_CHILD_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("SPOOL-CHILD-READY"));
    assert!(ready, "the child never said ready");
    let (spool, recovery) = open(dir.path(), small(Backend::Auto));
    assert!(
        recovery.is_empty(),
        "the child is alive: its spool is not claimed"
    );
    let seen = inspect(dir.path()).unwrap();
    let theirs: Vec<_> = seen
        .spools
        .iter()
        .filter(|s| s.live && s.entries == 200)
        .collect();
    assert_eq!(theirs.len(), 1, "{seen:?}");
    drop((spool, recovery));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let (_spool, got) = recover(dir.path());
    assert_eq!(seqs(&got), (1..=200).collect::<Vec<_>>());
}

/// Run by the test above in a child process: appends 200 entries, says "ready", waits to be killed.
#[test]
#[ignore = "a helper run in a child process"]
fn child_appends_then_waits() {
    let Some(dir) = std::env::var_os("SPOOL_CHILD_DIR") else {
        return;
    };
    let (spool, _r) = open(Path::new(&dir), small(Backend::Auto));
    append_range(&spool, 1..=200, 500);
    println!("SPOOL-CHILD-READY");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn release_deletes_only_sealed_segments_wholly_settled_and_close_removes_an_empty_spool() {
    let dir = TempDir::new("release");
    let (spool, _r) = open(dir.path(), small(Backend::Auto));
    append_range(&spool, 1..=400, 600);
    let own = spool.dir();
    let count = || list_segments(&own).unwrap().len();
    let before = count();
    assert!(before >= 4);
    assert_eq!(spool.release_through(0).unwrap(), 0);
    // The first segment holds entries 1..=k: settling k-1 of them keeps it.
    let first: Vec<u64> = SegmentScan::open(&list_segments(&own).unwrap()[0].1, None)
        .unwrap()
        .map(|r| r.seq)
        .collect();
    let k = *first.last().unwrap();
    assert_eq!(spool.release_through(k - 1).unwrap(), 0);
    assert_eq!(spool.release_through(k).unwrap(), 1);
    assert_eq!(count(), before - 1);
    assert_eq!(
        spool.release_through(400).unwrap(),
        before - 2,
        "all but the open one"
    );
    assert_eq!(count(), 1);
    spool.sync().unwrap();
    assert!(spool.close().unwrap());
    assert!(!own.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn close_with_unsettled_entries_leaves_them_for_the_next_start() {
    let dir = TempDir::new("close");
    let (spool, _r) = open(dir.path(), small(Backend::Auto));
    append_range(&spool, 1..=20, 100);
    spool.release_through(10).unwrap();
    assert!(!spool.close().unwrap());
    drop(spool); // its lock goes with the handle
    let (_s, got) = recover(dir.path());
    assert_eq!(
        seqs(&got),
        (1..=20).collect::<Vec<_>>(),
        "replay may repeat settled ones"
    );
}

#[test]
fn appends_stop_with_full_at_the_bound_but_critical_entries_go_in() {
    let dir = TempDir::new("full");
    let config = SpoolConfig {
        max_bytes: 256 << 10,
        ..small(Backend::Auto)
    };
    let (spool, _r) = open(dir.path(), config);
    let mut seq = 0;
    let err = loop {
        seq += 1;
        if let Err(e) = spool.append(seq, &sample_entry(seq, 600)) {
            break e;
        }
        assert!(seq < 10_000);
    };
    assert!(matches!(err, SpoolError::Full { .. }), "{err}");
    let s = spool.stats();
    assert!(s.bytes <= 256 << 10 && s.full == 1, "{s:?}");
    spool.append_critical(seq, &sample_entry(seq, 600)).unwrap();
    assert!(spool.stats().bytes > 256 << 10);
    spool.release_through(seq).unwrap();
    spool.append(seq + 1, &sample_entry(seq + 1, 600)).unwrap();
}

#[test]
fn sync_counts_and_never_mode_does_nothing() {
    let dir = TempDir::new("sync");
    let (spool, _r) = open(dir.path(), small(Backend::Auto));
    append_range(&spool, 1..=5, 100);
    spool.sync().unwrap();
    spool.sync().unwrap();
    let s = spool.stats();
    assert_eq!(s.syncs, 2);
    assert!(s.last_sync.is_some());
    let (never, _r2) = open(
        dir.path(),
        SpoolConfig {
            sync: SyncMode::Never,
            ..small(Backend::Auto)
        },
    );
    append_range(&never, 1..=5, 100);
    never.sync().unwrap();
    assert_eq!(never.stats().syncs, 0);
}

#[test]
fn recovery_reads_through_a_bounded_window() {
    let dir = TempDir::new("stream");
    let config = SpoolConfig {
        segment_bytes: 8 << 20,
        ..SpoolConfig::default()
    };
    let (spool, _r) = open(dir.path(), config);
    append_range(&spool, 1..=20_000, 600);
    let on_disk = spool.stats().bytes;
    drop(spool);
    let (_s, recovery) = open(dir.path(), small(Backend::Auto));
    let mut recovery = recovery;
    let mut n = 0;
    for r in recovery.by_ref() {
        n += 1;
        assert_eq!(r.original_seq, n);
    }
    assert_eq!(n, 20_000);
    let peak = recovery.peak_buffer_bytes();
    assert!(
        on_disk > 12 << 20 && peak <= 512 << 10,
        "{peak} of {on_disk}"
    );
}

#[test]
fn inspect_reports_each_spool_without_changing_it() {
    let dir = TempDir::new("inspect");
    let (bytes, starts) = segment_bytes(1..=6, 100);
    let mut torn = bytes.clone();
    torn.truncate(starts[5] + 20);
    let dead = plant(dir.path(), "dead", &[torn]);
    let seen = inspect(dir.path()).unwrap();
    assert_eq!(seen.spools.len(), 1);
    let s = &seen.spools[0];
    assert!(
        !s.live && s.entries == 5 && s.torn_tails == 1 && s.damaged == 0,
        "{s:?}"
    );
    assert_eq!(s.oldest, Some(sample_entry(1, 100).occurred_at()));
    assert_eq!(s.newest, Some(sample_entry(5, 100).occurred_at()));
    assert_eq!(s.segments, 1);
    // Once a batcher starts, the dead spool is claimed (held) and its own spool shows, empty.
    let (live, _r) = open(dir.path(), small(Backend::Auto));
    append_range(&live, 1..=2, 100);
    let seen = inspect(dir.path()).unwrap();
    assert_eq!(seen.spools.len(), 2);
    assert!(seen.spools.iter().all(|s| s.live));
    let claimed = seen.spools.iter().find(|s| s.path == dead).unwrap();
    assert_eq!(claimed.entries, 5);
    let own = seen.spools.iter().find(|s| s.path == live.dir()).unwrap();
    assert_eq!(own.entries, 2);
    assert!(inspect(&dir.path().join("missing")).is_err());
}

/// Mounts a small tmpfs (needs root) so that the disk really fills up.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(size_kib: u64) -> Option<SmallDisk> {
        let dir = TempDir::new("tmpfs");
        let path = dir.0.clone();
        std::mem::forget(dir);
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_kib}k"), "tmpfs"])
            .arg(&path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = std::fs::remove_dir(&path);
            return None;
        }
        Some(SmallDisk(path))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_full_disk_is_an_error_value_and_the_spool_resumes_when_space_returns() {
    let Some(disk) = SmallDisk::mount(1024) else {
        eprintln!("skipped: mounting a tmpfs needs root (and mount permission in this sandbox)");
        return;
    };
    let root = disk.0.join("spool");
    let (spool, _r) = open(&root, small(Backend::Auto));
    assert!(spool.stats().mapped, "tmpfs segments are mapped");
    let filler = disk.0.join("filler");
    std::fs::write(&filler, vec![1u8; 600 << 10]).unwrap();
    let mut seq = 0;
    let err = loop {
        seq += 1;
        if let Err(e) = spool.append(seq, &sample_entry(seq, 600)) {
            break e;
        }
        assert!(seq < 100_000);
    };
    assert_eq!(
        err.io_kind(),
        Some(std::io::ErrorKind::StorageFull),
        "{err}"
    );
    // Further appends fail fast while the disk is full, without touching it.
    assert!(matches!(
        spool.append(seq, &sample_entry(seq, 600)),
        Err(SpoolError::Unavailable { .. })
    ));
    std::fs::remove_file(&filler).unwrap();
    std::thread::sleep(RETRY_AFTER + Duration::from_millis(50));
    spool.append(seq, &sample_entry(seq, 600)).unwrap();
    spool.sync().unwrap();
    drop(spool);
    let (_s, r) = open(&root, small(Backend::Auto));
    let got: Vec<u64> = r.map(|r| r.original_seq).collect();
    assert_eq!(
        got,
        (1..=seq).collect::<Vec<_>>(),
        "nothing accepted is lost"
    );
}

#[test]
fn a_disk_that_fills_under_write_2_loses_no_accepted_entry() {
    let Some(disk) = SmallDisk::mount(1024) else {
        eprintln!("skipped: mounting a tmpfs needs root (and mount permission in this sandbox)");
        return;
    };
    let root = disk.0.join("spool");
    let (spool, _r) = open(&root, small(Backend::Write));
    assert!(!spool.stats().mapped);
    let filler = disk.0.join("filler");
    std::fs::write(&filler, vec![1u8; 700 << 10]).unwrap();
    let mut accepted = Vec::new();
    let mut failures = 0;
    for seq in 1..=2000u64 {
        match spool.append(seq, &sample_entry(seq, 600)) {
            Ok(()) => accepted.push(seq),
            Err(e) => {
                assert!(
                    matches!(e, SpoolError::Io { .. } | SpoolError::Unavailable { .. }),
                    "{e}"
                );
                assert_eq!(e.io_kind(), Some(std::io::ErrorKind::StorageFull), "{e}");
                failures += 1;
            }
        }
    }
    assert!(failures > 0 && !accepted.is_empty());
    std::fs::remove_file(&filler).unwrap();
    std::thread::sleep(RETRY_AFTER + Duration::from_millis(50));
    spool.append(2001, &sample_entry(2001, 600)).unwrap();
    accepted.push(2001);
    drop(spool);
    let (s, r) = open(&root, small(Backend::Write));
    let got: Vec<u64> = r.map(|r| r.original_seq).collect();
    assert_eq!(got, accepted, "exactly the accepted entries, in order");
    assert_eq!(s.stats().damaged, 0);
}

/// The cost of one append of a ~600-byte entry, per backend. Debug code is ten times slower than the
/// real thing; the figures in the module doc came from the hot crates at opt-level 3:
/// `cargo test --config profile.dev.package.audit-batcher.opt-level=3 --config
/// profile.dev.package.crc32c.opt-level=3 --config profile.dev.package.parking_lot.opt-level=3 --config
/// profile.dev.package.parking_lot_core.opt-level=3 --config profile.dev.package.lock_api.opt-level=3
/// --config profile.dev.package.memmap2.opt-level=3 --config profile.dev.package.rustix.opt-level=3
/// --config profile.dev.package.libc.opt-level=3 --lib spool::tests::measure_append -- --ignored
/// --nocapture` (or `cargo test --release ...`).
#[test]
#[ignore = "a measurement, not a check"]
fn measure_append() {
    let n = 200_000u64;
    let entries: Vec<Entry> = (1..=1000).map(|i| sample_entry(i, 600)).collect();
    for backend in [Backend::Mapped, Backend::Write] {
        let dir = TempDir::new("measure");
        let (spool, _r) = open(
            dir.path(),
            SpoolConfig {
                backend,
                ..SpoolConfig::default()
            },
        );
        let mut ns = Vec::with_capacity(n as usize);
        for seq in 1..=n {
            let e = &entries[(seq % 1000) as usize];
            let t = Instant::now();
            spool.append(seq, e).unwrap();
            ns.push(t.elapsed().as_nanos() as u64);
        }
        ns.sort_unstable();
        let q = |p: f64| ns[((ns.len() - 1) as f64 * p) as usize];
        println!(
            "{backend:?}: {n} appends of {} B records: median {} ns, p90 {} ns, p99 {} ns, p99.9 {} ns",
            encoded_len(&entries[0]).unwrap(),
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999)
        );
        let t = Instant::now();
        spool.sync().unwrap();
        println!("{backend:?}: sync of {n} appends: {:?}", t.elapsed());
    }
}

#[test]
fn file_header_length_is_the_first_record_offset() {
    assert_eq!(file_header().len() as u64, FILE_HEADER_LEN);
}

#[test]
fn a_failed_sync_abandons_the_segment_and_names_the_entries_to_append_again() {
    let dir = TempDir::new("syncfail");
    let (spool, _r) = open(dir.path(), small(Backend::Auto));
    append_range(&spool, 1..=10, 100);
    spool.sync().unwrap();
    append_range(&spool, 11..=20, 100);
    spool
        .fail_syncs
        .store(1, std::sync::atomic::Ordering::Relaxed);
    let err = spool.sync().unwrap_err();
    match &err {
        SpoolError::SyncFailed {
            from_seq,
            through_seq,
            ..
        } => assert_eq!((*from_seq, *through_seq), (11, 20)),
        other => panic!("{other}"),
    }
    assert_eq!(spool.stats().sync_failures, 1);
    // The abandoned segment is never synced again: the next sync has nothing to do (no failure injected
    // would be consumed by it).
    spool
        .fail_syncs
        .store(1, std::sync::atomic::Ordering::Relaxed);
    spool.sync().unwrap();
    spool
        .fail_syncs
        .store(0, std::sync::atomic::Ordering::Relaxed);
    let again: Vec<Entry> = (11..=20).map(|n| sample_entry(n, 100)).collect();
    assert_eq!(spool.reappend((11..=20).zip(again.iter())).unwrap(), 10);
    append_range(&spool, 21..=22, 100);
    spool.sync().unwrap();
    // The abandoned segment goes once its entries are settled.
    assert_eq!(spool.release_through(22).unwrap(), 1);
    drop(spool);
    let (_s, got) = recover(dir.path());
    assert_eq!(seqs(&got), (11..=22).collect::<Vec<_>>());
}

#[test]
fn a_recovery_cut_short_by_a_crash_is_replayed_whole_next_time() {
    let dir = TempDir::new("rerecover");
    let (spool, _r) = open(dir.path(), small(Backend::Auto));
    append_range(&spool, 1..=30, 300);
    drop((spool, _r));
    let (second, recovery) = open(dir.path(), small(Backend::Auto));
    let first_part: Vec<Recovered> = recovery.take(7).collect();
    second.release_recovered_through(7).unwrap(); // the segment is not finished: nothing goes
    drop(second); // killed while replaying
    let (third, got) = recover(dir.path());
    assert_eq!(seqs(&first_part), (1..=7).collect::<Vec<_>>());
    assert_eq!(seqs(&got), (1..=30).collect::<Vec<_>>());
    third.release_recovered_through(got.len() as u64).unwrap();
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "only the third's own spool is left");
}

#[test]
fn appends_and_syncs_from_two_threads_lose_nothing() {
    let dir = TempDir::new("threads");
    let (spool, _r) = open(dir.path(), small(Backend::Auto));
    let spool = std::sync::Arc::new(spool);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let syncer = {
        let (spool, stop) = (spool.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                spool.sync().unwrap();
            }
        })
    };
    append_range(&spool, 1..=2000, 400);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    syncer.join().unwrap();
    assert!(spool.stats().syncs > 0);
    drop(spool);
    let (_s, got) = recover(dir.path());
    assert_eq!(seqs(&got), (1..=2000).collect::<Vec<_>>());
}

#[test]
fn the_handle_can_be_shared_and_the_reader_moved_to_a_blocking_thread() {
    fn shared<T: Send + Sync>() {}
    fn movable<T: Send>() {}
    shared::<Spool>();
    movable::<Recovery>();
    movable::<Backlog>();
}

/// The cost of creating a segment (what one append pays at each rollover). Run with
/// `cargo test --lib spool::tests::measure_segment_creation -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn measure_segment_creation() {
    let dir = TempDir::new("measure-create");
    for backend in [Backend::Mapped, Backend::Write] {
        let mut ns = Vec::new();
        for i in 0..40u64 {
            let path = dir.path().join(format!("{backend:?}-{i}.seg"));
            let t = Instant::now();
            let w = super::segment::SegmentWriter::create(&path, 16 << 20, backend).unwrap();
            ns.push(t.elapsed().as_micros() as u64);
            drop(w);
            std::fs::remove_file(&path).unwrap();
        }
        ns.sort_unstable();
        println!(
            "{backend:?}: creating a 16 MiB segment: median {} µs, max {} µs",
            ns[ns.len() / 2],
            ns[ns.len() - 1]
        );
    }
}

#[test]
fn a_segment_prepared_ahead_takes_the_rollover_and_a_too_small_one_is_skipped_in_order() {
    let dir = TempDir::new("spare");
    let (spool, _r) = open(dir.path(), small(Backend::Auto));
    let own = spool.dir();
    spool.sync().unwrap(); // prepares segment 2
    assert_eq!(list_segments(&own).unwrap().len(), 2);
    append_range(&spool, 1..=150, 600); // about 90 KiB: rolls into segment 2
    assert_eq!(
        list_segments(&own).unwrap().len(),
        2,
        "no segment created inline"
    );
    // Segment 3 is prepared.
    spool.sync().unwrap();
    // A record larger than a segment cannot use the 64 KiB spare: it gets segment 4 of its own, and
    // the spare (3), which would replay before it, is left empty.
    spool.append(151, &sample_entry(151, 100 << 10)).unwrap();
    append_range(&spool, 152..=160, 600);
    let names: Vec<u64> = list_segments(&own)
        .unwrap()
        .iter()
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(names, vec![1, 2, 3, 4, 5]);
    // Segment 4 is sized for the large record, with some room left after it.
    let in_4: Vec<u64> = SegmentScan::open(&list_segments(&own).unwrap()[3].1, None)
        .unwrap()
        .map(|r| r.seq)
        .collect();
    let last_in_4 = *in_4.last().unwrap();
    assert!(in_4[0] == 151 && last_in_4 < 160, "{in_4:?}");
    let removed = spool.release_through(last_in_4).unwrap();
    let left: Vec<u64> = list_segments(&own)
        .unwrap()
        .iter()
        .map(|(n, _)| *n)
        .collect();
    assert_eq!((removed, left), (4, vec![5]), "1, 2, the empty 3, and 4 go");
    drop(spool);
    let (_s, got) = recover(dir.path());
    assert_eq!(seqs(&got), (last_in_4 + 1..=160).collect::<Vec<_>>());
}

#[test]
fn sigkill_at_random_instants_loses_no_acknowledged_entry() {
    let dir = TempDir::new("kill");
    let mut rng = fastrand::Rng::with_seed(11);
    let mut first_seq = 1u64;
    for round in 0..8 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "spool::tests::child_appends_until_killed",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SPOOL_CHILD_DIR", dir.path())
            .env("SPOOL_CHILD_FIRST", first_seq.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let last_ack = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let reader = {
            let last_ack = last_ack.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if let Some(n) = line.rsplit("ACK ").next().and_then(|n| n.parse().ok()) {
                        last_ack.store(n, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            })
        };
        let started = Instant::now();
        while last_ack.load(std::sync::atomic::Ordering::SeqCst) < first_seq {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the child never appended"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // Kill at a random instant while it appends (rollovers and syncs included).
        std::thread::sleep(Duration::from_millis(rng.u64(1..200)));
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();
        let acked = last_ack.load(std::sync::atomic::Ordering::SeqCst);
        // Restart: a new handle claims the dead child's spool and replays it.
        let (spool, recovery) = open(dir.path(), small(Backend::Auto));
        let got: Vec<u64> = recovery.map(|r| r.original_seq).collect();
        assert!(
            acked >= first_seq,
            "round {round}: the child acknowledged nothing"
        );
        assert_eq!(
            got.first().copied(),
            Some(first_seq),
            "round {round}: acked {acked}"
        );
        assert!(
            got.windows(2).all(|w| w[1] == w[0] + 1),
            "round {round}: a gap"
        );
        let last = *got.last().unwrap();
        assert!(
            last >= acked,
            "round {round}: acked {acked}, recovered up to {last}"
        );
        let stats = spool.stats();
        assert_eq!(stats.damaged, 0, "round {round}");
        eprintln!(
            "round {round}: acknowledged through {acked}, recovered {first_seq}..={last}, torn tails {}",
            stats.torn_tails
        );
        spool.release_recovered_through(got.len() as u64).unwrap();
        assert!(spool.close().unwrap());
        first_seq = last + 1;
    }
}

/// Run by the test above in a child process: appends from `SPOOL_CHILD_FIRST` on, printing each seq once
/// `append` has returned, with a sync every 50 appends, until it is killed.
#[test]
#[ignore = "a helper run in a child process"]
fn child_appends_until_killed() {
    let Some(dir) = std::env::var_os("SPOOL_CHILD_DIR") else {
        return;
    };
    let first: u64 = std::env::var("SPOOL_CHILD_FIRST")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let (spool, _r) = open(Path::new(&dir), small(Backend::Auto));
    let mut out = std::io::stdout().lock();
    for seq in first.. {
        spool.append(seq, &sample_entry(seq, 600)).unwrap();
        use std::io::Write;
        writeln!(out, "ACK {seq}").unwrap();
        out.flush().unwrap();
        if seq % 50 == 0 {
            spool.sync().unwrap();
        }
    }
}
