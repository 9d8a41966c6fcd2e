//! `dsmrun restart DIR`: the job of the newest complete checkpoint, run again on fresh
//! local nodes that load their snapshot chains, with the program restored from its image
//! by the runtime's restarter (`crate::checkpoint::restart`). `dsmrun` stays the parent,
//! as for a normal run: teardown, exit status, `--stats`, further checkpoints into DIR.

use super::dir;
use super::manifest::{JobRecord, Manifest};
use super::{CheckpointOptions, IMAGE_NAME};
use crate::config::job::JobConfig;
use crate::launcher::{Plan, RunOptions};
use crate::node::{NodeSize, Snapshots};
use std::ffi::OsString;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The hidden `dsmrun` subcommand that becomes the restored program:
/// `dsmrun restore-image IMAGE JOB_ENV`.
pub const RESTORE_VERB: &str = "restore-image";

/// Variables a restart replaces: the new nodes, their secret, the new statistics
/// directory.
const REPLACED_VARS: [&str; 3] = ["DSM_NODES", "DSM_SECRET", "DSM_STATS_DIR"];

/// The checkpoint a restart starts from, validated.
#[derive(Clone, Debug)]
pub struct Restore {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// When `dsmrun restart` began checking it: restart times count from here.
    pub began: std::time::Instant,
}

/// What `dsmrun restart` was given besides the directory.
#[derive(Clone, Debug, Default)]
pub struct RestartArgs {
    /// Start the fresh nodes on these hosts over ssh (`--hosts`, `--hostfile`).
    pub hosts: Option<Vec<crate::launcher::remote::Host>>,
    /// The dsmrun binary on those hosts (`--remote-dsmrun`).
    pub remote_dsmrun: Option<PathBuf>,
    /// Inside a Slurm allocation, start them on its hosts (false: `--local-nodes`).
    pub slurm: bool,
    /// Checkpoint again this often, into the same directory.
    pub every: Option<std::time::Duration>,
    /// `-v`, as for a run.
    pub verbose: bool,
    /// `-q`, as for a run.
    pub quiet: bool,
    /// `--stats`, as for a run.
    pub stats_path: Option<PathBuf>,
    /// `--name`, as for a run.
    pub name: Option<String>,
}

impl Restore {
    /// The newest complete checkpoint of `dir`, every file checked.
    pub fn open(dir: &Path) -> Result<Restore, String> {
        let began = std::time::Instant::now();
        let dir = dir
            .canonicalize()
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let (_, manifest) = dir::newest_valid(&dir)?;
        Ok(Restore {
            dir,
            manifest,
            began,
        })
    }

    /// The run options of the recorded job, with `args` for what may change.
    pub fn run_options(&self, args: RestartArgs) -> Result<RunOptions, String> {
        let job = self.recorded_job()?;
        Ok(RunOptions {
            nodes: self.manifest.chains.len(),
            attach: None,
            hosts: args.hosts,
            remote_dsmrun: args.remote_dsmrun,
            slurm: args.slurm,
            cache_bytes_max: job.cache_bytes_max,
            node_bytes: self.manifest.job.node_memory_bytes,
            transport: job.transport,
            stats_path: args.stats_path,
            report_path: None,
            progress: false,
            verbose: args.verbose,
            quiet: args.quiet,
            max_procs: job.slots,
            space_base: job.space_base,
            handler_threads: job.handler_threads,
            cpus: None,
            mmap_min_bytes: job.mmap_min_bytes,
            preload_lib: None,
            profile: job.profile.clone(),
            record_trace: None,
            thrash_warning: None,
            redundancy: job.redundancy,
            spare_nodes: job.spare_nodes,
            node_timeout_ms: job.node_timeout_ms,
            name: args.name,
            checkpoint: Some(CheckpointOptions {
                dir: self.dir.clone(),
                every: args.every,
            }),
            program: self
                .manifest
                .job
                .program
                .iter()
                .map(OsString::from)
                .collect(),
            restore: Some(self.clone()),
        })
    }

    /// The recorded job's settings (with placeholder nodes and secret).
    fn recorded_job(&self) -> Result<JobConfig, String> {
        let placeholder = [
            ("DSM_NODES", "127.0.0.1:1".to_string()),
            ("DSM_SECRET", "0".repeat(32)),
        ];
        self.job_with(&placeholder)
    }

    /// The recorded settings with `replaced` (name, value) set.
    fn job_with(&self, replaced: &[(&str, String)]) -> Result<JobConfig, String> {
        let vars = self
            .manifest
            .job
            .vars
            .iter()
            .filter(|(k, _)| !REPLACED_VARS.contains(&k.as_str()))
            .map(|(k, v)| (k.as_str(), v.clone()))
            .chain(replaced.iter().cloned())
            .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        JobConfig::from_vars(vars).map_err(|e| {
            format!(
                "checkpoint {} records job settings this dsmrun refuses: {e}",
                self.manifest.sequence
            )
        })
    }

    /// The recorded slices of the global range (the restored program's own).
    pub(crate) fn plan(&self) -> Result<Plan, String> {
        let job = self.recorded_job()?;
        Ok(Plan {
            slot_bytes: job.slot_bytes,
            slots: job.slots,
        })
    }

    /// The recorded nodes' size: a snapshot loads only into a region of the same size.
    pub fn node_size(&self) -> NodeSize {
        NodeSize {
            memory_bytes: self.manifest.job.node_memory_bytes,
            span_bytes: self.manifest.job.node_span_bytes,
        }
    }

    /// The job as recorded, on the new nodes (`fresh` holds their addresses, the new
    /// secret and statistics directory).
    pub fn job(&self, fresh: &JobConfig) -> Result<JobConfig, String> {
        let nodes: Vec<String> = fresh.nodes.iter().map(ToString::to_string).collect();
        let mut replaced = vec![
            ("DSM_NODES", nodes.join(",")),
            ("DSM_SECRET", fresh.secret.as_str().to_string()),
        ];
        if let Some(d) = &fresh.stats_dir {
            replaced.push(("DSM_STATS_DIR", d.display().to_string()));
        }
        let job = self.job_with(&replaced)?;
        job.validate().map_err(|e| e.to_string())?;
        Ok(job)
    }

    /// The command that becomes the restored program: `dsmrun restore-image IMAGE ENV`,
    /// with the job's variables written to ENV (mode 0600, in the statistics directory)
    /// for the restarter, in the recorded working directory.
    pub fn command(&self, job: &JobConfig, dsmrun_exe: &Path) -> Result<Command, String> {
        let stats_dir = job.stats_dir.clone().unwrap_or_else(std::env::temp_dir);
        let env_file = stats_dir.join("restart.env");
        write_env_file(&env_file, job)
            .map_err(|e| format!("writing the job's variables to {}: {e}", env_file.display()))?;
        let image = dir::complete_path(&self.dir, self.manifest.sequence).join(IMAGE_NAME);
        let mut cmd = Command::new(dsmrun_exe);
        cmd.arg(RESTORE_VERB).arg(&image).arg(&env_file);
        if Path::new(&self.manifest.job.cwd).is_dir() {
            cmd.current_dir(&self.manifest.job.cwd);
        }
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("DSM_") || k == "LD_PRELOAD" {
                cmd.env_remove(k);
            }
        }
        Ok(cmd)
    }
}

/// `KEY=VALUE` lines of the job's variables, readable by this user only (the secret).
fn write_env_file(path: &Path, job: &JobConfig) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    for (k, v) in job.to_vars() {
        writeln!(f, "{k}={v}")?;
    }
    Ok(())
}

/// Waits (in a thread, at most a minute) until the restored program `pid` runs its
/// runtime again (its control socket is back), then notes the time since `started` (when
/// `dsmrun restart` began checking the checkpoint) for `--stats` and says it with `-v`.
pub fn watch_running(
    checkpointer: std::sync::Arc<super::Checkpointer>,
    pid: u32,
    stats_dir: &Path,
    started: std::time::Instant,
) {
    let socket = stats_dir
        .join(crate::suspend::control::CTL_DIR)
        .join(format!("{pid}.sock"));
    let _ = std::thread::Builder::new()
        .name("dsmrun-restart-watch".into())
        .spawn(move || {
            let deadline = started + std::time::Duration::from_secs(60);
            while !socket.exists() {
                if std::time::Instant::now() > deadline {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let ms = started.elapsed().as_millis() as u64;
            checkpointer.restarted_in(ms);
            if checkpointer.verbose() {
                eprintln!(
                    "dsmrun: the restored program runs again {ms} ms after the restart began"
                );
            }
        });
}

/// Each node's part in checkpoints: the checkpoint directory to write into, and on a
/// restart its snapshot chain.
pub fn node_snapshots(opts: &RunOptions) -> Vec<Snapshots> {
    (0..opts.nodes)
        .map(|i| Snapshots {
            dir: opts.checkpoint.as_ref().map(|c| c.dir.clone()),
            restore: opts
                .restore
                .as_ref()
                .and_then(|r| r.manifest.chains.get(i))
                .map(|chain| {
                    chain
                        .iter()
                        .map(|f| dir::complete_path(&opts_dir(opts), f.checkpoint).join(&f.file))
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect()
}

fn opts_dir(opts: &RunOptions) -> PathBuf {
    opts.restore
        .as_ref()
        .map(|r| r.dir.clone())
        .unwrap_or_default()
}

/// What a checkpoint records of the job: its command line and directory, its nodes'
/// size and its settings without those a restart replaces.
pub fn job_record(opts: &RunOptions, job: &JobConfig, node_size: NodeSize) -> JobRecord {
    let cwd = match &opts.restore {
        Some(r) => r.manifest.job.cwd.clone(),
        None => std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_default(),
    };
    JobRecord {
        program: opts
            .program
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        cwd,
        node_memory_bytes: node_size.memory_bytes,
        node_span_bytes: node_size.span_bytes,
        vars: job
            .to_vars()
            .into_iter()
            .filter(|(k, _)| !REPLACED_VARS.contains(k))
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    }
}

/// Checkpoints need nodes this `dsmrun` starts (they write their snapshots into the
/// directory, and a restart starts them again), here or on other hosts, and one copy of
/// each page.
pub fn check_supported(opts: &RunOptions, attached: bool) -> Result<(), String> {
    if attached {
        return Err(
            "--checkpoint-dir needs nodes that dsmrun starts: it cannot be combined with \
                    --attach (use -n, with --hosts or --hostfile for nodes on other hosts)"
                .into(),
        );
    }
    if opts.redundancy.copies() > 1 || opts.spare_nodes > 0 {
        return Err(
            "--checkpoint-dir cannot be combined with --redundancy or --spare-nodes \
                    (a checkpoint already keeps a copy of every page)"
                .into(),
        );
    }
    Ok(())
}

/// Prepares `DIR` for `--checkpoint-dir`: created if missing, made absolute (the nodes
/// and the processes are given paths in it).
pub fn prepare_dir(dir: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("--checkpoint-dir {}: {e}", dir.display()))?;
    dir.canonicalize()
        .map_err(|e| format!("--checkpoint-dir {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::super::manifest::{FileEntry, FORMAT};
    use super::*;

    fn restore_of(vars: &[(&str, &str)]) -> Restore {
        let file = FileEntry {
            checkpoint: 1,
            file: "node-0.snap".into(),
            bytes: 0,
            xxh3: String::new(),
        };
        Restore {
            dir: PathBuf::from("/ck"),
            manifest: Manifest {
                format: FORMAT,
                sequence: 1,
                created_unix_s: 0,
                job: JobRecord {
                    program: vec!["prog".into()],
                    cwd: "/".into(),
                    node_memory_bytes: 1 << 30,
                    node_span_bytes: 1 << 40,
                    vars: vars
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                },
                chains: vec![vec![file.clone()], vec![file.clone()]],
                image: file,
            },
            began: std::time::Instant::now(),
        }
    }

    #[test]
    fn a_restart_keeps_the_recorded_settings_on_the_new_nodes() {
        let r = restore_of(&[
            ("DSM_SLOTS", "4"),
            ("DSM_SLOT_BYTES", "1099511627776"),
            ("DSM_CACHE_BYTES", "16777216"),
            ("DSM_NODES", "10.0.0.1:1"),
        ]);
        let fresh = JobConfig::from_vars([
            ("DSM_NODES".into(), "127.0.0.1:5000,127.0.0.1:5001".into()),
            ("DSM_SECRET".into(), "a".repeat(32).into()),
            ("DSM_STATS_DIR".into(), "/tmp/new".into()),
        ])
        .unwrap();
        let job = r.job(&fresh).unwrap();
        assert_eq!(job.nodes, fresh.nodes, "the recorded nodes are replaced");
        assert_eq!(job.secret.as_str(), fresh.secret.as_str());
        assert_eq!(job.stats_dir.as_deref(), Some(Path::new("/tmp/new")));
        assert_eq!((job.slots, job.cache_bytes_max), (4, 16 << 20));
        let opts = r.run_options(RestartArgs::default()).unwrap();
        assert_eq!((opts.nodes, opts.max_procs), (2, 4));
        let plan = r.plan().unwrap();
        assert_eq!(plan.slot_bytes, 1 << 40);
        let snaps = node_snapshots(&opts);
        assert_eq!(
            snaps[1].restore,
            vec![PathBuf::from("/ck/ckpt-0001/node-0.snap")]
        );
        assert_eq!(snaps[0].dir.as_deref(), Some(Path::new("/ck")));
    }

    #[test]
    fn recorded_settings_this_dsmrun_refuses_are_a_clear_error() {
        let r = restore_of(&[("DSM_NO_SUCH_THING", "1")]);
        let e = r.run_options(RestartArgs::default()).unwrap_err();
        assert!(
            e.contains("records job settings this dsmrun refuses"),
            "{e}"
        );
    }
}
