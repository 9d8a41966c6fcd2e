//! Choosing the backend at run time: `--transport tcp|shm|verbs|auto`.
//!
//! `auto` takes shared memory when every node runs on this host (the embedded default:
//! nothing is faster than a memory copy, and it is one-sided like RDMA); otherwise verbs
//! when this build has it, an RDMA device with an active port is present, and every node
//! accepts a queue pair; otherwise shared memory for the nodes on this host and TCP for
//! the others (`shm+tcp`), or TCP alone when no node is here. Whatever it picks, the reason is returned so the
//! launcher can say it. Asking for `shm` or `verbs` where it cannot work is an error that
//! says why and what to do.

use super::auth::Secret;
use super::shm::{ShmTransport, ShmUnavailable};
use super::tcp::TcpTransport;
use super::{Transport, TransportError};
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// The transport a job asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TransportKind {
    /// TCP: works everywhere.
    Tcp,
    /// Shared memory with nodes on this host; an error when a node is elsewhere.
    Shm,
    /// RDMA verbs; an error when no device is usable.
    Verbs,
    /// Shared memory when every node is on this host, else verbs when usable, else TCP.
    #[default]
    Auto,
}

impl FromStr for TransportKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "tcp" => Ok(TransportKind::Tcp),
            "shm" => Ok(TransportKind::Shm),
            "verbs" | "rdma" => Ok(TransportKind::Verbs),
            "auto" => Ok(TransportKind::Auto),
            other => Err(format!(
                "unknown transport {other:?}: use tcp, shm, verbs or auto"
            )),
        }
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Shm => "shm",
            TransportKind::Verbs => "verbs",
            TransportKind::Auto => "auto",
        })
    }
}

/// The transport chosen, and why.
pub struct Selected {
    /// The backend.
    pub transport: Box<dyn Transport>,
    /// One line for the user: what was chosen and why.
    pub reason: String,
}

/// Why no transport could be set up.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    /// `--transport verbs` where verbs cannot work.
    #[error(
        "--transport verbs: {reason}; use --transport tcp, or --transport auto to fall back to TCP"
    )]
    VerbsUnavailable {
        /// What is missing.
        reason: String,
    },
    /// `--transport shm` with a node that is not on this host.
    #[error("--transport shm: {reason}; use --transport tcp or auto for nodes on other hosts")]
    ShmUnavailable {
        /// Which node, and why.
        reason: String,
    },
    /// The nodes could not be reached.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// Whether this process could use verbs: `Ok(description of the device)` or
/// `Err(why not)`. `ibv_get_device_list` failing (ENOSYS on kernels without RDMA) counts
/// as "no device".
pub fn verbs_device() -> Result<String, String> {
    #[cfg(feature = "verbs")]
    {
        let cfg = super::verbs::device::VerbsConfig::from_env()?;
        super::verbs::device::probe(&cfg)
    }
    #[cfg(not(feature = "verbs"))]
    {
        Err("this build has no verbs support (rebuild with `--features verbs`)".into())
    }
}

/// Sets up the transport `kind` to the nodes at `addrs`.
pub fn select(
    kind: TransportKind,
    addrs: &[SocketAddr],
    secret: Secret,
    timeout: Duration,
) -> Result<Selected, SelectError> {
    let tcp = |why: String| -> Result<Selected, SelectError> {
        Ok(Selected {
            transport: Box::new(TcpTransport::discover(addrs, secret.clone(), timeout)?),
            reason: why,
        })
    };
    let shm = |mixed: bool| -> Result<Selected, ShmUnavailable> {
        let t = if mixed {
            ShmTransport::discover_mixed(addrs, secret.clone(), timeout)?
        } else {
            ShmTransport::discover(addrs, secret.clone(), timeout)?
        };
        Ok(Selected {
            reason: t.describe(),
            transport: Box::new(t),
        })
    };
    match kind {
        TransportKind::Tcp => tcp("tcp (as asked)".into()),
        TransportKind::Shm => match shm(false) {
            Ok(s) => Ok(s),
            Err(ShmUnavailable::NotLocal(reason)) => Err(SelectError::ShmUnavailable { reason }),
            Err(ShmUnavailable::Transport(e)) => Err(e.into()),
        },
        TransportKind::Verbs => match open_verbs(addrs, &secret, timeout) {
            Ok(s) => Ok(s),
            Err(VerbsFailure::NoDevice(reason)) => Err(SelectError::VerbsUnavailable { reason }),
            Err(VerbsFailure::Transport(e)) => Err(e.into()),
        },
        TransportKind::Auto => auto(addrs, &secret, timeout, shm, tcp),
    }
}

/// `auto`: shm when every node is on this host; else verbs when they serve every node;
/// else shm for the nodes on this host and TCP for the others (TCP alone when none is
/// here). The reason says what serves which nodes, and why.
fn auto(
    addrs: &[SocketAddr],
    secret: &Secret,
    timeout: Duration,
    shm: impl Fn(bool) -> Result<Selected, ShmUnavailable>,
    tcp: impl Fn(String) -> Result<Selected, SelectError>,
) -> Result<Selected, SelectError> {
    let (mixed, not_local) = match shm(true) {
        Ok(mut s) if s.transport.name() == "shm" => {
            s.reason = format!("auto: {}", s.reason);
            return Ok(s);
        }
        Ok(s) => {
            let why = s.reason.clone();
            (Some(s), why)
        }
        Err(ShmUnavailable::NotLocal(reason)) => (None, reason),
        Err(ShmUnavailable::Transport(e)) => return Err(e.into()),
    };
    let no_verbs = match open_verbs(addrs, secret, timeout) {
        Ok(mut s) => {
            s.reason = format!("auto: {} (not shm: {not_local})", s.reason);
            return Ok(s);
        }
        Err(VerbsFailure::NoDevice(reason)) => reason,
        Err(VerbsFailure::Transport(e)) => format!("verbs failed: {e}"),
    };
    match mixed {
        Some(mut s) => {
            s.reason = format!("auto: {}; not verbs, because {no_verbs}", s.reason);
            Ok(s)
        }
        None => tcp(format!(
            "auto: tcp, because {no_verbs} (and not shm: {not_local})"
        )),
    }
}

enum VerbsFailure {
    NoDevice(String),
    #[cfg_attr(not(feature = "verbs"), allow(dead_code))]
    Transport(TransportError),
}

#[cfg(feature = "verbs")]
fn open_verbs(
    addrs: &[SocketAddr],
    secret: &Secret,
    timeout: Duration,
) -> Result<Selected, VerbsFailure> {
    use super::verbs::{device::VerbsConfig, VerbsTransport};
    let cfg = VerbsConfig::from_env().map_err(VerbsFailure::NoDevice)?;
    super::verbs::device::probe(&cfg).map_err(VerbsFailure::NoDevice)?;
    let t = VerbsTransport::discover(addrs, secret.clone(), timeout, &cfg)
        .map_err(VerbsFailure::Transport)?;
    // One session up front: a node without RDMA is found now, not at the first fault.
    drop(t.connect().map_err(VerbsFailure::Transport)?);
    let reason = format!("verbs over {}", t.describe());
    Ok(Selected {
        transport: Box::new(t),
        reason,
    })
}

#[cfg(not(feature = "verbs"))]
fn open_verbs(
    _addrs: &[SocketAddr],
    _secret: &Secret,
    _timeout: Duration,
) -> Result<Selected, VerbsFailure> {
    Err(VerbsFailure::NoDevice(verbs_device().unwrap_err()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_print() {
        for k in [
            TransportKind::Tcp,
            TransportKind::Shm,
            TransportKind::Verbs,
            TransportKind::Auto,
        ] {
            assert_eq!(k.to_string().parse::<TransportKind>(), Ok(k));
        }
        assert!("infiniband".parse::<TransportKind>().is_err());
    }
}
