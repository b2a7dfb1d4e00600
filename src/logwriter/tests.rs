use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{spawn, Batching};

/// An output that records what was written and how many `write_all` batches it took.
#[derive(Clone, Default)]
struct Sink {
    bytes: Arc<Mutex<Vec<u8>>>,
    writes: Arc<AtomicUsize>,
}

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.bytes.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.write(b).map(|_| ())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn text(&self) -> String {
        String::from_utf8(self.bytes.lock().unwrap().clone()).unwrap()
    }
}

fn line(w: &super::LogWriter, text: &str) {
    let mut w = w;
    w.write_all(text.as_bytes()).unwrap();
}

#[test]
fn every_line_of_every_thread_arrives_whole_and_in_order_per_thread() {
    let sink = Sink::default();
    let (w, guard) = spawn(sink.clone(), Batching::default());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let w = w.clone();
            std::thread::spawn(move || {
                for i in 0..5000 {
                    line(&w, &format!("{{\"t\":{t},\"i\":{i}}}\n"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(guard); // writes what is left
    let text = sink.text();
    let mut next = [0; 4];
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let t = v["t"].as_u64().unwrap() as usize;
        assert_eq!(v["i"].as_u64().unwrap(), next[t], "thread {t} out of order");
        next[t] += 1;
    }
    assert_eq!(next, [5000; 4]);
    // Batched: far fewer writes than lines.
    assert!(sink.writes.load(Ordering::SeqCst) < 20_000);
}

#[test]
fn a_line_is_written_within_the_flush_interval_without_more_traffic() {
    let sink = Sink::default();
    let (w, _guard) = spawn(
        sink.clone(),
        Batching {
            flush_every: Duration::from_millis(20),
            ..Batching::default()
        },
    );
    line(&w, "one\n");
    let start = Instant::now();
    while sink.text().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(5), "never written");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(sink.text(), "one\n");
    assert_eq!(sink.writes.load(Ordering::SeqCst), 1);
}

#[test]
fn lines_gather_into_one_write_and_a_full_buffer_is_written_at_once() {
    let sink = Sink::default();
    let (w, _guard) = spawn(
        sink.clone(),
        Batching {
            flush_every: Duration::from_secs(3600),
            wake_at: 1000,
            block_at: 1 << 20,
        },
    );
    for _ in 0..9 {
        line(&w, &"a".repeat(99));
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        sink.text(),
        "",
        "under the high-water mark: still gathering"
    );
    line(&w, &"b".repeat(200)); // 1091 bytes ≥ 1000: written now, in one batch
    let start = Instant::now();
    while sink.text().len() < 1091 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "not written at the mark"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(sink.writes.load(Ordering::SeqCst), 1);
}

#[test]
fn a_stuck_output_holds_loggers_back_instead_of_dropping_lines() {
    /// An output that blocks until released.
    struct Stuck(Arc<Mutex<()>>, Sink);
    impl Write for Stuck {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let _held = self.0.lock().unwrap();
            self.1.write(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let gate = Arc::new(Mutex::new(()));
    let held = gate.lock().unwrap();
    let sink = Sink::default();
    let (w, guard) = spawn(
        Stuck(gate.clone(), sink.clone()),
        Batching {
            flush_every: Duration::from_millis(1),
            wake_at: 10,
            block_at: 100,
        },
    );
    let done = Arc::new(AtomicUsize::new(0));
    let (w2, d2) = (w.clone(), done.clone());
    let logger = std::thread::spawn(move || {
        for i in 0..100 {
            line(&w2, &format!("{i:09}\n")); // 10 bytes a line
            d2.fetch_add(1, Ordering::SeqCst);
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    let before = done.load(Ordering::SeqCst);
    assert!(before < 100, "the logger went on past a full buffer");
    drop(held);
    logger.join().unwrap();
    drop(guard);
    let text = sink.text();
    let got: Vec<usize> = text.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(got, (0..100).collect::<Vec<_>>());
}
