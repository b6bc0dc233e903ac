//! Segment files: their names, their header, and the writer that appends records to the open one.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::mmap::Mapping;
use super::record;
use crate::entry::Entry;

/// Bytes of the header at the start of every segment file.
pub const FILE_HEADER_LEN: u64 = 16;
const FILE_MAGIC: &[u8; 8] = b"AUDSPOOL";
const FORMAT_VERSION: u32 = 1;

/// The 16 bytes every segment starts with: magic, format version, CRC32C of the first 12 bytes.
pub fn file_header() -> [u8; FILE_HEADER_LEN as usize] {
    let mut h = [0u8; FILE_HEADER_LEN as usize];
    h[..8].copy_from_slice(FILE_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    let crc = crc32c::crc32c(&h[..12]);
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    h
}

/// What a segment's first bytes say about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileHeader {
    /// A segment of this format.
    Valid,
    /// All zeros, or shorter than a header: created, never written (the process died at once).
    Blank,
    /// Something else: not a segment, another version, or damaged.
    Bad,
}

/// Classifies a segment's first bytes (`bytes` may be shorter than a header when the file is).
pub fn check_file_header(bytes: &[u8]) -> FileHeader {
    if bytes.iter().all(|&b| b == 0) {
        FileHeader::Blank
    } else if bytes == file_header() {
        FileHeader::Valid
    } else {
        FileHeader::Bad
    }
}

/// The file name of segment `number`: 16 hex digits, so that names sort in creation order.
pub fn segment_name(number: u64) -> String {
    format!("{number:016x}.seg")
}

/// The number in a segment's file name, `None` for any other name.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".seg")?;
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

/// The segments in `dir`, oldest first, with their numbers. Names that are not segments are ignored.
pub fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for item in std::fs::read_dir(dir)? {
        let item = item?;
        if let Some(n) = item.file_name().to_str().and_then(parse_segment_name) {
            out.push((n, item.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// How records reach the open segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// Mapped where that is safe (ext4, xfs, tmpfs), write(2) elsewhere.
    #[default]
    Auto,
    /// Stores into a preallocated shared mapping of the segment.
    Mapped,
    /// One positioned write(2) per record.
    Write,
}

/// Whether stores into a preallocated mapping of `file` can never need a new block: true on file systems
/// that write preallocated extents in place. Copy-on-write file systems (btrfs, zfs, bcachefs), network
/// and FUSE file systems may need space at write-back and raise SIGBUS on a full disk, so they are not
/// mapped.
pub fn mapping_is_safe(file: &File) -> bool {
    const EXT4: u64 = 0xEF53;
    const XFS: u64 = 0x5846_5342;
    const TMPFS: u64 = 0x0102_1994;
    match rustix::fs::fstatfs(file) {
        Ok(st) => matches!(st.f_type as u64, EXT4 | XFS | TMPFS),
        Err(_) => false,
    }
}

/// The open segment of a spool: records are appended at `end`, never past `capacity`.
pub struct SegmentWriter {
    file: Arc<File>,
    mapping: Option<Mapping>,
    capacity: u64,
    end: u64,
    scratch: Vec<u8>,
}

impl SegmentWriter {
    /// Creates the segment file at `path` (which must not exist), mode 0600, with room for `capacity`
    /// bytes, and writes its header. With the mapped backend the whole capacity is allocated now, so a full
    /// disk fails here, with ENOSPC, and never later. On failure the file is removed again.
    pub fn create(path: &Path, capacity: u64, backend: Backend) -> io::Result<SegmentWriter> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        let result = Self::prepare(file, capacity, backend);
        if result.is_err() {
            let _ = std::fs::remove_file(path);
        }
        result
    }

    fn prepare(file: File, capacity: u64, backend: Backend) -> io::Result<SegmentWriter> {
        let mapped = match backend {
            Backend::Auto => mapping_is_safe(&file),
            Backend::Mapped => true,
            Backend::Write => false,
        };
        let header = file_header();
        let mut mapping = None;
        if mapped {
            let mut m = Mapping::preallocate_and_map(&file, capacity)?;
            if let Some(dst) = m.slice_mut(0, header.len()) {
                dst.copy_from_slice(&header);
            }
            mapping = Some(m);
        } else {
            file.write_all_at(&header, 0)?;
        }
        Ok(SegmentWriter {
            file: Arc::new(file),
            mapping,
            capacity,
            end: FILE_HEADER_LEN,
            scratch: Vec::new(),
        })
    }

    /// Appends the record of (`seq`, `entry`), `len` bytes long (its [`record::encoded_len`]).
    ///
    /// `Ok(false)` when it does not fit in what is left of the segment. When it returns `Ok(true)` the
    /// record is in the kernel's page cache (a process crash keeps it). On an error nothing is counted as
    /// appended: the next record overwrites whatever part of this one reached the file.
    pub fn append(&mut self, len: usize, seq: u64, entry: &Entry) -> io::Result<bool> {
        if self.end + len as u64 > self.capacity {
            return Ok(false);
        }
        let start = self.end as usize;
        match &mut self.mapping {
            Some(m) => match m.slice_mut(start, len) {
                Some(dst) => record::encode_into(dst, seq, entry),
                None => return Ok(false),
            },
            None => {
                self.scratch.resize(len, 0);
                record::encode_into(&mut self.scratch, seq, entry);
                self.file.write_all_at(&self.scratch, self.end)?;
                if self.scratch.capacity() > 1 << 20 {
                    self.scratch = Vec::new();
                }
            }
        }
        self.end += len as u64;
        Ok(true)
    }

    /// Bytes used: the header and the records appended.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Whether records go through a mapping.
    pub fn is_mapped(&self) -> bool {
        self.mapping.is_some()
    }

    /// The file, for `fdatasync` while appends go on.
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }
}
