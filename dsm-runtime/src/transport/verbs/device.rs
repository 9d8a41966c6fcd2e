//! Choosing and opening the RDMA device, port and GID, for the program and the node alike.

use super::ffi::{
    self, Context, DeviceCaps, Endpoint, PathConfig, PortInfo, ProtectionDomain, VerbsError,
};
use std::sync::Arc;

/// Where and how to use RDMA, from `DSM_RDMA_*` environment variables.
///
/// | variable | meaning | default |
/// | --- | --- | --- |
/// | `DSM_RDMA_DEVICE` | device name (`mlx5_0`, `rxe0`) | first device with an active port |
/// | `DSM_RDMA_PORT` | port number | first active port |
/// | `DSM_RDMA_GID_INDEX` | GID index (RoCE) | the RoCE v2 GID of an IPv4 address |
/// | `DSM_RDMA_QP_TIMEOUT` | ACK timeout exponent, 4.096 us * 2^n | 17 (0.5 s) |
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerbsConfig {
    /// Device name.
    pub device: Option<String>,
    /// Port.
    pub port: Option<u8>,
    /// GID index.
    pub gid_index: Option<u8>,
    /// QP ACK timeout exponent.
    pub qp_timeout: Option<u8>,
}

/// QP ACK timeout exponent when not configured: 0.5 s. Soft-RoCE under emulation
/// retransmits with the 67 ms that `ibv_rc_pingpong` uses even on a lossless link.
pub const DEFAULT_QP_TIMEOUT: u8 = 17;

impl VerbsConfig {
    /// Reads `DSM_RDMA_*`; a malformed value is an error naming the variable.
    pub fn from_env() -> Result<VerbsConfig, String> {
        let num = |name: &str, max: u8| -> Result<Option<u8>, String> {
            match std::env::var(name) {
                Err(_) => Ok(None),
                Ok(v) => match v.trim().parse::<u8>() {
                    Ok(n) if n <= max => Ok(Some(n)),
                    _ => Err(format!("{name}={v}: expected a number from 0 to {max}")),
                },
            }
        };
        Ok(VerbsConfig {
            device: std::env::var("DSM_RDMA_DEVICE")
                .ok()
                .filter(|s| !s.is_empty()),
            port: num("DSM_RDMA_PORT", 255)?,
            gid_index: num("DSM_RDMA_GID_INDEX", 255)?,
            qp_timeout: num("DSM_RDMA_QP_TIMEOUT", 31)?,
        })
    }
}

/// An open device with its protection domain, chosen port and GID.
#[derive(Debug)]
pub struct Rdma {
    /// Protection domain (holds the context).
    pub pd: Arc<ProtectionDomain>,
    /// Capabilities.
    pub caps: DeviceCaps,
    /// The port used.
    pub port: PortInfo,
    /// The GID used (RoCE) and its index.
    pub gid: [u8; 16],
    /// Path settings for QPs.
    pub path: PathConfig,
}

impl Rdma {
    /// Opens the configured device, or the first one with an active port.
    pub fn open(cfg: &VerbsConfig) -> Result<Rdma, VerbsError> {
        let names = ffi::device_names()?;
        let candidates: Vec<String> = match &cfg.device {
            Some(d) if names.contains(d) => vec![d.clone()],
            Some(d) => {
                return Err(VerbsError::NoDevice(format!(
                    "DSM_RDMA_DEVICE={d} not found (devices: {})",
                    names.join(", ")
                )))
            }
            None => names,
        };
        let mut why = Vec::new();
        for name in &candidates {
            match Self::open_one(name, cfg) {
                Ok(r) => return Ok(r),
                Err(e) => why.push(e.to_string()),
            }
        }
        Err(VerbsError::NoDevice(why.join("; ")))
    }

    fn open_one(name: &str, cfg: &VerbsConfig) -> Result<Rdma, VerbsError> {
        let ctx = Context::open(name)?;
        let caps = ctx.caps()?;
        let ports: Vec<u8> = match cfg.port {
            Some(p) => vec![p],
            None => (1..=caps.ports.max(1)).collect(),
        };
        let mut port = None;
        for p in ports {
            let info = ctx.port(p)?;
            if info.active {
                port = Some(info);
                break;
            }
        }
        let port = port.ok_or_else(|| {
            VerbsError::NoDevice(format!(
                "{name}: no active port (ibv_query_port: state is not ACTIVE)"
            ))
        })?;
        let (gid_index, gid) = choose_gid(&ctx, &port, cfg.gid_index)?;
        let pd = ProtectionDomain::new(&ctx)?;
        Ok(Rdma {
            pd,
            caps,
            port,
            gid,
            path: PathConfig {
                port: port.port,
                gid_index,
                global: port.ethernet,
                timeout: cfg.qp_timeout.unwrap_or(DEFAULT_QP_TIMEOUT),
                retry_cnt: 7,
            },
        })
    }

    /// Device name.
    pub fn name(&self) -> &str {
        self.pd.context().name()
    }

    /// What this side tells its peer about a QP.
    pub fn endpoint(&self, qpn: u32, psn: u32, rd_atomic: u8) -> Endpoint {
        Endpoint {
            qpn,
            psn,
            lid: self.port.lid,
            gid: self.gid,
            mtu: self.port.mtu,
            rd_atomic,
        }
    }

    /// One line for logs: device, port, GID.
    pub fn describe(&self) -> String {
        format!(
            "{} port {} ({}), GID index {} {}",
            self.name(),
            self.port.port,
            if self.port.ethernet {
                "RoCE"
            } else {
                "InfiniBand"
            },
            self.path.gid_index,
            gid_text(&self.gid)
        )
    }
}

/// A GID as text: dotted IPv4 when IPv4-mapped, else hex groups.
pub fn gid_text(g: &[u8; 16]) -> String {
    if ipv4_mapped(g) {
        format!("::ffff:{}.{}.{}.{}", g[12], g[13], g[14], g[15])
    } else {
        std::net::Ipv6Addr::from(*g).to_string()
    }
}

fn ipv4_mapped(g: &[u8; 16]) -> bool {
    g[..10].iter().all(|b| *b == 0) && g[10] == 0xff && g[11] == 0xff
}

/// The GID type as the kernel names it (`RoCE v2`, `IB/RoCE v1`), when sysfs tells.
fn gid_type(dev: &str, port: u8, index: u8) -> Option<String> {
    let p = format!("/sys/class/infiniband/{dev}/ports/{port}/gid_attrs/types/{index}");
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

/// On InfiniBand, GID 0 (no GRH is used). On RoCE, the configured index, else the first
/// RoCE v2 GID of an IPv4 address (routable, what rxe and mlx5 offer at index 1 or 3).
fn choose_gid(
    ctx: &Context,
    port: &PortInfo,
    want: Option<u8>,
) -> Result<(u8, [u8; 16]), VerbsError> {
    if let Some(i) = want {
        return Ok((i, ctx.gid(port.port, i)?));
    }
    if !port.ethernet {
        return Ok((0, ctx.gid(port.port, 0)?));
    }
    let n = port.gid_table_len.clamp(0, 256) as usize;
    let mut fallback = None;
    for i in 0..n {
        let i = i as u8;
        let Ok(g) = ctx.gid(port.port, i) else {
            continue;
        };
        if g.iter().all(|b| *b == 0) {
            continue;
        }
        let v2 = gid_type(ctx.name(), port.port, i).is_none_or(|t| t == "RoCE v2");
        if v2 && ipv4_mapped(&g) {
            return Ok((i, g));
        }
        if v2 && fallback.is_none() {
            fallback = Some((i, g));
        }
    }
    fallback.ok_or_else(|| {
        VerbsError::NoDevice(format!(
            "{} port {}: no RoCE v2 GID (give the interface an IP address, or set DSM_RDMA_GID_INDEX)",
            ctx.name(),
            port.port
        ))
    })
}

/// Whether this machine has an active RDMA device, with a one-line description of the
/// one that would be used, or why there is none.
pub fn probe(cfg: &VerbsConfig) -> Result<String, String> {
    Rdma::open(cfg)
        .map(|r| r.describe())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gid_text_shows_ipv4_mapped_addresses() {
        let mut g = [0u8; 16];
        g[10] = 0xff;
        g[11] = 0xff;
        g[12..].copy_from_slice(&[192, 0, 2, 1]);
        assert_eq!(gid_text(&g), "::ffff:192.0.2.1");
        let mut l = [0u8; 16];
        l[0] = 0xfe;
        l[1] = 0x80;
        l[15] = 1;
        assert_eq!(gid_text(&l), "fe80::1");
    }

    #[test]
    fn no_device_on_this_host_is_an_error_not_a_crash() {
        // Hosts without RDMA (the project's CI) answer ENOSYS or an empty list; a machine
        // with a device answers Ok. Either way the probe returns.
        let _ = probe(&VerbsConfig::default());
    }
}
