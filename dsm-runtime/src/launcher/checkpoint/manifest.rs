//! A checkpoint's manifest: what the job was (command line, directory, node count and
//! size, its `DSM_*` settings), which files restore it (each node's chain of snapshots,
//! the process image) and the size and checksum of every one of them.
//!
//! Stored as `MANIFEST`: pretty JSON, then a last line `xxh3 <16 hex digits>` over the
//! bytes before it, so that a damaged manifest is refused like a damaged data file.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use xxhash_rust::xxh3::Xxh3;

/// The manifest's file name inside a checkpoint.
pub const MANIFEST_FILE: &str = "MANIFEST";
/// Version of this layout; others are refused.
pub const FORMAT: u32 = 1;

/// One file a checkpoint needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// The checkpoint that holds it (its sequence number).
    pub checkpoint: u32,
    /// Its name inside that checkpoint.
    pub file: String,
    /// Its size.
    pub bytes: u64,
    /// Its xxh3-64, in hex.
    pub xxh3: String,
}

/// The job a checkpoint restarts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The program's command line.
    pub program: Vec<String>,
    /// Its working directory at start.
    pub cwd: String,
    /// Memory each node offered (`--node-memory`).
    pub node_memory_bytes: u64,
    /// Each node's region (restored regions must have the same size).
    pub node_span_bytes: u64,
    /// The job's `DSM_*` settings, without those a restart replaces (nodes, secret,
    /// statistics directory).
    pub vars: BTreeMap<String, String>,
}

/// A checkpoint's manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    /// This checkpoint's number (`ckpt-NNNN`).
    pub sequence: u32,
    /// When it was taken, seconds since the epoch.
    pub created_unix_s: u64,
    /// The job.
    pub job: JobRecord,
    /// Per node, its snapshots to load in order: a full one, then deltas.
    pub chains: Vec<Vec<FileEntry>>,
    /// The program's process image (in this checkpoint).
    pub image: FileEntry,
}

impl Manifest {
    /// Every file the checkpoint needs.
    pub fn files(&self) -> impl Iterator<Item = &FileEntry> {
        self.chains
            .iter()
            .flatten()
            .chain(std::iter::once(&self.image))
    }

    /// The text stored in `MANIFEST`: JSON and its checksum line.
    pub fn encode(&self) -> String {
        let json = serde_json::to_string_pretty(self).expect("a manifest serialises");
        let body = format!("{json}\n");
        format!("{body}xxh3 {:016x}\n", xxh3_of(body.as_bytes()))
    }

    /// Parses `MANIFEST` text; says what is wrong with a damaged one.
    pub fn decode(text: &str) -> Result<Manifest, String> {
        let trimmed = text.strip_suffix('\n').unwrap_or(text);
        let (body, sum_line) = match trimmed.rfind('\n') {
            Some(i) => (&text[..=i], &trimmed[i + 1..]),
            None => return Err("no checksum line".into()),
        };
        let stored = sum_line
            .strip_prefix("xxh3 ")
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .ok_or_else(|| format!("bad checksum line {sum_line:?}"))?;
        if stored != xxh3_of(body.as_bytes()) {
            return Err("checksum mismatch: the manifest is damaged".into());
        }
        let m: Manifest =
            serde_json::from_str(body).map_err(|e| format!("unreadable manifest: {e}"))?;
        if m.format != FORMAT {
            return Err(format!(
                "format {} (this dsmrun reads format {FORMAT})",
                m.format
            ));
        }
        if m.chains.is_empty() || m.chains.iter().any(Vec::is_empty) {
            return Err("a node has no snapshot".into());
        }
        if m.image.checkpoint != m.sequence || m.files().any(|f| !plain_name(&f.file)) {
            return Err("a file lies outside its checkpoint".into());
        }
        if m.files().any(|f| f.checkpoint > m.sequence) {
            return Err("a file of a later checkpoint is named".into());
        }
        Ok(m)
    }
}

/// A file name with no directory part (manifests name files inside checkpoints only).
fn plain_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && name != "." && name != ".."
}

/// xxh3-64 of `bytes`.
pub fn xxh3_of(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// Size and xxh3-64 (hex) of the file at `path`, read in full.
pub fn file_sum(path: &Path) -> std::io::Result<(u64, String)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok((bytes, format!("{:016x}", hasher.digest())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(checkpoint: u32, file: &str) -> FileEntry {
        FileEntry {
            checkpoint,
            file: file.into(),
            bytes: 4,
            xxh3: "00000000000000ff".into(),
        }
    }

    fn sample() -> Manifest {
        Manifest {
            format: FORMAT,
            sequence: 2,
            created_unix_s: 1,
            job: JobRecord {
                program: vec!["heapwalk".into(), "64".into()],
                cwd: "/tmp".into(),
                node_memory_bytes: 1 << 30,
                node_span_bytes: 1 << 40,
                vars: [("DSM_SLOTS".to_string(), "8".to_string())].into(),
            },
            chains: vec![vec![entry(1, "node-0.snap"), entry(2, "node-0.snap")]],
            image: entry(2, "image"),
        }
    }

    #[test]
    fn a_manifest_reads_back_as_written() {
        let m = sample();
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
        assert_eq!(m.files().count(), 3);
    }

    #[test]
    fn damaged_or_inconsistent_manifests_are_refused_saying_why() {
        let text = sample().encode();
        let flipped = text.replacen("heapwalk", "heapwalj", 1);
        assert!(Manifest::decode(&flipped).unwrap_err().contains("damaged"));
        assert!(Manifest::decode(&text[..text.len() / 2])
            .unwrap_err()
            .contains("checksum"));
        assert!(Manifest::decode("").is_err());
        let mut m = sample();
        m.chains[0][0].file = "../ckpt-0001/node-0.snap".into();
        assert!(Manifest::decode(&m.encode())
            .unwrap_err()
            .contains("outside"));
        let mut m = sample();
        m.chains[0][1].checkpoint = 3;
        assert!(Manifest::decode(&m.encode()).unwrap_err().contains("later"));
        let mut m = sample();
        m.chains.push(Vec::new());
        assert!(Manifest::decode(&m.encode())
            .unwrap_err()
            .contains("no snapshot"));
        let mut m = sample();
        m.format = 9;
        assert!(Manifest::decode(&m.encode())
            .unwrap_err()
            .contains("format 9"));
    }
}
