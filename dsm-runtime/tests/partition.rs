//! Partitions, under `replicate:2` and `ec:4+1`: a memory node whose packets are dropped
//! (nftables, inside a network namespace of this test's own, so the machine's network is
//! untouched) is declared dead after `--node-timeout` and fenced; the job finishes with
//! the native output. The rule is then replaced by one that counts new connections to the
//! node, which answers again: the job must never contact it again.
//!
//! Needs root (network namespaces, nftables) and `unshare`, `nsenter`, `ip`, `nft`
//! (util-linux, iproute2, nftables).

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// heapwalk's arguments: 96 MiB over 4 threads, 6 rounds (a few seconds over TCP).
const HEAPWALK_ARGS: [&str; 4] = ["96", "4", "6", "11"];
/// The node timeout of the job, in ms.
const TIMEOUT_MS: u64 = 500;
/// A wait longer than this is a hang.
const HANG: Duration = Duration::from_secs(120);

/// A network namespace kept alive by a sleeping process; removed with it.
struct Netns {
    holder: Child,
}

impl Netns {
    fn new() -> Netns {
        let holder = Command::new("unshare")
            .args(["--net", "--", "sleep", "600"])
            .spawn()
            .expect("unshare --net");
        let ns = Netns { holder };
        // Wait until the holder runs in its own namespace.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_link(ns.path()).ok() == std::fs::read_link("/proc/self/ns/net").ok() {
            assert!(Instant::now() < deadline, "unshare --net did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        let up = ns.command("ip").args(["link", "set", "lo", "up"]).status();
        assert!(up.is_ok_and(|s| s.success()), "ip link set lo up failed");
        ns
    }

    fn path(&self) -> String {
        format!("/proc/{}/ns/net", self.holder.id())
    }

    /// `program` run inside the namespace.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path()))
            .arg("--")
            .arg(program);
        c
    }

    /// Applies an nftables script inside the namespace.
    fn nft(&self, script: &str) {
        let mut c = self.command("nft");
        let mut child = c.args(["-f", "-"]).stdin(Stdio::piped()).spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "nft refused:\n{script}");
    }

    /// `nft list table inet dsmpart` inside the namespace.
    fn rules(&self) -> String {
        let out = self
            .command("nft")
            .args(["list", "table", "inet", "dsmpart"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (network namespaces and nftables need it)".into());
    }
    ["unshare", "nsenter", "ip", "nft"]
        .into_iter()
        .find(|p| !have(p))
        .map(|p| format!("{p} is missing (apt-get install util-linux iproute2 nftables)"))
}

/// Waits for a stderr line satisfying `wanted`, returning it.
fn wait_line(rx: &mpsc::Receiver<String>, wanted: impl Fn(&str) -> bool) -> Option<String> {
    let deadline = Instant::now() + HANG;
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .ok()?;
        if wanted(&line) {
            return Some(line);
        }
    }
}

/// The port of node `i` from `dsmrun -v`'s `dsmrun: node I pid P at ADDR:PORT` line.
fn node_port(rx: &mpsc::Receiver<String>, i: usize) -> u16 {
    let prefix = format!("dsmrun: node {i} pid ");
    let line = wait_line(rx, |l| l.starts_with(&prefix)).expect("node line");
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "at").expect("an address");
    let addr = words[at + 1];
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// Packets the rule whose text contains `rule` counted, from `nft list` output.
fn counted(rules: &str, rule: &str) -> u64 {
    let line = rules
        .lines()
        .find(|l| l.contains(rule) && l.contains("counter packets"))
        .unwrap_or_else(|| panic!("no counting rule {rule:?} in:\n{rules}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "packets").unwrap();
    words[at + 1].parse().unwrap()
}

#[test]
fn a_partitioned_node_is_declared_dead_fenced_and_never_contacted_after_it_heals() {
    partitioned_node_1("replicate:2", 3);
}

#[test]
fn a_partitioned_node_under_ec_4_1_is_declared_dead_fenced_and_never_contacted_again() {
    partitioned_node_1("ec:4+1", 5);
}

/// heapwalk on `nodes` nodes kept with `redundancy` over TCP while node 1's packets are
/// dropped, then let through again (see the module documentation).
fn partitioned_node_1(redundancy: &str, nodes: usize) {
    if let Some(reason) = missing_prerequisite() {
        return skip("partition", &reason);
    }
    let Some(exe) = compile_c("heapwalk", &[]) else {
        return skip("partition", "no C compiler (apt-get install gcc)");
    };
    require_preload();
    let _turn = heavy();
    let native = Command::new(&exe).args(HEAPWALK_ARGS).output().unwrap();
    assert!(native.status.success());
    let ns = Netns::new();
    let timeout = TIMEOUT_MS.to_string();
    let mut child = ns
        .command(dsmrun().to_str().unwrap())
        .args(["-v", "-n", &nodes.to_string(), "--redundancy", redundancy])
        .args(["--transport", "tcp"])
        .args(["--node-timeout", &timeout, "--local-cache", "16M", "--"])
        .arg(&exe)
        .args(HEAPWALK_ARGS)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    let err_thread = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let mut out = child.stdout.take().unwrap();
    let out_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        out.read_to_end(&mut v).unwrap();
        v
    });
    let port = node_port(&rx, 1);
    wait_line(&rx, |l| l.starts_with("dsm: ") && l.contains(": heap ")).expect("program up");
    std::thread::sleep(Duration::from_millis(300));
    let cut_while_running = child.try_wait().unwrap().is_none();
    ns.nft(&format!(
        "table inet dsmpart {{\n chain out {{ type filter hook output priority 0; \
         tcp dport {port} drop; tcp sport {port} drop; }}\n}}\n"
    ));
    let died = wait_line(&rx, |l| l.contains("node 1 at") && l.contains("died"));
    // The link heals: the node answers again, and new connections to it are counted.
    ns.nft(&format!(
        "delete table inet dsmpart\ntable inet dsmpart {{\n chain out {{ type filter hook \
         output priority 0; tcp dport {port} tcp flags & (syn | ack) == syn counter; }}\n}}\n"
    ));
    let healed_while_running = child.try_wait().unwrap().is_none();
    let deadline = Instant::now() + HANG;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the partitioned job hung");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let reconnects = counted(&ns.rules(), "flags");
    // The rule does count a connection attempt (refused now: the job and its nodes ended).
    let _ = ns
        .command("bash")
        .args(["-c", &format!("echo > /dev/tcp/127.0.0.1/{port}")])
        .stderr(Stdio::null())
        .status();
    assert!(
        counted(&ns.rules(), "flags") > reconnects,
        "the counting rule missed a connection attempt"
    );
    let stdout = out_thread.join().unwrap();
    let stderr = err_thread.join().unwrap();
    assert!(
        cut_while_running && healed_while_running,
        "the program ended before the link was cut and healed: make it run longer\n{stderr}"
    );
    assert!(died.is_some(), "node 1 was never declared dead:\n{stderr}");
    assert!(status.success(), "the job failed: {status}\n{stderr}");
    assert!(
        stdout == native.stdout,
        "output differs from native:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("no answer within {TIMEOUT_MS} ms"))
            && stderr.contains("it is fenced"),
        "the node was not declared dead by the timeout and fenced:\n{stderr}"
    );
    assert_eq!(
        reconnects, 0,
        "the job connected to the fenced node again after the link healed:\n{stderr}"
    );
    eprintln!("{}", died.unwrap());
}
