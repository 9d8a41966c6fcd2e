//! Shared pieces of the benchmarks: the physical limits they compare against (a raw
//! userfaultfd round trip, a raw TCP request/response) and a cluster of real node
//! processes.

pub mod patterns;
pub mod velvet;

use dsm_runtime::fault::uffd::Userfaultfd;
use dsm_runtime::launch::LocalNodes;
use dsm_runtime::space::Reservation;
use dsm_runtime::transport::auth::Secret;
use dsm_runtime::transport::shm::ShmTransport;
use dsm_runtime::transport::tcp::TcpTransport;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes of a page.
pub const PAGE: usize = 4096;

/// The `dsmrun` binary built beside the benchmark: next to it (a bin in
/// `target/release`) or one level up (a bench in `target/release/deps`).
pub fn dsmrun_exe() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    let candidates = [dir.join("dsmrun"), dir.join("../dsmrun")];
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "dsmrun not found near {}: run `cargo build --release -p dsm-runtime` first",
                dir.display()
            )
        })
}

/// Real node processes and a transport to them.
pub fn cluster(n: usize, node_bytes: u64) -> (LocalNodes, TcpTransport) {
    let secret = Secret::generate().expect("secret");
    let nodes = LocalNodes::spawn(&dsmrun_exe(), n, node_bytes, &secret).expect("nodes");
    let t =
        TcpTransport::discover(nodes.addrs(), secret, Duration::from_secs(5)).expect("transport");
    (nodes, t)
}

/// Pins the calling thread to `cpu`.
pub fn pin(cpu: usize) {
    dsm_runtime::runtime::pin_current_thread(cpu);
}

/// Lets the calling thread run on every CPU again.
pub fn unpin() {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for c in 0..libc::CPU_SETSIZE as usize {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The raw userfaultfd round trip: a thread touches a missing page, a handler thread
/// blocked in poll(2) reads the event and installs a local page with UFFDIO_COPY.
pub struct RawUffd {
    region: Reservation,
    stop: Arc<AtomicBool>,
    handler: Option<std::thread::JoinHandle<()>>,
    next: usize,
}

impl RawUffd {
    /// A region of `pages` pages at `base`; the handler pinned to `cpu` if given.
    pub fn new(base: usize, pages: usize, cpu: Option<usize>) -> RawUffd {
        let region = Reservation::new(base, pages * PAGE).expect("reserve");
        let uffd = Userfaultfd::open(0).expect("userfaultfd");
        uffd.register(region.base(), region.len(), false)
            .expect("register");
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let handler = std::thread::spawn(move || {
            if let Some(c) = cpu {
                pin(c);
            }
            let src = vec![1u8; PAGE];
            let mut msgs = vec![dsm_runtime::fault::uffd::UffdMsg::default(); 16];
            while !stop2.load(Ordering::Relaxed) {
                let mut pfd = libc::pollfd {
                    fd: uffd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one pollfd on our stack; 100 ms timeout so `stop` is seen.
                unsafe { libc::poll(&mut pfd, 1, 100) };
                let n = uffd.read_events(&mut msgs).expect("read events");
                for m in &msgs[..n] {
                    if let Some(f) = m.decode() {
                        // SAFETY: `src` is a full page.
                        unsafe {
                            uffd.copy(f.addr & !(PAGE - 1), src.as_ptr(), PAGE, false, false)
                        }
                        .expect("copy");
                    }
                }
            }
        });
        RawUffd {
            region,
            stop,
            handler: Some(handler),
            next: 0,
        }
    }

    /// Faults on `iters` fresh pages; returns the time taken.
    pub fn run(&mut self, iters: u64) -> Duration {
        let pages = self.region.len() / PAGE;
        let mut total = Duration::ZERO;
        let mut left = iters as usize;
        while left > 0 {
            if self.next == pages {
                // SAFETY: drops our own region's pages so they fault again.
                unsafe {
                    libc::madvise(
                        self.region.base() as *mut _,
                        self.region.len(),
                        libc::MADV_DONTNEED,
                    )
                };
                self.next = 0;
            }
            let n = left.min(pages - self.next);
            let start = Instant::now();
            for i in self.next..self.next + n {
                // SAFETY: inside our region; the handler fills it.
                unsafe { std::ptr::read_volatile((self.region.base() + i * PAGE) as *const u8) };
            }
            total += start.elapsed();
            self.next += n;
            left -= n;
        }
        total
    }
}

impl Drop for RawUffd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handler.take() {
            let _ = h.join();
        }
    }
}

/// The raw TCP round trip: a 16-byte request answered by 4 KiB, over loopback with
/// TCP_NODELAY, server thread pinned to `cpu` if given.
pub struct RawTcp {
    client: TcpStream,
    server: Option<std::thread::JoinHandle<()>>,
}

impl RawTcp {
    /// Starts the echo server and connects.
    pub fn new(cpu: Option<usize>) -> RawTcp {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            if let Some(c) = cpu {
                pin(c);
            }
            let (mut s, _) = l.accept().expect("accept");
            s.set_nodelay(true).expect("nodelay");
            let page = vec![2u8; PAGE];
            let mut req = [0u8; 16];
            while s.read_exact(&mut req).is_ok() {
                if s.write_all(&page).is_err() {
                    break;
                }
            }
        });
        let client = TcpStream::connect(addr).expect("connect");
        client.set_nodelay(true).expect("nodelay");
        RawTcp {
            client,
            server: Some(server),
        }
    }

    /// `iters` request/response round trips; returns the time taken.
    pub fn run(&mut self, iters: u64) -> Duration {
        let mut buf = vec![0u8; PAGE];
        let start = Instant::now();
        for _ in 0..iters {
            self.client.write_all(&[0u8; 16]).expect("send");
            self.client.read_exact(&mut buf).expect("recv");
        }
        start.elapsed()
    }
}

impl Drop for RawTcp {
    fn drop(&mut self) {
        let _ = self.client.shutdown(std::net::Shutdown::Both);
        if let Some(h) = self.server.take() {
            let _ = h.join();
        }
    }
}

/// Real node processes and the shared-memory transport to them (they run on this host).
pub fn shm_cluster(n: usize, node_bytes: u64) -> (LocalNodes, ShmTransport) {
    let secret = Secret::generate().expect("secret");
    let nodes = LocalNodes::spawn(&dsmrun_exe(), n, node_bytes, &secret).expect("nodes");
    let t = match ShmTransport::discover(nodes.addrs(), secret, Duration::from_secs(5)) {
        Ok(t) => t,
        Err(e) => panic!("shm transport to local nodes: {e:?}"),
    };
    (nodes, t)
}

/// The raw shared-memory "round trip": a 4 KiB `pread` from a populated memfd, which is
/// what the shm transport does per page.
pub struct RawShm {
    region: dsm_runtime::node::region::Region,
    buf: Vec<u8>,
    next: u64,
}

impl RawShm {
    /// A populated region of `pages` pages.
    pub fn new(pages: usize) -> RawShm {
        let region =
            dsm_runtime::node::region::Region::new((pages * PAGE) as u64).expect("memfd region");
        let page = vec![3u8; PAGE];
        for p in 0..pages {
            // SAFETY: a full page from our own buffer into the file.
            let n = unsafe {
                libc::pwrite(
                    region.file(),
                    page.as_ptr().cast(),
                    PAGE,
                    (p * PAGE) as libc::off_t,
                )
            };
            assert_eq!(n, PAGE as isize, "populating the region");
        }
        RawShm {
            region,
            buf: vec![0u8; PAGE],
            next: 0,
        }
    }

    /// `iters` page reads, in order through the region; returns the time taken.
    pub fn run(&mut self, iters: u64) -> Duration {
        let pages = self.region.len() / PAGE as u64;
        let start = Instant::now();
        for _ in 0..iters {
            // SAFETY: a full page from the file into our buffer.
            let n = unsafe {
                libc::pread(
                    self.region.file(),
                    self.buf.as_mut_ptr().cast(),
                    PAGE,
                    (self.next * PAGE as u64) as libc::off_t,
                )
            };
            assert_eq!(n, PAGE as isize);
            self.next = (self.next + 1) % pages;
        }
        start.elapsed()
    }
}
