//! Reading a segment back, record by record, through a bounded window: never the whole file in memory,
//! never a panic or an endless loop on damaged bytes.
//!
//! What the reader does with bytes that are not a valid record at the position it expects one:
//! - it looks for the next valid record at each following 8-byte boundary (a header that checks itself,
//!   a body that matches its checksum);
//! - when it finds one, the bytes skipped are one damaged stretch: counted in `damaged`, reading goes on;
//! - when it finds none, the rest of the segment is its tail: all zeros is the unwritten end of a segment
//!   (nothing to report), anything else is a torn last record (`torn`), cut off.
//!
//! A record whose checksums hold but whose content is not a valid entry is counted as damaged too.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::record::{self, Record, HEADER_LEN};
use super::segment::{check_file_header, FileHeader, FILE_HEADER_LEN};

/// Bytes read from the file at once (more only for a record larger than this).
const WINDOW: usize = 256 * 1024;

/// A read-through window over part of a file.
struct Window {
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    start: u64,
    /// The most bytes the window ever held.
    peak: usize,
}

impl Window {
    fn new() -> Self {
        Window {
            buf: Vec::new(),
            start: 0,
            peak: 0,
        }
    }

    /// Bytes `off..off + len` of `file` (which is `limit` bytes long for this reader), or `None` when they
    /// run past `limit`.
    fn get(&mut self, file: &File, limit: u64, off: u64, len: usize) -> io::Result<Option<&[u8]>> {
        let Some(end) = off.checked_add(len as u64).filter(|&e| e <= limit) else {
            return Ok(None);
        };
        let have = off >= self.start && end <= self.start + self.buf.len() as u64;
        if !have {
            let want = (limit - off).min(len.max(WINDOW) as u64) as usize;
            self.buf.clear();
            self.buf.resize(want, 0);
            let mut filled = 0;
            while filled < want {
                match file.read_at(&mut self.buf[filled..], off + filled as u64) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            self.buf.truncate(filled);
            self.start = off;
            self.peak = self.peak.max(self.buf.capacity());
            if filled < len {
                return Ok(None);
            }
            if self.buf.capacity() > 4 * WINDOW && len <= WINDOW {
                self.buf.shrink_to(WINDOW);
            }
        }
        let at = (off - self.start) as usize;
        Ok(self.buf.get(at..at + len))
    }
}

/// The records of one segment file, in order.
pub struct SegmentScan {
    file: File,
    /// Bytes of the file this scan reads (the file's length, or what a writer had appended).
    limit: u64,
    pos: u64,
    window: Window,
    done: bool,
    /// Damaged stretches skipped (bad records in the middle, content that is not an entry, a bad header).
    pub damaged: u64,
    /// Whether a torn last record was cut off.
    pub torn: bool,
    /// A read error that ended the scan early.
    pub error: Option<io::Error>,
}

impl SegmentScan {
    /// Opens the segment at `path` to read its first `limit` bytes (all of it when `None`).
    pub fn open(path: &Path, limit: Option<u64>) -> io::Result<SegmentScan> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let limit = limit.map_or(len, |l| l.min(len));
        let mut scan = SegmentScan {
            file,
            limit,
            pos: FILE_HEADER_LEN,
            window: Window::new(),
            done: false,
            damaged: 0,
            torn: false,
            error: None,
        };
        let head_len = limit.min(FILE_HEADER_LEN) as usize;
        let head = match scan.window.get(&scan.file, limit, 0, head_len)? {
            Some(h) => check_file_header(h),
            None => FileHeader::Blank,
        };
        match head {
            FileHeader::Valid => {}
            FileHeader::Blank if scan.rest_is_zero(0) => scan.done = true,
            // Not a segment of this format, or its header is damaged: look for records anyway.
            FileHeader::Blank | FileHeader::Bad => scan.damaged += 1,
        }
        Ok(scan)
    }

    /// The most bytes this scan held in memory at once.
    pub fn peak_buffer_bytes(&self) -> usize {
        self.window.peak
    }

    /// The record at `at`, when a valid one starts there: its length and its decoded content (`None` when
    /// the checksums hold but the content is not an entry).
    fn record_at(&mut self, at: u64) -> io::Result<Option<(u64, Option<Record>)>> {
        let Some(head) = self.window.get(&self.file, self.limit, at, HEADER_LEN)? else {
            return Ok(None);
        };
        let Some(header) = head.try_into().ok().and_then(record::parse_header) else {
            return Ok(None);
        };
        let body_at = at + HEADER_LEN as u64;
        let len = header.record_len();
        if at.checked_add(len).is_none_or(|e| e > self.limit) {
            return Ok(None);
        }
        let Some(body) =
            self.window
                .get(&self.file, self.limit, body_at, header.body_len as usize)?
        else {
            return Ok(None);
        };
        if !record::body_matches(header, body) {
            return Ok(None);
        }
        Ok(Some((len, record::decode_body(body))))
    }

    /// Whether every byte from `from` to the end of the scan is zero.
    fn rest_is_zero(&mut self, from: u64) -> bool {
        let mut at = from;
        while at < self.limit {
            let n = (self.limit - at).min(WINDOW as u64) as usize;
            match self.window.get(&self.file, self.limit, at, n) {
                Ok(Some(bytes)) if bytes.iter().all(|&b| b == 0) => at += n as u64,
                _ => return false,
            }
        }
        true
    }

    fn step(&mut self) -> io::Result<Option<Record>> {
        while !self.done {
            if let Some((len, content)) = self.record_at(self.pos)? {
                self.pos += len;
                match content {
                    Some(r) => return Ok(Some(r)),
                    None => {
                        self.damaged += 1;
                        continue;
                    }
                }
            }
            // No record here. Zeros to the end are the unwritten rest of the segment; anything else is
            // damage followed by more records, or a torn last record.
            if self.rest_is_zero(self.pos) {
                self.done = true;
                break;
            }
            let mut next = self.pos + 8;
            let found = loop {
                if next + HEADER_LEN as u64 > self.limit {
                    break None;
                }
                if self.record_at(next)?.is_some() {
                    break Some(next);
                }
                next += 8;
            };
            match found {
                Some(at) => {
                    self.damaged += 1;
                    self.pos = at;
                }
                None => {
                    self.torn = true;
                    self.done = true;
                }
            }
        }
        Ok(None)
    }

    /// The next record, `None` at the end (or after a read error, kept in `error` and counted as damage).
    pub fn next_record(&mut self) -> Option<Record> {
        match self.step() {
            Ok(r) => r,
            Err(e) => {
                self.damaged += 1;
                self.error = Some(e);
                self.done = true;
                None
            }
        }
    }
}

impl Iterator for SegmentScan {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        self.next_record()
    }
}
