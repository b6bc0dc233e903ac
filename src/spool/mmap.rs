//! The one place the spool maps a file into memory (and so the one place with `unsafe`).
//!
//! A segment written through a mapping is preallocated first (`fallocate`, real blocks), so that no store
//! into the mapping ever needs a block the disk does not have: a store past the allocated blocks of a full
//! disk would raise SIGBUS instead of returning ENOSPC. The spool maps segments only on file systems that
//! honour that preallocation in place (see `segment::mapping_is_safe`); copy-on-write file systems get
//! write(2) instead.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;

use memmap2::{MmapMut, MmapOptions};

/// A writable shared mapping of a whole, preallocated segment file.
pub struct Mapping {
    map: MmapMut,
}

impl Mapping {
    /// Preallocates `len` bytes of `file` (real blocks, not a sparse size) and maps them.
    ///
    /// Fails with the file system's error (ENOSPC when the disk is full) before anything is mapped.
    pub fn preallocate_and_map(file: &File, len: u64) -> io::Result<Mapping> {
        rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len)
            .map_err(io::Error::from)?;
        let map_len = usize::try_from(len).map_err(|_| io::Error::other("segment too large"))?;
        // SAFETY: the mapping is of a file that only this process writes: the spool's directory is locked
        // by this process (flock), no other spool code opens a locked spool's segments for writing or
        // truncates them, and the file is never shortened while mapped (the spool unmaps before removing
        // or truncating a segment). Every byte of 0..len has a block behind it (fallocate above), so a
        // store cannot fault for lack of space. The mapping is only accessed through `&mut self`.
        let map = unsafe { MmapOptions::new().len(map_len).map_mut(file)? };
        Ok(Mapping { map })
    }

    /// The mapped bytes `start..start + len`, for the caller to fill; `None` past the end.
    pub fn slice_mut(&mut self, start: usize, len: usize) -> Option<&mut [u8]> {
        self.map.get_mut(start..start.checked_add(len)?)
    }
}
