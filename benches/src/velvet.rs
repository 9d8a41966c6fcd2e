//! velvetg as a row of the policy benchmark: the unmodified Debian binary on the
//! `velvet-example` data, natively and under `dsmrun` with a given profile, each run on a
//! fresh copy of velveth's output (velvetg rewrites its directory). Every run is confined
//! to one CPU (`taskset -c CPU`, `dsmrun --cpus CPU`; CPU 0 unless DSM_BENCH_CPU says
//! otherwise): velvetg is single-threaded.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const READS: &str = "/usr/share/doc/velvet/examples/test_reads.fa.xz";

/// One velvetg run.
pub struct VelvetRun {
    /// Wall time.
    pub secs: f64,
    /// Peak RSS of the process tree's largest process.
    pub peak_rss: u64,
    /// `--stats` totals of a pooled run.
    pub stats: Option<serde_json::Value>,
    /// The run's contigs.fa.
    pub contigs: Vec<u8>,
}

/// velveth's output on velvet-example, ready for velvetg runs.
pub struct VelvetBench {
    dir: PathBuf,
    dsmrun: PathBuf,
    cpu: String,
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl VelvetBench {
    /// Runs velveth (k=21, as the tests do) in a scratch directory; an error says what is
    /// missing.
    pub fn prepare(dsmrun: &Path) -> Result<VelvetBench, String> {
        if !have("velveth") || !have("velvetg") || !have("xz") {
            return Err("velvet or xz is not installed (apt-get install velvet xz-utils)".into());
        }
        if !Path::new(READS).exists() {
            return Err(format!(
                "{READS} is missing (apt-get install velvet-example)"
            ));
        }
        let dir = std::env::temp_dir().join(format!("dsm-policy-velvet-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let reads = dir.join("reads.fa");
        let out = std::fs::File::create(&reads).map_err(|e| e.to_string())?;
        let ok = Command::new("xz")
            .arg("-dc")
            .arg(READS)
            .stdout(out)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(format!("xz -dc {READS} failed"));
        }
        let ok = Command::new("velveth")
            .arg(dir.join("base"))
            .args(["21", "-fasta", "-shortPaired"])
            .arg(&reads)
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err("velveth failed".into());
        }
        let cpu = std::env::var("DSM_BENCH_CPU").unwrap_or_else(|_| "0".into());
        if cpu.parse::<usize>().is_err() {
            return Err(format!("DSM_BENCH_CPU={cpu:?} is not a CPU number"));
        }
        Ok(VelvetBench {
            dir,
            dsmrun: dsmrun.to_path_buf(),
            cpu,
        })
    }

    fn fresh(&self, name: &str) -> Result<PathBuf, String> {
        let d = self.dir.join(name);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
        for f in ["Sequences", "Roadmaps", "Log"] {
            std::fs::copy(self.dir.join("base").join(f), d.join(f)).map_err(|e| e.to_string())?;
        }
        Ok(d)
    }

    /// velvetg natively.
    pub fn native(&self) -> Result<VelvetRun, String> {
        let d = self.fresh("native")?;
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", &self.cpu, "velvetg"]).arg(&d);
        run(cmd, &d, None)
    }

    /// The CPU every run is confined to.
    pub fn cpu(&self) -> &str {
        &self.cpu
    }

    /// velvetg under `dsmrun -n 2 --profile NAME` with a local cache of `cache_bytes`.
    pub fn pooled(&self, profile: &str, cache_bytes: u64) -> Result<VelvetRun, String> {
        let d = self.fresh(&format!("pooled-{profile}"))?;
        let stats = self.dir.join(format!("{profile}.json"));
        let mut cmd = Command::new(&self.dsmrun);
        cmd.args(["-n", "2", "--cpus", &self.cpu, "-q", "--profile", profile])
            .args(["--local-cache", &cache_bytes.to_string()])
            .arg("--stats")
            .arg(&stats)
            .args(["--", "velvetg"])
            .arg(&d);
        run(cmd, &d, Some(&stats))
    }
}

impl Drop for VelvetBench {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// The child is reaped with wait4 (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn run(mut cmd: Command, dir: &Path, stats: Option<&Path>) -> Result<VelvetRun, String> {
    let start = Instant::now();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let mut status = 0;
    // SAFETY: rusage is plain data the kernel fills.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child; pointers to locals.
    let rc = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let secs = start.elapsed().as_secs_f64();
    if rc <= 0 || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(format!("{cmd:?} failed (wait status {status})"));
    }
    let stats = match stats {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
            Some(v["total"].clone())
        }
        None => None,
    };
    Ok(VelvetRun {
        secs,
        peak_rss: usage.ru_maxrss as u64 * 1024,
        stats,
        contigs: std::fs::read(dir.join("contigs.fa")).map_err(|e| e.to_string())?,
    })
}
