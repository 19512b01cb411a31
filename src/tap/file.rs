//! The files taps write (transcript, captures): written as they come, and kept from filling the page cache.
//!
//! A busy tap writes hundreds of megabytes a minute that nobody reads back while xmpptap runs. Left to
//! itself, the kernel keeps all of it in the page cache, evicting what the servers beside xmpptap had cached,
//! and holds it dirty for up to half a minute. A [`TapFile`] has a helper thread ask the kernel
//! (`posix_fadvise(DONTNEED)`) to start writing each new stretch out at once and to drop from the cache
//! whatever of the last few stretches is already on disk. Pages still dirty (a disk slower than the tap)
//! stay cached as before. Only the helper ever waits for the disk (to take what it starts writing out); the
//! tap's own writes never wait for the helper. Dropping clean pages loses nothing.
//!
//! Besides the cache it leaves to others, this saves CPU where new pages are dear: on a VM that returns
//! freed memory to its host, each page the cache takes anew is first faulted in by the host, while pages
//! dropped a moment ago are handed out again at once. This module does not know what is written.

use std::fs::File;
use std::io::{self, Write};

/// A file a tap writes from start to end (opened for appending, or created): a [`Write`] that passes every
/// write straight to the file, and on Linux keeps the part already on disk out of the page cache.
#[derive(Debug)]
pub struct TapFile {
    file: File,
    #[cfg(target_os = "linux")]
    trim: Option<trim::Trimmer>,
}

impl TapFile {
    /// Takes over `file`, open for writing at its end. Only a regular file is trimmed (not a pipe or a
    /// terminal); where the helper thread cannot start, the file is written as it is.
    pub fn new(file: File) -> Self {
        #[cfg(target_os = "linux")]
        let trim = trim::Trimmer::start(&file)
            .inspect_err(|e| tracing::debug!("tap output kept in the page cache: {e}"))
            .ok()
            .flatten();
        TapFile {
            file,
            #[cfg(target_os = "linux")]
            trim,
        }
    }
}

impl Write for TapFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        #[cfg(target_os = "linux")]
        if let Some(trim) = &mut self.trim {
            trim.wrote(n as u64);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(target_os = "linux")]
mod trim {
    use rustix::fs::{fadvise, Advice};
    use std::fs::File;
    use std::io;
    use std::num::NonZeroU64;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::thread::{self, Thread};

    /// How many bytes are written between two rounds of advice.
    pub(super) const STRETCH: u64 = 8 * 1024 * 1024;
    /// How far back each round of advice reaches: a stretch is advised this many times, the first time just
    /// after it was written (which starts writing it out), the later times once it is likely on disk.
    const ROUNDS: u64 = 4;

    /// The writer's end of the helper thread.
    #[derive(Debug)]
    pub(super) struct Trimmer {
        shared: Arc<Shared>,
        helper: Thread,
        /// Where the next write lands.
        end: u64,
        /// Where the helper is woken next.
        next_round: u64,
    }

    #[derive(Debug)]
    struct Shared {
        /// How far the file is written (its offset), for the helper.
        written: AtomicU64,
        /// Set when the writer is gone.
        closed: AtomicBool,
    }

    impl Trimmer {
        /// A helper for `file`, or `None` when `file` is not a regular file.
        pub(super) fn start(file: &File) -> io::Result<Option<Trimmer>> {
            let meta = file.metadata()?;
            if !meta.file_type().is_file() {
                return Ok(None);
            }
            // Appends land at the end, whatever was there before.
            let end = meta.len();
            let shared = Arc::new(Shared {
                written: AtomicU64::new(end),
                closed: AtomicBool::new(false),
            });
            // The helper's own descriptor: closing the tap's file does not wait for it.
            let own = file.try_clone()?;
            let helper = thread::Builder::new()
                .name(String::from("xmpptap-trim"))
                .spawn({
                    let shared = shared.clone();
                    move || advise_rounds(&own, &shared, end)
                })?
                .thread()
                .clone();
            Ok(Some(Trimmer {
                shared,
                helper,
                end,
                next_round: end + STRETCH,
            }))
        }

        /// Counts `n` bytes written, waking the helper after each [`STRETCH`].
        pub(super) fn wrote(&mut self, n: u64) {
            self.end += n;
            if self.end >= self.next_round {
                self.next_round = self.end + STRETCH;
                self.shared.written.store(self.end, Ordering::Release);
                self.helper.unpark();
            }
        }
    }

    impl Drop for Trimmer {
        fn drop(&mut self) {
            self.shared.closed.store(true, Ordering::Release);
            self.helper.unpark();
        }
    }

    /// The helper thread: once woken, advises the last [`ROUNDS`] stretches up to where the file is written
    /// (whole stretches from `start`, so the page being written is left alone). Stops when the writer is
    /// gone, or at the first error (a file system without the call: nothing more to do).
    fn advise_rounds(file: &File, shared: &Shared, start: u64) {
        loop {
            // A wakeup before the park returns it at once; a spurious one finds nothing new to advise.
            thread::park();
            if shared.closed.load(Ordering::Acquire) {
                return;
            }
            let written = shared.written.load(Ordering::Acquire);
            let to = start + (written - start) / STRETCH * STRETCH;
            let from = to.saturating_sub(ROUNDS * STRETCH).max(start);
            let Some(len) = NonZeroU64::new(to - from) else {
                continue;
            };
            if let Err(e) = fadvise(file, from, Some(len), Advice::DontNeed) {
                tracing::debug!("tap output kept in the page cache: posix_fadvise: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::time::{Duration, Instant};

    /// A file under `target/` (the temp dir may be a tmpfs, whose pages never leave memory), removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(label: &str) -> Self {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tap-file-tests");
            std::fs::create_dir_all(&dir).expect("scratch dir");
            Scratch(dir.join(format!("{}-{label}", std::process::id())))
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn open_append(path: &Path) -> File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open")
    }

    /// Bytes of `path` in the page cache, from util-linux's `fincore`.
    fn cached(path: &Path) -> u64 {
        let out = Command::new("fincore")
            .args(["--bytes", "--noheadings", "--output", "RES"])
            .arg(path)
            .output()
            .expect("fincore (util-linux) runs");
        assert!(out.status.success(), "fincore: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("fincore prints a byte count")
    }

    /// What is written arrives whole, after what the file held; and once on disk, what the helper's last
    /// round reaches leaves the page cache.
    #[cfg(target_os = "linux")]
    #[test]
    fn writes_pass_through_and_what_is_on_disk_leaves_the_cache() {
        let scratch = Scratch::new("trim");
        std::fs::write(&scratch.0, b"earlier\n").expect("write");
        let block: Vec<u8> = (0..65_536u32).map(|i| (i % 251) as u8).collect();
        let per_stretch = trim::STRETCH as usize / block.len();
        let mut out = TapFile::new(open_append(&scratch.0));
        // Four stretches, all on disk (synced through a descriptor of the test's own), then a fifth: the round
        // of advice it wakes reaches back over the second to fourth, now clean. The first may have been
        // advised only while it was dirty, and the fifth is still being written out.
        for _ in 0..4 * per_stretch {
            out.write_all(&block).expect("write");
        }
        open_append(&scratch.0).sync_data().expect("sync");
        for _ in 0..per_stretch {
            out.write_all(&block).expect("write");
        }
        out.flush().expect("flush");

        let total = 8 + 5 * trim::STRETCH;
        let at_most = 2 * trim::STRETCH + 2 * 4096;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut now_cached = cached(&scratch.0);
        // The helper runs on its own: wait for it.
        while now_cached > at_most && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            now_cached = cached(&scratch.0);
        }
        assert!(
            now_cached <= at_most,
            "{now_cached} of {total} bytes still cached"
        );
        drop(out);
        let content = std::fs::read(&scratch.0).expect("read");
        assert_eq!(content.len() as u64, total);
        assert_eq!(&content[..8], b"earlier\n");
        assert!(content[8..].chunks(block.len()).all(|chunk| chunk == block));
    }

    /// A pipe is written as it is, without a helper.
    #[cfg(unix)]
    #[test]
    fn a_pipe_is_not_trimmed() {
        let mut child = Command::new("cat")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("cat");
        let stdin = child.stdin.take().expect("piped");
        let mut out = TapFile::new(File::from(std::os::fd::OwnedFd::from(stdin)));
        #[cfg(target_os = "linux")]
        assert!(out.trim.is_none());
        out.write_all(b"through\n").expect("write");
        drop(out);
        let done = child.wait_with_output().expect("cat ends");
        assert_eq!(done.stdout, b"through\n");
    }
}
