//! The checkpoint directory: `ckpt-NNNN/` per complete checkpoint, written as
//! `ckpt-NNNN.tmp/` and renamed only once every file and the manifest are on disk, so a
//! crash mid-checkpoint leaves the previous checkpoint as the newest complete one.

use super::manifest::{file_sum, Manifest, MANIFEST_FILE};
use std::path::{Path, PathBuf};

/// Suffix of a checkpoint being written.
const TMP_SUFFIX: &str = ".tmp";

/// The directory of checkpoint `seq` (complete) in `dir`.
pub fn complete_path(dir: &Path, seq: u32) -> PathBuf {
    dir.join(format!("ckpt-{seq:04}"))
}

/// The directory checkpoint `seq` is written in before it is complete.
pub fn tmp_path(dir: &Path, seq: u32) -> PathBuf {
    dir.join(format!("ckpt-{seq:04}{TMP_SUFFIX}"))
}

/// What a checkpoint directory holds: complete checkpoints and unfinished ones.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// Sequence numbers of complete checkpoints, ascending.
    pub complete: Vec<u32>,
    /// Sequence numbers of unfinished ones (`.tmp`).
    pub unfinished: Vec<u32>,
}

impl Listing {
    /// The number the next checkpoint gets.
    pub fn next_sequence(&self) -> u32 {
        self.complete
            .iter()
            .chain(&self.unfinished)
            .max()
            .map_or(1, |m| m + 1)
    }
}

/// Lists `dir` (other entries are left alone).
pub fn list(dir: &Path) -> std::io::Result<Listing> {
    let mut listing = Listing::default();
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("ckpt-") else {
            continue;
        };
        let (digits, tmp) = match rest.strip_suffix(TMP_SUFFIX) {
            Some(d) => (d, true),
            None => (rest, false),
        };
        if let Ok(seq) = digits.parse::<u32>() {
            if tmp {
                listing.unfinished.push(seq);
            } else {
                listing.complete.push(seq);
            }
        }
    }
    listing.complete.sort_unstable();
    listing.unfinished.sort_unstable();
    Ok(listing)
}

/// The newest complete checkpoint of `dir`, its manifest read and every file checked
/// as far as it is cheap: present, size, the image's checksum, each node snapshot's
/// header and index (not its pages: they are checked as the nodes restore them, lazily,
/// so that restart time does not grow with the heap). A damaged one is an error naming
/// the file and the fault.
pub fn newest_valid(dir: &Path) -> Result<(u32, Manifest), String> {
    let listing = list(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let Some(&seq) = listing.complete.last() else {
        let unfinished = if listing.unfinished.is_empty() {
            String::new()
        } else {
            format!(
                " (only unfinished ones: {})",
                listing
                    .unfinished
                    .iter()
                    .map(|s| format!("ckpt-{s:04}{TMP_SUFFIX}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        return Err(format!(
            "{} holds no complete checkpoint{unfinished}",
            dir.display()
        ));
    };
    let ckpt = complete_path(dir, seq);
    let damaged = |why: String| format!("checkpoint {} is damaged: {why}", ckpt.display());
    let text = std::fs::read_to_string(ckpt.join(MANIFEST_FILE))
        .map_err(|e| damaged(format!("{MANIFEST_FILE}: {e}")))?;
    let manifest = Manifest::decode(&text).map_err(|e| damaged(format!("{MANIFEST_FILE}: {e}")))?;
    if manifest.sequence != seq {
        return Err(damaged(format!(
            "{MANIFEST_FILE} says checkpoint {}",
            manifest.sequence
        )));
    }
    for f in manifest.chains.iter().flatten() {
        let path = complete_path(dir, f.checkpoint).join(&f.file);
        check_snapshot(&path, f.bytes).map_err(damaged)?;
    }
    let image = complete_path(dir, manifest.image.checkpoint).join(&manifest.image.file);
    let (bytes, sum) =
        file_sum(&image).map_err(|e| damaged(format!("{}: {e}", image.display())))?;
    check_size(&image, bytes, manifest.image.bytes).map_err(damaged)?;
    if sum != manifest.image.xxh3 {
        return Err(damaged(format!(
            "{}: checksum {sum}, the manifest says {}",
            image.display(),
            manifest.image.xxh3
        )));
    }
    Ok((seq, manifest))
}

/// Checks a node snapshot's size against the manifest, then its header and index.
fn check_snapshot(path: &Path, expected_bytes: u64) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let bytes = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    check_size(path, bytes, expected_bytes)?;
    crate::node::snapshot::read_index(&file, None, None)
        .map(drop)
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn check_size(path: &Path, bytes: u64, expected: u64) -> Result<(), String> {
    if bytes != expected {
        return Err(format!(
            "{}: {bytes} bytes, the manifest says {expected}",
            path.display()
        ));
    }
    Ok(())
}

/// Makes the checkpoint written in `tmp` complete: the manifest written and synced,
/// then the directory renamed to `ckpt-NNNN` and the parent synced.
pub fn commit(dir: &Path, manifest: &Manifest) -> std::io::Result<PathBuf> {
    let tmp = tmp_path(dir, manifest.sequence);
    let path = tmp.join(MANIFEST_FILE);
    std::fs::write(&path, manifest.encode())?;
    std::fs::File::open(&path)?.sync_all()?;
    std::fs::File::open(&tmp)?.sync_all()?;
    pause_for_tests(manifest.sequence);
    let done = complete_path(dir, manifest.sequence);
    std::fs::rename(&tmp, &done)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(done)
}

/// `DSM_TEST_CHECKPOINT_PAUSE=SEQ:MS`: before renaming checkpoint SEQ, waits MS
/// milliseconds, so that a test can kill `dsmrun` while that checkpoint is unfinished.
fn pause_for_tests(seq: u32) {
    let Ok(v) = std::env::var("DSM_TEST_CHECKPOINT_PAUSE") else {
        return;
    };
    let parsed = v
        .split_once(':')
        .and_then(|(s, ms)| Some((s.parse::<u32>().ok()?, ms.parse::<u64>().ok()?)));
    if let Some((_, ms)) = parsed.filter(|(at, _)| *at == seq) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// Removes unfinished checkpoints (left by a crash or a failed checkpoint).
pub fn remove_unfinished(dir: &Path) -> std::io::Result<()> {
    for seq in list(dir)?.unfinished {
        std::fs::remove_dir_all(tmp_path(dir, seq))?;
    }
    Ok(())
}

/// Removes the complete checkpoints older than `newest` that none of its files lies in:
/// what a restart from `newest` does not need.
pub fn prune(dir: &Path, newest: &Manifest) -> std::io::Result<Vec<u32>> {
    let needed: std::collections::BTreeSet<u32> = newest.files().map(|f| f.checkpoint).collect();
    let mut removed = Vec::new();
    for seq in list(dir)?.complete {
        if seq < newest.sequence && !needed.contains(&seq) {
            std::fs::remove_dir_all(complete_path(dir, seq))?;
            removed.push(seq);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::super::manifest::{FileEntry, JobRecord, FORMAT};
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dsm-ckdir-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A real node snapshot at `path`: one page holding `seq`.
    fn write_snapshot(path: &Path, seq: u32) {
        let region = crate::node::region::Region::new(1 << 20).unwrap();
        let p = region.ptr(8192, 4).unwrap();
        // SAFETY: 4 bytes inside the region.
        unsafe { std::ptr::copy_nonoverlapping(seq.to_le_bytes().as_ptr(), p, 4) };
        crate::node::snapshot::write(&region, 0, &Default::default(), path).unwrap();
    }

    /// Writes checkpoint `seq` whose node chain is `chain` (files created as needed).
    fn checkpoint(dir: &Path, seq: u32, chain: &[u32]) -> Manifest {
        std::fs::create_dir_all(tmp_path(dir, seq)).unwrap();
        let entry = |c: u32, name: &str| {
            let at = if c == seq {
                tmp_path(dir, c)
            } else {
                complete_path(dir, c)
            };
            let path = at.join(name);
            if c == seq && name.ends_with(".snap") {
                write_snapshot(&path, c);
            } else if c == seq {
                std::fs::write(&path, format!("{name} of {c}")).unwrap();
            }
            let (bytes, xxh3) = file_sum(&path).unwrap();
            FileEntry {
                checkpoint: c,
                file: name.into(),
                bytes,
                xxh3,
            }
        };
        let m = Manifest {
            format: FORMAT,
            sequence: seq,
            created_unix_s: 0,
            job: JobRecord {
                program: vec!["p".into()],
                cwd: "/".into(),
                node_memory_bytes: 1,
                node_span_bytes: 1,
                vars: Default::default(),
            },
            chains: vec![chain.iter().map(|&c| entry(c, "node-0.snap")).collect()],
            image: entry(seq, "image"),
        };
        commit(dir, &m).unwrap();
        m
    }

    #[test]
    fn the_newest_complete_checkpoint_is_used_and_unfinished_ones_ignored() {
        let dir = scratch("newest");
        assert!(newest_valid(&dir).unwrap_err().contains("no complete"));
        checkpoint(&dir, 1, &[1]);
        checkpoint(&dir, 2, &[1, 2]);
        std::fs::create_dir_all(tmp_path(&dir, 3)).unwrap();
        let listing = list(&dir).unwrap();
        assert_eq!(
            (listing.complete, listing.unfinished),
            (vec![1, 2], vec![3])
        );
        assert_eq!(list(&dir).unwrap().next_sequence(), 4);
        let (seq, m) = newest_valid(&dir).unwrap();
        assert_eq!((seq, m.chains[0].len()), (2, 2));
        remove_unfinished(&dir).unwrap();
        assert!(list(&dir).unwrap().unfinished.is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn damaged_checkpoints_are_refused_naming_the_file() {
        let dir = scratch("damaged");
        checkpoint(&dir, 1, &[1]);
        checkpoint(&dir, 2, &[1, 2]);
        let base = complete_path(&dir, 1).join("node-0.snap");
        let good = std::fs::read(&base).unwrap();
        // Damage to its index is found up front; to its pages, only when they are
        // restored (the nodes' part).
        let mut flipped = good.clone();
        let in_index = good.len() - 20;
        flipped[in_index] ^= 0x20;
        std::fs::write(&base, &flipped).unwrap();
        let e = newest_valid(&dir).unwrap_err();
        assert!(e.contains("ckpt-0001/node-0.snap: checksum"), "{e}");
        std::fs::write(&base, &good[..good.len() - 1]).unwrap();
        let e = newest_valid(&dir).unwrap_err();
        assert!(
            e.contains("ckpt-0001/node-0.snap: ") && e.contains("the manifest says"),
            "{e}"
        );
        std::fs::write(&base, &good).unwrap();
        assert!(newest_valid(&dir).is_ok());
        let image = complete_path(&dir, 2).join("image");
        let image_bytes = std::fs::read(&image).unwrap();
        let mut flipped = image_bytes.clone();
        flipped[0] ^= 1;
        std::fs::write(&image, &flipped).unwrap();
        let e = newest_valid(&dir).unwrap_err();
        assert!(e.contains("ckpt-0002/image: checksum"), "{e}");
        std::fs::write(&image, &image_bytes).unwrap();
        std::fs::remove_file(&base).unwrap();
        let e = newest_valid(&dir).unwrap_err();
        assert!(
            e.contains("ckpt-0001/node-0.snap") && e.contains("No such file"),
            "{e}"
        );
        std::fs::write(&base, &good).unwrap();
        assert!(newest_valid(&dir).is_ok());
        std::fs::write(complete_path(&dir, 2).join(MANIFEST_FILE), "{}\n").unwrap();
        let e = newest_valid(&dir).unwrap_err();
        assert!(e.contains("ckpt-0002 is damaged: MANIFEST"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn pruning_keeps_what_the_newest_chain_needs() {
        let dir = scratch("prune");
        checkpoint(&dir, 1, &[1]);
        checkpoint(&dir, 2, &[1, 2]);
        checkpoint(&dir, 3, &[3]);
        let m = checkpoint(&dir, 4, &[3, 4]);
        assert_eq!(prune(&dir, &m).unwrap(), vec![1, 2]);
        assert_eq!(list(&dir).unwrap().complete, vec![3, 4]);
        assert!(newest_valid(&dir).is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
