//! The log sink: request threads append formatted lines to a shared buffer, and one writer
//! thread writes what has gathered in batches.
//!
//! A request's thread never makes the write system call, and, unlike a channel whose receiver
//! is woken for every line, it wakes the writer only when the buffer goes from empty to
//! non-empty (or passes a high-water mark): the writer then lets lines gather for up to
//! `flush_every` before one write. Under load that is one wake-up and one `write` per batch
//! instead of per request; lines reach the output at most `flush_every` late. Nothing is
//! dropped: past `block_at` buffered bytes a logging thread waits for the writer (back
//! pressure), and dropping the [`Guard`] writes everything left before it returns.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// How the writer batches.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Longest a line waits in the buffer (unless the buffer reaches `wake_at` first).
    pub flush_every: Duration,
    /// Buffered bytes that make the writer write at once.
    pub wake_at: usize,
    /// Buffered bytes past which logging threads wait for the writer.
    pub block_at: usize,
}

impl Default for Batching {
    fn default() -> Batching {
        Batching {
            flush_every: Duration::from_millis(10),
            wake_at: 256 << 10,
            block_at: 16 << 20,
        }
    }
}

#[derive(Default)]
struct Queue {
    buf: Vec<u8>,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    /// The writer waits here for lines.
    wake: Condvar,
    /// Logging threads past `block_at` wait here for the writer to take the buffer.
    drained: Condvar,
    batching: Batching,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The `MakeWriter` handed to `tracing_subscriber` (cheap to clone).
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

/// Stops the writer thread when dropped, after everything buffered has been written.
pub struct Guard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Start the writer thread over `out`.
pub fn spawn<W: Write + Send + 'static>(out: W, batching: Batching) -> (LogWriter, Guard) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue::default()),
        wake: Condvar::new(),
        drained: Condvar::new(),
        batching,
    });
    let s = shared.clone();
    let thread = std::thread::Builder::new()
        .name("portcullis-log".into())
        .spawn(move || write_batches(&s, out))
        .expect("spawn the log writer thread");
    (
        LogWriter {
            shared: shared.clone(),
        },
        Guard {
            shared,
            thread: Some(thread),
        },
    )
}

fn write_batches<W: Write>(s: &Shared, mut out: W) {
    let mut batch = Vec::new();
    loop {
        let mut q = s.lock();
        while q.buf.is_empty() && !q.closed {
            q = s.wake.wait(q).unwrap_or_else(PoisonError::into_inner);
        }
        // Let more lines gather, unless the buffer is already large or we are closing.
        if !q.closed && q.buf.len() < s.batching.wake_at {
            q = s
                .wake
                .wait_timeout(q, s.batching.flush_every)
                .map_or_else(|e| e.into_inner().0, |(g, _)| g);
        }
        std::mem::swap(&mut batch, &mut q.buf);
        let closed = q.closed && batch.is_empty();
        drop(q);
        s.drained.notify_all();
        if closed {
            let _ = out.flush();
            return;
        }
        // A failed write (stderr closed) loses that batch; there is nowhere else to say so.
        let _ = out.write_all(&batch);
        let _ = out.flush();
        batch.clear();
    }
}

impl Write for &LogWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let s = &self.shared;
        let mut q = s.lock();
        while q.buf.len() >= s.batching.block_at && !q.closed {
            q = s.drained.wait(q).unwrap_or_else(PoisonError::into_inner);
        }
        let was_empty = q.buf.is_empty();
        q.buf.extend_from_slice(line);
        let large = q.buf.len() >= s.batching.wake_at;
        drop(q);
        if was_empty || large {
            s.wake.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = &'a LogWriter;

    fn make_writer(&'a self) -> &'a LogWriter {
        self
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_all();
        self.shared.drained.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests;
