//! The memory node's RDMA side (cargo feature `verbs`).
//!
//! On the first `verbs-connect` call the node opens its RDMA device and registers its
//! whole region as one memory region with remote READ, WRITE and atomic rights; TCP-only
//! jobs never pay for that. Each call then creates one RC queue pair, brings it to RTS
//! towards the caller's and answers with its QP details, the region's address and rkey.
//! The queue pair belongs to the TCP connection that asked for it and dies with it; the
//! node's CPU does nothing per operation.
//!
//! Registration and memory: with on-demand paging (ODP: mlx5 and other real NICs that
//! report RC READ/WRITE/atomic ODP support) nothing is pinned and the region stays as
//! lazy as over TCP. Without it (Soft-RoCE on the kernels we test; older NICs),
//! `ibv_reg_mr` pins every page of the region, which for a private anonymous mapping
//! means allocating it: the region must then fit in the node's RAM and `RLIMIT_MEMLOCK`.
//! The node says which case applies when it registers (and in `stats`).

use super::region::Region;
use crate::transport::verbs::device::{Rdma, VerbsConfig};
use crate::transport::verbs::ffi::{Access, CompletionQueue, MemoryRegion, QueuePair};
use crate::transport::verbs::{ConnectReply, ConnectRequest, CONNECT_CALL};
use std::sync::{Arc, OnceLock};

/// Most queue pairs one TCP connection may own (a session needs one per node).
pub const MAX_QPS_PER_CONNECTION: usize = 64;

/// The node's device, protection domain and region registration, set up on first use.
#[derive(Debug, Default)]
pub struct NodeVerbs {
    state: OnceLock<Result<NodeRdma, String>>,
}

#[derive(Debug)]
struct NodeRdma {
    // Field order is teardown order: registration before the PD inside `rdma`.
    mr: MemoryRegion,
    cq: Arc<CompletionQueue>,
    rdma: Rdma,
    on_demand: bool,
    region_addr: u64,
}

impl NodeVerbs {
    /// The prefix of the control call this module serves.
    pub fn is_connect_call(msg: &[u8]) -> bool {
        msg.starts_with(CONNECT_CALL.as_bytes())
            && msg.get(CONNECT_CALL.len()).is_none_or(|b| *b == b' ')
    }

    /// Serves a `verbs-connect` call: returns the new queue pair (owned by the caller's
    /// connection) and the JSON answer, or a message for the rejection.
    ///
    /// # Safety
    ///
    /// `region` must stay mapped for as long as `self` lives (the registration made on
    /// the first call covers it), and every call must pass the same region.
    pub unsafe fn accept(
        &self,
        id: u16,
        region: &Region,
        msg: &[u8],
    ) -> Result<(QueuePair, Vec<u8>), String> {
        let body = msg.get(CONNECT_CALL.len() + 1..).unwrap_or(&[]);
        let req: ConnectRequest =
            serde_json::from_slice(body).map_err(|e| format!("bad {CONNECT_CALL} request: {e}"))?;
        if req.node != id {
            return Err(format!("this is node {id}, not node {}", req.node));
        }
        let st = self
            .state
            // SAFETY: forwarded from this function's contract.
            .get_or_init(|| unsafe { NodeRdma::open(id, region) })
            .as_ref()
            .map_err(|e| format!("node {id} has no usable RDMA device: {e}"))?;
        let r = &st.rdma;
        let fail = |e: crate::transport::verbs::ffi::VerbsError| format!("node {id}: {e}");
        let qp = QueuePair::new_rc(&r.pd, &st.cq, 1).map_err(fail)?;
        qp.to_init(r.path.port).map_err(fail)?;
        let dest_rd = r.caps.max_qp_rd_atom.clamp(1, 16);
        qp.to_rtr(&r.path, &req.endpoint, r.port.mtu, dest_rd)
            .map_err(fail)?;
        let psn = {
            let mut b = [0u8; 4];
            let _ = getrandom::getrandom(&mut b);
            u32::from_ne_bytes(b) & 0x00ff_ffff
        };
        qp.to_rts(&r.path, psn, 1).map_err(fail)?;
        let reply = ConnectReply {
            endpoint: r.endpoint(qp.qpn(), psn, dest_rd),
            rkey: st.mr.rkey(),
            addr: st.region_addr,
            region_bytes: region.len(),
            atomics: r.caps.atomics,
            on_demand: st.on_demand,
            device: r.describe(),
        };
        let answer = serde_json::to_vec(&reply).expect("plain struct serialises");
        Ok((qp, answer))
    }

    /// RDMA state for the node's `stats` call.
    pub fn stats(&self) -> serde_json::Value {
        match self.state.get() {
            None => serde_json::json!({"state": "not opened (no verbs client yet)"}),
            Some(Err(e)) => serde_json::json!({"state": "unavailable", "error": e}),
            Some(Ok(st)) => serde_json::json!({
                "state": "registered",
                "device": st.rdma.describe(),
                "on_demand_paging": st.on_demand,
                "atomics": st.rdma.caps.atomics,
            }),
        }
    }
}

impl NodeRdma {
    /// # Safety
    ///
    /// `region` outlives the returned registration.
    unsafe fn open(id: u16, region: &Region) -> Result<NodeRdma, String> {
        let cfg = VerbsConfig::from_env()?;
        let rdma = Rdma::open(&cfg).map_err(|e| e.to_string())?;
        let on_demand = rdma.caps.odp_rc;
        let base = region
            .ptr(0, region.len())
            .expect("whole region is in bounds");
        let access = Access {
            remote_read: true,
            remote_write: true,
            remote_atomic: rdma.caps.atomics,
            on_demand,
        };
        let before = region.resident_bytes();
        let t0 = std::time::Instant::now();
        // SAFETY: the region outlives the registration (this function's contract).
        let mr = unsafe { MemoryRegion::register(&rdma.pd, base, region.len() as usize, access) }
            .map_err(|e| {
            format!(
                "{e} (registering the {}-byte region{}; without on-demand paging the \
                     whole region is pinned: lower --memory or raise the memlock limit)",
                region.len(),
                if on_demand { " with ODP" } else { "" }
            )
        })?;
        let after = region.resident_bytes();
        eprintln!(
            "dsm-node {id}: RDMA on {}: region of {} bytes registered in {} ms, on-demand \
             paging {}; resident {} -> {} bytes{}",
            rdma.describe(),
            region.len(),
            t0.elapsed().as_millis(),
            if on_demand { "yes" } else { "no" },
            before,
            after,
            if on_demand { "" } else { " (pinned)" }
        );
        let cq = CompletionQueue::new(rdma.pd.context(), 16).map_err(|e| e.to_string())?;
        Ok(NodeRdma {
            mr,
            cq,
            rdma,
            on_demand,
            region_addr: base as u64,
        })
    }
}
