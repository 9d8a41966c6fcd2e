//! `dsmrun --report` and `dsmrun report`: the page of a real run with evictions opens in
//! headless Chromium with no console errors and no network requests, and every plot has
//! data points.
//!
//! Chromium is driven over the DevTools protocol (a websocket), which reports console
//! messages, exceptions and every request as events, and evaluates the DOM checks.
//! `DSM_REPORT_SCREENSHOT=PATH` also saves a screenshot of the page (docs/report.png).

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Scans 24 MiB through a 4 MiB cache for a few seconds, writing every eighth page, so
/// the job fetches, prefetches (the sequential profile), evicts and writes back.
/// 24 MiB of data (not zeros: a page of zeros that was never home is dropped at eviction
/// and zero-filled again, which costs no fetch), two seconds of sequential scans (prefetch
/// has something to be accurate about), then four of random page reads over six times
/// the cache, where nearly every access waits for a fetch: the job thrashes whatever the
/// machine's speed, so the page has a warning.
const SCAN_PYTHON: &str = "
import time
b = bytearray(range(256)) * (96 << 10)
pages = len(b) // 4096
end = time.time() + 2
while time.time() < end:
    s = 0
    for i in range(0, len(b), 4096):
        s += b[i]
    for i in range(0, len(b), 8 * 4096):
        b[i] = (b[i] + 1) & 255
x = 12345
end = time.time() + 4
while time.time() < end:
    for _ in range(1000):
        x = (x * 1103515245 + 12345) % 2147483648
        s += b[(x % pages) * 4096]
print('done')
";

const PLOTS: [&str; 7] = [
    "faults",
    "remote-read",
    "remote-write",
    "hit-rate",
    "stalled",
    "evictions",
    "prefetch",
];

#[test]
fn the_report_of_a_real_run_opens_offline_with_every_plot_drawn() {
    let chromium = find_chromium();
    let _turn = heavy();
    let dir = scratch("report");
    let (stats, html) = (dir.join("run.json"), dir.join("run.html"));
    let ran = run_measured(
        dsmrun_cmd(2, 4 << 20, &stats)
            // It stalls most of the time: a short window makes it warn, for the page.
            .args([
                "--profile",
                "sequential",
                "--thrash-warning",
                "1",
                "--report",
            ])
            .arg(&html)
            .args(["--", "/usr/bin/python3", "-c", SCAN_PYTHON]),
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    // How much the job stalls depends on the machine; the page must show exactly the
    // warnings the run gave (the scan is meant to give one, but a fast machine may not).
    let warned = u64::from(ran.stderr.contains("is thrashing"));
    let total = stats_total(&stats);
    assert_pooled(&total, "the scan");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert!(
        doc["timeline"]["samples"].as_array().unwrap().len() >= 5,
        "a sample a second: {}",
        doc["timeline"]
    );
    assert_eq!(
        total["remote_read_bytes_by_node"].as_array().map(Vec::len),
        Some(2),
        "traffic per node: {total}"
    );

    // The same page again, from the file alone.
    let again = dir.join("again.html");
    let st = Command::new(dsmrun())
        .args(["report"])
        .arg(&stats)
        .arg("-o")
        .arg(&again)
        .status()
        .unwrap();
    assert!(st.success());

    for page in [&html, &again] {
        let seen = open_in_chromium(&chromium, page, &dir);
        check_page(&seen, page, warned);
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_bad_or_truncated_stats_file_gets_a_clear_error() {
    let dir = scratch("report-bad");
    let out = dir.join("out.html");
    let cases = [
        ("cut.json", "{\"job\": {\"program\": [\"x\"], \"nodes\": 2", "is cut short"),
        ("text.json", "not json at all", "is not a `dsmrun --stats` file"),
        ("old.json", "{\"job\": {\"program\": [\"x\"], \"nodes\": 1, \"wall_time_s\": 1.0, \"exit_status\": 0}, \"total\": {}, \"processes\": []}", "has no timeline"),
    ];
    for (name, text, expected) in cases {
        let input = dir.join(name);
        std::fs::write(&input, text).unwrap();
        let o = Command::new(dsmrun())
            .arg("report")
            .arg(&input)
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{name}: {err}");
        assert!(err.starts_with("dsmrun report: "), "{name}: {err}");
        assert!(err.contains(expected), "{name}: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
        assert!(!out.exists(), "{name}: no page from a bad file");
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn find_chromium() -> PathBuf {
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("chromium is missing: apt-get install chromium (Debian's package)");
}

/// What Chromium saw while loading the page.
struct Seen {
    requests: Vec<String>,
    errors: Vec<Value>,
    plots: Value,
    process_rows: u64,
    warnings: u64,
}

fn check_page(seen: &Seen, page: &Path, warnings: u64) {
    assert!(seen.errors.is_empty(), "console errors: {:#?}", seen.errors);
    let own = format!("file://{}", page.display());
    assert!(
        seen.requests.iter().all(|u| *u == own),
        "the page must request nothing but itself: {:?}",
        seen.requests
    );
    let plots = seen.plots.as_array().expect("plots");
    let ids: Vec<&str> = plots.iter().filter_map(|p| p["id"].as_str()).collect();
    let expected: Vec<String> = PLOTS.iter().map(|p| format!("plot-{p}")).collect();
    assert_eq!(ids, expected, "{:#}", seen.plots);
    for p in plots {
        let circles = p["circles"].as_u64().unwrap_or(0);
        let lines = p["lines"].as_u64().unwrap_or(0);
        assert!(
            circles >= 3 && lines >= 1,
            "every plot has data points drawn: {p}"
        );
        assert_eq!(
            p["points"].as_str().and_then(|s| s.parse().ok()),
            Some(circles),
            "one circle a data point: {p}"
        );
        assert!(p["width"].as_f64().unwrap_or(0.0) > 100.0, "laid out: {p}");
    }
    assert_eq!(seen.process_rows, 1, "one process of the job in its table");
    assert_eq!(
        seen.warnings, warnings,
        "the thrash warnings given during the run"
    );
}

/// Opens `page` in a fresh headless Chromium and reports what it saw.
fn open_in_chromium(chromium: &Path, page: &Path, scratch: &Path) -> Seen {
    let profile = scratch.join(format!(
        "chromium-{}",
        page.file_stem().unwrap().to_string_lossy()
    ));
    let mut browser = Browser::start(chromium, &profile);
    let mut cdp = browser.page();
    for domain in ["Runtime", "Log", "Network", "Page"] {
        cdp.call(&format!("{domain}.enable"), json!({}));
    }
    let url = format!("file://{}", page.display());
    cdp.call("Page.navigate", json!({"url": url}));
    cdp.wait_for("Page.loadEventFired", Duration::from_secs(30));
    // Late console messages or requests would come in this pause.
    cdp.drain(Duration::from_millis(500));
    let plots = cdp.eval(
        "JSON.stringify([...document.querySelectorAll('figure.plot')].map(f => ({
            id: f.id, points: f.dataset.points,
            circles: f.querySelectorAll('svg circle').length,
            lines: f.querySelectorAll('svg polyline').length,
            width: f.getBoundingClientRect().width })))",
    );
    let rows = cdp.eval(
        "JSON.stringify([...document.querySelectorAll('h2')].find(h => h.textContent === 'Processes')
            .nextElementSibling.querySelectorAll('tr').length - 1)",
    );
    let warnings = cdp.eval("JSON.stringify(document.querySelectorAll('div.warn').length)");
    if let Some(shot) = std::env::var_os("DSM_REPORT_SCREENSHOT") {
        let r = cdp.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = data_encoding::BASE64
            .decode(r["data"].as_str().unwrap_or("").as_bytes())
            .expect("screenshot base64");
        std::fs::write(&shot, png).expect("writing the screenshot");
    }
    let seen = Seen {
        requests: cdp.requests.clone(),
        errors: cdp.errors.clone(),
        plots: serde_json::from_str(plots.as_str().unwrap_or("null")).unwrap(),
        process_rows: rows.as_str().and_then(|s| s.parse().ok()).unwrap_or(0),
        warnings: warnings.as_str().and_then(|s| s.parse().ok()).unwrap_or(0),
    };
    drop(cdp);
    browser.stop();
    seen
}

/// A headless Chromium in its own process group, stopped (the group) when dropped.
struct Browser {
    child: Child,
    port: u16,
}

impl Browser {
    fn start(chromium: &Path, profile: &Path) -> Browser {
        let _ = std::fs::remove_dir_all(profile);
        let mut child = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1280,2400",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("starting chromium");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads Chromium's stderr to the end, so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("DevTools listening on ws://127.0.0.1:").nth(1) {
                    let port = rest.split('/').next().and_then(|p| p.parse::<u16>().ok());
                    let _ = tx.send(port);
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(60))
            .ok()
            .flatten()
            .expect("chromium did not say where its DevTools listen");
        Browser { child, port }
    }

    /// A DevTools session on the page Chromium opened (about:blank).
    fn page(&mut self) -> Cdp {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let list = http_get(self.port, "/json/list");
            let target = list.as_array().and_then(|l| {
                l.iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str())
                    .map(str::to_string)
            });
            if let Some(url) = target {
                return Cdp::connect(self.port, &url);
            }
            assert!(Instant::now() < deadline, "no page target: {list}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn stop(&mut self) {
        let group = -(self.child.id() as i32);
        // SAFETY: signals the process group of the browser this test started.
        unsafe { libc::kill(group, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: as above; whatever is left of the group goes.
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.stop();
    }
}

/// GETs `path` from the DevTools HTTP endpoint (HTTP/1.1: it answers nothing to 1.0).
fn http_get(port: u16, path: &str) -> Value {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connecting to DevTools");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            });
            if length.is_some_and(|n| body.len() >= n) {
                return serde_json::from_str(body).unwrap_or(Value::Null);
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return Value::Null,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A DevTools protocol session: calls, and the events the checks need.
struct Cdp {
    ws: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
    requests: Vec<String>,
    errors: Vec<Value>,
    events: Vec<String>,
}

impl Cdp {
    fn connect(port: u16, url: &str) -> Cdp {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connecting to DevTools");
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let (ws, _) = tungstenite::client(url, stream).expect("websocket handshake");
        Cdp {
            ws,
            next_id: 0,
            requests: Vec::new(),
            errors: Vec::new(),
            events: Vec::new(),
        }
    }

    /// The next message, or None after the read timeout.
    fn next(&mut self) -> Option<Value> {
        match self.ws.read() {
            Ok(tungstenite::Message::Text(t)) => serde_json::from_str(t.as_str()).ok(),
            Ok(_) => None,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("DevTools connection: {e}"),
        }
    }

    /// Files an event among what the checks look at.
    fn note(&mut self, m: &Value) {
        let method = m["method"].as_str().unwrap_or("");
        let p = &m["params"];
        match method {
            "Network.requestWillBeSent" => self
                .requests
                .push(p["request"]["url"].as_str().unwrap_or("").to_string()),
            "Runtime.exceptionThrown" => self.errors.push(p.clone()),
            "Runtime.consoleAPICalled"
                if matches!(p["type"].as_str(), Some("error" | "assert")) =>
            {
                self.errors.push(p.clone())
            }
            "Log.entryAdded" if p["entry"]["level"] == "error" => self.errors.push(p.clone()),
            _ => {}
        }
        self.events.push(method.to_string());
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws
            .send(tungstenite::Message::text(msg))
            .expect("sending to DevTools");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let Some(m) = self.next() else { continue };
            if m["id"] == id {
                assert!(m.get("error").is_none(), "{method}: {m}");
                return m["result"].clone();
            }
            self.note(&m);
        }
        panic!("{method}: no answer from Chromium in 30 s");
    }

    fn wait_for(&mut self, event: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.events.iter().any(|e| e == event) {
            assert!(Instant::now() < deadline, "no {event}: {:?}", self.events);
            if let Some(m) = self.next() {
                self.note(&m);
            }
        }
    }

    fn drain(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        while Instant::now() < deadline {
            if let Some(m) = self.next() {
                self.note(&m);
            }
        }
    }

    /// Evaluates `expr` in the page and returns its value.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true}),
        );
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {r}");
        r["result"]["value"].clone()
    }
}
