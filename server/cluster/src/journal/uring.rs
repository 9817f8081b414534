//! io_uring submission for the journal writer: one group is written and made durable with a
//! linked pair of SQEs (`Write` flagged `IO_LINK`, then `Fsync` with `DATASYNC`), one
//! `io_uring_enter` per group instead of a `write` and an `fdatasync` system call.
//!
//! This is the only module of `concord-cluster` with `unsafe` code (pushing SQEs that point at
//! memory the kernel reads later); every block says why it is sound. The ring owns the bytes it
//! submits, so nothing the kernel may still read can be freed under it: if waiting for the
//! completions fails, the buffer is leaked and the ring refuses further work.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use io_uring::{IoUring, opcode, squeue, types};

/// Submission queue entries: one write and one fsync per group.
const RING_ENTRIES: u32 = 4;
const WRITE: u64 = 0;
const SYNC: u64 = 1;

/// An io_uring instance for one writer thread.
pub(super) struct Ring {
    ring: IoUring,
    /// The bytes of the group in flight; owned here so they outlive the kernel's use.
    buf: Vec<u8>,
    /// Set when completions could not be reaped: in-flight state is unknown.
    poisoned: bool,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl Ring {
    /// Sets up a ring; fails where `io_uring_setup` is unavailable (old kernel, seccomp).
    pub(super) fn probe() -> io::Result<Ring> {
        Ok(Ring {
            ring: IoUring::new(RING_ENTRIES)?,
            buf: Vec::new(),
            poisoned: false,
        })
    }

    /// Writes `bytes` at `offset` of `file` and `fdatasync`s it, returning once both are done.
    pub(super) fn write_and_sync(
        &mut self,
        file: &File,
        offset: u64,
        bytes: &[u8],
    ) -> io::Result<()> {
        if self.poisoned {
            return Err(io::Error::other("the journal's io_uring failed earlier"));
        }
        self.buf.clear();
        self.buf.extend_from_slice(bytes);
        let len = u32::try_from(self.buf.len())
            .map_err(|_| io::Error::other("journal group larger than one io_uring write"))?;
        let fd = types::Fd(file.as_raw_fd());
        let write = opcode::Write::new(fd, self.buf.as_ptr(), len)
            .offset(offset)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(WRITE);
        let sync = opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(SYNC);
        {
            let mut queue = self.ring.submission();
            // SAFETY: the write SQE points at `self.buf`, which is not touched again until both
            // completions are reaped below (or, if reaping fails, is leaked and never freed);
            // the fd is `file`'s, borrowed for this whole call. The queue has RING_ENTRIES (4)
            // free slots: every earlier call reaped all of its entries before returning.
            let pushed = unsafe { queue.push(&write).and_then(|()| queue.push(&sync)) };
            pushed.map_err(|_| io::Error::other("journal io_uring submission queue full"))?;
        }
        let mut results = [None, None];
        let mut reaped = 0;
        while reaped < 2 {
            match self.ring.submit_and_wait(2 - reaped) {
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    // The kernel may still read the buffer: never free it.
                    self.poisoned = true;
                    std::mem::forget(std::mem::take(&mut self.buf));
                    return Err(error);
                }
            }
            for completion in self.ring.completion() {
                if let Some(slot) = results.get_mut(completion.user_data() as usize) {
                    *slot = Some(completion.result());
                    reaped += 1;
                }
            }
        }
        let written = match results[0] {
            Some(result) if result < 0 => return Err(io::Error::from_raw_os_error(-result)),
            Some(result) => result as usize,
            None => {
                return Err(io::Error::other(
                    "journal io_uring lost the write completion",
                ));
            }
        };
        if written < self.buf.len() {
            // A short write breaks the link (the fsync is cancelled): finish it plainly.
            file.write_all_at(&self.buf[written..], offset + written as u64)?;
            return file.sync_data();
        }
        match results[1] {
            Some(result) if result < 0 => Err(io::Error::from_raw_os_error(-result)),
            Some(_) => Ok(()),
            None => Err(io::Error::other(
                "journal io_uring lost the fsync completion",
            )),
        }
    }
}
