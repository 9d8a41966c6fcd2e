//! Recording a trace from many fault-handler threads at once.
//!
//! `record` takes one mutex, reads the clock under it (so times never go backwards in
//! the file), and appends a few bytes to a buffer allocated up front; only when the
//! buffer is full does a call write it out. An I/O error is kept, later events are
//! counted as dropped, and the error is returned by [`TraceWriter::finish`] (or printed
//! by `Drop`): recording never panics and never stops the program.

use super::format::{put_header, put_record, EventKind, TraceError, TraceHeader};
use crate::space::PageNum;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// Bytes buffered before a write: about 16k events.
const BUFFER_BYTES: usize = 64 << 10;
/// Longest record: two 10-byte varints.
const RECORD_BYTES_MAX: usize = 20;

struct Inner {
    sink: Box<dyn Write + Send>,
    buf: Vec<u8>,
    time_ns: u64,
    page: u64,
    events: u64,
    dropped: u64,
    error: Option<io::Error>,
    /// `finish` returned the outcome: `Drop` has nothing left to report.
    reported: bool,
}

impl Inner {
    fn write_out(&mut self) {
        if self.error.is_none() && !self.buf.is_empty() {
            if let Err(e) = self.sink.write_all(&self.buf) {
                self.error = Some(e);
            }
        }
        self.buf.clear();
    }

    fn append(&mut self, time_ns: u64, kind: EventKind, page: PageNum) {
        if self.error.is_some() {
            self.dropped += 1;
            return;
        }
        // Callers of `record_at` may go backwards in time; the format cannot.
        let time_ns = time_ns.max(self.time_ns);
        put_record(
            &mut self.buf,
            time_ns - self.time_ns,
            page.0.wrapping_sub(self.page) as i64,
            kind,
        );
        self.time_ns = time_ns;
        self.page = page.0;
        self.events += 1;
        if self.buf.len() + RECORD_BYTES_MAX > BUFFER_BYTES {
            self.write_out();
        }
    }
}

/// Thread-safe trace recorder. Cheap enough for the fault path: one uncontended lock,
/// no allocation, a write every 64 KiB.
pub struct TraceWriter {
    inner: Mutex<Inner>,
    start: Instant,
    path: PathBuf,
}

impl TraceWriter {
    /// Creates (or truncates) the file at `path` and writes the header.
    pub fn create(path: &Path, header: &TraceHeader) -> Result<TraceWriter, TraceError> {
        let file = File::create(path).map_err(|source| TraceError::Io {
            path: path.to_owned(),
            op: "create",
            source,
        })?;
        TraceWriter::with_path(Box::new(file), header, path.to_owned())
    }

    /// Records into any byte sink (tests, pipes); the header is buffered at once.
    pub fn new(
        sink: Box<dyn Write + Send>,
        header: &TraceHeader,
    ) -> Result<TraceWriter, TraceError> {
        TraceWriter::with_path(sink, header, PathBuf::from("<stream>"))
    }

    fn with_path(
        sink: Box<dyn Write + Send>,
        header: &TraceHeader,
        path: PathBuf,
    ) -> Result<TraceWriter, TraceError> {
        let mut buf = Vec::with_capacity(BUFFER_BYTES);
        put_header(&mut buf, header)?;
        Ok(TraceWriter {
            inner: Mutex::new(Inner {
                sink,
                buf,
                time_ns: 0,
                page: 0,
                events: 0,
                dropped: 0,
                error: None,
                reported: false,
            }),
            start: Instant::now(),
            path,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every update leaves `Inner` consistent, so a panic elsewhere is no reason to
        // stop recording.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `kind` on `page` now.
    pub fn record(&self, kind: EventKind, page: PageNum) {
        let mut inner = self.lock();
        let now_ns = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        inner.append(now_ns, kind, page);
    }

    /// Records `kind` on `page` at `time_ns` since the start (synthetic traces, tests).
    /// A time earlier than the previous record's is raised to it.
    pub fn record_at(&self, time_ns: u64, kind: EventKind, page: PageNum) {
        self.lock().append(time_ns, kind, page);
    }

    /// Events recorded so far.
    pub fn events(&self) -> u64 {
        self.lock().events
    }

    /// Writes out what is buffered and flushes the sink.
    pub fn flush(&self) -> Result<(), TraceError> {
        let mut inner = self.lock();
        inner.write_out();
        if inner.error.is_none() {
            if let Err(e) = inner.sink.flush() {
                inner.error = Some(e);
            }
        }
        match inner.error.take() {
            None => Ok(()),
            Some(source) => {
                let kind = source.kind();
                // Keep refusing events after a failure.
                inner.error = Some(io::Error::new(kind, source.to_string()));
                Err(TraceError::Io {
                    path: self.path.clone(),
                    op: "write",
                    source,
                })
            }
        }
    }

    /// Flushes and returns how many events the file holds.
    pub fn finish(self) -> Result<u64, TraceError> {
        let r = self.flush();
        let mut inner = self.lock();
        inner.reported = true;
        r.map(|()| inner.events)
    }
}

impl Drop for TraceWriter {
    fn drop(&mut self) {
        if self.lock().reported {
            return;
        }
        if let Err(e) = self.flush() {
            let dropped = self.lock().dropped;
            eprintln!("dsm: {e} ({dropped} events after the error were not recorded)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::TraceReader;
    use std::io::Cursor;
    use std::sync::Arc;

    /// A sink the test can read back after the writer is gone.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn header() -> TraceHeader {
        TraceHeader {
            page_bytes: 4096,
            cache_pages: 1234,
            profile: "velvet".into(),
        }
    }

    fn read_all(
        bytes: Vec<u8>,
    ) -> (
        TraceHeader,
        Vec<Result<crate::trace::TraceEvent, TraceError>>,
    ) {
        let r = TraceReader::new(Cursor::new(bytes)).unwrap();
        let h = r.header().clone();
        (h, r.collect())
    }

    #[test]
    fn round_trips_header_and_events_across_buffer_flushes() {
        let sink = Shared::default();
        let w = TraceWriter::new(Box::new(sink.clone()), &header()).unwrap();
        let mut want = Vec::new();
        let mut t = 0u64;
        for i in 0..50_000u64 {
            t += i % 7 * 1000;
            let page = PageNum(if i % 3 == 0 { u64::MAX - i } else { i / 2 });
            let kind = EventKind::ALL[(i % 5) as usize];
            w.record_at(t, kind, page);
            want.push((t, page, kind));
        }
        assert_eq!(w.finish().unwrap(), 50_000);
        let (h, got) = read_all(sink.0.lock().unwrap().clone());
        assert_eq!(h, header());
        let got: Vec<_> = got
            .into_iter()
            .map(|e| {
                let e = e.unwrap();
                (e.time_ns, e.page, e.kind)
            })
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn sequential_scans_cost_a_few_bytes_per_event() {
        let sink = Shared::default();
        let w = TraceWriter::new(Box::new(sink.clone()), &header()).unwrap();
        for p in 0..10_000 {
            w.record_at(p * 5_000, EventKind::FaultRead, PageNum(p));
        }
        drop(w);
        let len = sink.0.lock().unwrap().len();
        assert!(len < 10_000 * 5, "{len} bytes");
    }

    #[test]
    fn concurrent_records_all_arrive_in_time_order() {
        let sink = Shared::default();
        let w = Arc::new(TraceWriter::new(Box::new(sink.clone()), &header()).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = Arc::clone(&w);
                std::thread::spawn(move || {
                    for i in 0..5000 {
                        w.record(EventKind::FaultWrite, PageNum(t * 100_000 + i));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        Arc::into_inner(w).unwrap().finish().unwrap();
        let (_, got) = read_all(sink.0.lock().unwrap().clone());
        let got: Vec<_> = got.into_iter().map(Result::unwrap).collect();
        assert_eq!(got.len(), 20_000);
        assert!(got.windows(2).all(|w| w[0].time_ns <= w[1].time_ns));
    }

    #[test]
    fn write_errors_are_reported_not_panicked() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let w = TraceWriter::new(Box::new(Broken), &header()).unwrap();
        for p in 0..100_000 {
            w.record(EventKind::FaultRead, PageNum(p));
        }
        let e = w.finish().unwrap_err();
        assert!(e.to_string().contains("disk on fire"), "{e}");
    }

    #[test]
    fn a_cut_file_reads_to_its_last_whole_record_then_says_truncated() {
        let sink = Shared::default();
        let w = TraceWriter::new(Box::new(sink.clone()), &header()).unwrap();
        for p in 0..10 {
            w.record_at(p * 1_000_000, EventKind::FaultRead, PageNum(p * 1_000_000));
        }
        drop(w);
        let mut bytes = sink.0.lock().unwrap().clone();
        bytes.pop();
        let (_, got) = read_all(bytes);
        assert_eq!(got.len(), 10);
        assert!(got[..9].iter().all(Result::is_ok));
        assert!(matches!(got[9], Err(TraceError::Truncated { .. })));
    }

    #[test]
    fn rejects_other_files_with_a_reason() {
        let e = TraceReader::new(Cursor::new(b"#!/bin/sh\necho hi\n".to_vec()))
            .err()
            .unwrap();
        assert!(matches!(e, TraceError::BadMagic));
        let mut v = Vec::new();
        put_header(&mut v, &header()).unwrap();
        v[8] = 9;
        let e = TraceReader::new(Cursor::new(v)).err().unwrap();
        assert!(matches!(e, TraceError::Version { found: 9 }));
        let e = TraceReader::new(Cursor::new(b"DSMTRACE\x01".to_vec()))
            .err()
            .unwrap();
        assert!(matches!(e, TraceError::Truncated { .. }));
    }

    #[test]
    fn create_names_the_file_on_failure() {
        let e = TraceWriter::create(Path::new("/nonexistent-dir/t.trace"), &header())
            .err()
            .unwrap();
        assert!(e.to_string().contains("/nonexistent-dir/t.trace"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_reader(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            with_header in proptest::prelude::any::<bool>(),
        ) {
            let mut bytes = Vec::new();
            if with_header {
                put_header(&mut bytes, &header()).unwrap();
            }
            bytes.extend_from_slice(&body);
            if let Ok(r) = TraceReader::new(Cursor::new(bytes)) {
                // Every item consumes at least one byte, and the iterator stops at the
                // first error, so this terminates.
                for e in r {
                    if e.is_err() {
                        break;
                    }
                }
            }
        }
    }
}
