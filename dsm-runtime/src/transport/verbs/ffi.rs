//! Every libibverbs call of the project, wrapped in types that own what the call
//! created: [`Context`] (an open device), [`ProtectionDomain`], [`CompletionQueue`],
//! [`MemoryRegion`] (a registration of memory someone else owns), [`RegisteredBuffer`]
//! (memory we own, registered) and [`QueuePair`]. Children hold an `Arc` of their parent,
//! so teardown runs in the order verbs requires; `Drop` checks that it succeeded.
//!
//! The binding is `rdma-sys` (bindgen over Debian's rdma-core headers); nothing outside
//! this file names it.

use rdma_sys as sys;
use std::ffi::CStr;
use std::io;
use std::ptr::NonNull;
use std::sync::Arc;

/// `IBV_LINK_LAYER_ETHERNET` (an anonymous enum in verbs.h that bindgen does not name).
const LINK_LAYER_ETHERNET: u8 = 2;

/// A verbs call failed.
#[derive(Debug, thiserror::Error)]
pub enum VerbsError {
    /// A verbs call returned an error.
    #[error("{call} on {device}: {source}")]
    Call {
        /// The failing verb.
        call: &'static str,
        /// Device name.
        device: String,
        /// errno.
        source: io::Error,
    },
    /// No usable device.
    #[error("no RDMA device: {0}")]
    NoDevice(String),
}

fn last_error(call: &'static str, device: &str) -> VerbsError {
    VerbsError::Call {
        call,
        device: device.to_string(),
        source: io::Error::last_os_error(),
    }
}

fn rc_error(call: &'static str, device: &str, rc: i32) -> VerbsError {
    // Verbs return a positive errno, or -1 with errno set, depending on the provider.
    let source = if rc > 0 {
        io::Error::from_raw_os_error(rc)
    } else {
        io::Error::last_os_error()
    };
    VerbsError::Call {
        call,
        device: device.to_string(),
        source,
    }
}

/// Teardown verbs fail only on a bug (an object still in use): say so loudly in every
/// build, and stop debug builds.
fn check_teardown(call: &str, device: &str, rc: i32) {
    if rc != 0 {
        let e = if rc > 0 {
            io::Error::from_raw_os_error(rc)
        } else {
            io::Error::last_os_error()
        };
        eprintln!("dsm: {call} on {device} failed: {e}");
        debug_assert!(false, "{call} on {device} failed: {e}");
    }
}

/// What a port offers.
#[derive(Debug, Clone, Copy)]
pub struct PortInfo {
    /// Port number (1-based).
    pub port: u8,
    /// `IBV_PORT_ACTIVE`.
    pub active: bool,
    /// Its LID (InfiniBand; 0 on RoCE).
    pub lid: u16,
    /// Active MTU as the `ibv_mtu` enum value (1 = 256 B ... 5 = 4096 B).
    pub mtu: u32,
    /// Ethernet link layer (RoCE): addressing by GID, with a GRH.
    pub ethernet: bool,
    /// GID table length.
    pub gid_table_len: i32,
}

/// The device capabilities the transport depends on.
#[derive(Debug, Clone, Copy)]
pub struct DeviceCaps {
    /// Atomics supported at all (`atomic_cap != IBV_ATOMIC_NONE`).
    pub atomics: bool,
    /// Outstanding READs/atomics a QP may have as responder.
    pub max_qp_rd_atom: u8,
    /// Outstanding READs/atomics a QP may have as initiator.
    pub max_qp_init_rd_atom: u8,
    /// Most work requests per queue.
    pub max_qp_wr: u32,
    /// On-demand paging for RC READ, WRITE and atomics.
    pub odp_rc: bool,
    /// Physical ports.
    pub ports: u8,
}

/// Names of the devices libibverbs sees. `ibv_get_device_list` failing (ENOSYS on a
/// kernel without InfiniBand support) or returning none are both "no device".
pub fn device_names() -> Result<Vec<String>, VerbsError> {
    let mut n: i32 = 0;
    // SAFETY: `n` is a valid out-pointer; the list is freed below.
    let list = unsafe { sys::ibv_get_device_list(&mut n) };
    if list.is_null() {
        return Err(VerbsError::NoDevice(format!(
            "ibv_get_device_list: {}",
            io::Error::last_os_error()
        )));
    }
    let mut names = Vec::with_capacity(n.max(0) as usize);
    for i in 0..n.max(0) as usize {
        // SAFETY: the list holds `n` valid device pointers until freed.
        let name = unsafe { CStr::from_ptr(sys::ibv_get_device_name(*list.add(i))) };
        names.push(name.to_string_lossy().into_owned());
    }
    // SAFETY: freeing the list returned above, once.
    unsafe { sys::ibv_free_device_list(list) };
    if names.is_empty() {
        return Err(VerbsError::NoDevice(
            "ibv_get_device_list found no device".into(),
        ));
    }
    Ok(names)
}

/// An open device.
#[derive(Debug)]
pub struct Context {
    ctx: NonNull<sys::ibv_context>,
    name: String,
}

// SAFETY: libibverbs contexts are thread-safe; the pointer is owned and freed once.
unsafe impl Send for Context {}
// SAFETY: as above.
unsafe impl Sync for Context {}

impl Context {
    /// Opens device `name`.
    pub fn open(name: &str) -> Result<Arc<Context>, VerbsError> {
        let mut n: i32 = 0;
        // SAFETY: `n` is a valid out-pointer; the list is freed below.
        let list = unsafe { sys::ibv_get_device_list(&mut n) };
        if list.is_null() {
            return Err(VerbsError::NoDevice(format!(
                "ibv_get_device_list: {}",
                io::Error::last_os_error()
            )));
        }
        let mut ctx = std::ptr::null_mut();
        let mut found = false;
        for i in 0..n.max(0) as usize {
            // SAFETY: the list holds `n` valid device pointers until freed.
            let dev = unsafe { *list.add(i) };
            // SAFETY: as above.
            let dn = unsafe { CStr::from_ptr(sys::ibv_get_device_name(dev)) };
            if dn.to_bytes() == name.as_bytes() {
                found = true;
                // SAFETY: `dev` is valid while the list is; the context outlives the list.
                ctx = unsafe { sys::ibv_open_device(dev) };
                break;
            }
        }
        let err = last_error("ibv_open_device", name);
        // SAFETY: freeing the list returned above, once; open contexts stay valid.
        unsafe { sys::ibv_free_device_list(list) };
        if !found {
            return Err(VerbsError::NoDevice(format!("device {name} not found")));
        }
        let ctx = NonNull::new(ctx).ok_or(err)?;
        Ok(Arc::new(Context {
            ctx,
            name: name.to_string(),
        }))
    }

    /// Device name (`rxe0`, `mlx5_0`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Capabilities.
    pub fn caps(&self) -> Result<DeviceCaps, VerbsError> {
        // SAFETY: plain-data struct; all-zero is a valid value.
        let mut attr: sys::ibv_device_attr_ex = unsafe { std::mem::zeroed() };
        // SAFETY: valid context, null input (allowed), attr is a valid out-pointer.
        let rc =
            unsafe { sys::ibv_query_device_ex(self.ctx.as_ptr(), std::ptr::null(), &mut attr) };
        if rc != 0 {
            return Err(rc_error("ibv_query_device_ex", &self.name, rc));
        }
        let a = &attr.orig_attr;
        let rc_caps = attr.odp_caps.per_transport_caps.rc_odp_caps;
        let need = sys::ibv_odp_transport_cap_bits::IBV_ODP_SUPPORT_READ.0
            | sys::ibv_odp_transport_cap_bits::IBV_ODP_SUPPORT_WRITE.0
            | sys::ibv_odp_transport_cap_bits::IBV_ODP_SUPPORT_ATOMIC.0;
        let odp = attr.odp_caps.general_caps
            & u64::from(sys::ibv_odp_general_caps::IBV_ODP_SUPPORT.0)
            != 0
            && rc_caps & need == need;
        Ok(DeviceCaps {
            atomics: a.atomic_cap != sys::ibv_atomic_cap::IBV_ATOMIC_NONE,
            max_qp_rd_atom: a.max_qp_rd_atom.clamp(0, 255) as u8,
            max_qp_init_rd_atom: a.max_qp_init_rd_atom.clamp(0, 255) as u8,
            max_qp_wr: a.max_qp_wr.max(0) as u32,
            odp_rc: odp,
            ports: a.phys_port_cnt,
        })
    }

    /// Port attributes.
    pub fn port(&self, port: u8) -> Result<PortInfo, VerbsError> {
        // SAFETY: plain-data struct; all-zero is a valid value.
        let mut attr: sys::ibv_port_attr = unsafe { std::mem::zeroed() };
        // SAFETY: valid context and out-pointer.
        let rc = unsafe { sys::___ibv_query_port(self.ctx.as_ptr(), port, &mut attr) };
        if rc != 0 {
            return Err(rc_error("ibv_query_port", &self.name, rc));
        }
        Ok(PortInfo {
            port,
            active: attr.state == sys::ibv_port_state::IBV_PORT_ACTIVE,
            lid: attr.lid,
            mtu: attr.active_mtu,
            ethernet: attr.link_layer == LINK_LAYER_ETHERNET,
            gid_table_len: attr.gid_tbl_len,
        })
    }

    /// GID `index` of `port`.
    pub fn gid(&self, port: u8, index: u8) -> Result<[u8; 16], VerbsError> {
        // SAFETY: plain-data union; all-zero is a valid value.
        let mut gid: sys::ibv_gid = unsafe { std::mem::zeroed() };
        // SAFETY: valid context and out-pointer.
        let rc = unsafe { sys::ibv_query_gid(self.ctx.as_ptr(), port, i32::from(index), &mut gid) };
        if rc != 0 {
            return Err(rc_error("ibv_query_gid", &self.name, rc));
        }
        // SAFETY: every bit pattern of the union is a valid byte array.
        Ok(unsafe { gid.raw })
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: closing the context opened in `open`, once; every child holds an Arc of
        // it, so none is left.
        let rc = unsafe { sys::ibv_close_device(self.ctx.as_ptr()) };
        check_teardown("ibv_close_device", &self.name, rc);
    }
}

/// A protection domain.
#[derive(Debug)]
pub struct ProtectionDomain {
    pd: NonNull<sys::ibv_pd>,
    ctx: Arc<Context>,
}

// SAFETY: verbs objects are thread-safe; owned pointer freed once.
unsafe impl Send for ProtectionDomain {}
// SAFETY: as above.
unsafe impl Sync for ProtectionDomain {}

impl ProtectionDomain {
    /// Allocates a PD on `ctx`.
    pub fn new(ctx: &Arc<Context>) -> Result<Arc<ProtectionDomain>, VerbsError> {
        // SAFETY: valid context.
        let pd = unsafe { sys::ibv_alloc_pd(ctx.ctx.as_ptr()) };
        let pd = NonNull::new(pd).ok_or_else(|| last_error("ibv_alloc_pd", &ctx.name))?;
        Ok(Arc::new(ProtectionDomain {
            pd,
            ctx: Arc::clone(ctx),
        }))
    }

    /// The device.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }
}

impl Drop for ProtectionDomain {
    fn drop(&mut self) {
        // SAFETY: the PD allocated in `new`; its MRs and QPs hold Arcs, so none is left.
        let rc = unsafe { sys::ibv_dealloc_pd(self.pd.as_ptr()) };
        check_teardown("ibv_dealloc_pd", &self.ctx.name, rc);
    }
}

/// Access rights of a registration.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    /// Peers may READ.
    pub remote_read: bool,
    /// Peers may WRITE.
    pub remote_write: bool,
    /// Peers may run atomics.
    pub remote_atomic: bool,
    /// On-demand paging: nothing pinned at registration.
    pub on_demand: bool,
}

impl Access {
    fn bits(self) -> u32 {
        use sys::ibv_access_flags as f;
        let mut b = f::IBV_ACCESS_LOCAL_WRITE.0;
        if self.remote_read {
            b |= f::IBV_ACCESS_REMOTE_READ.0;
        }
        if self.remote_write {
            b |= f::IBV_ACCESS_REMOTE_WRITE.0;
        }
        if self.remote_atomic {
            b |= f::IBV_ACCESS_REMOTE_ATOMIC.0;
        }
        if self.on_demand {
            b |= f::IBV_ACCESS_ON_DEMAND.0;
        }
        b
    }
}

/// A registration of memory that someone else owns.
#[derive(Debug)]
pub struct MemoryRegion {
    mr: NonNull<sys::ibv_mr>,
    pd: Arc<ProtectionDomain>,
}

// SAFETY: the registration is a kernel object; the pointer is owned and freed once.
unsafe impl Send for MemoryRegion {}
// SAFETY: as above; the struct is only read after creation.
unsafe impl Sync for MemoryRegion {}

impl MemoryRegion {
    /// Registers `[addr, addr + len)`.
    ///
    /// # Safety
    ///
    /// The range must be mapped for the whole life of the registration, and its owner
    /// must tolerate the device (and, with remote rights, peers) writing it at any time.
    pub unsafe fn register(
        pd: &Arc<ProtectionDomain>,
        addr: *mut u8,
        len: usize,
        access: Access,
    ) -> Result<MemoryRegion, VerbsError> {
        // SAFETY: valid PD; the caller keeps the range mapped (contract above). The
        // access bits never include IBV_ACCESS_OPTIONAL_RANGE, so the plain verb is right.
        let mr = unsafe { sys::ibv_reg_mr(pd.pd.as_ptr(), addr.cast(), len, access.bits() as i32) };
        let mr = NonNull::new(mr).ok_or_else(|| last_error("ibv_reg_mr", &pd.ctx.name))?;
        Ok(MemoryRegion {
            mr,
            pd: Arc::clone(pd),
        })
    }

    /// Local key.
    pub fn lkey(&self) -> u32 {
        // SAFETY: the MR is valid while self lives; lkey is set at creation.
        unsafe { (*self.mr.as_ptr()).lkey }
    }

    /// Remote key.
    pub fn rkey(&self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.mr.as_ptr()).rkey }
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // SAFETY: deregistering the MR created in `register`, once.
        let rc = unsafe { sys::ibv_dereg_mr(self.mr.as_ptr()) };
        check_teardown("ibv_dereg_mr", &self.pd.ctx.name, rc);
    }
}

/// Page-aligned anonymous memory we own, registered for local access only (bounce
/// buffers). It is never handed out as a Rust reference while the device may write it:
/// see `super::bounce`.
#[derive(Debug)]
pub struct RegisteredBuffer {
    // Declared before the mapping: deregistered before it is unmapped.
    mr: MemoryRegion,
    map: Mapping,
}

/// An anonymous mapping, unmapped on drop.
#[derive(Debug)]
struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `RegisteredBuffer::new`, whose
        // registration was dropped first.
        let rc = unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
        check_teardown("munmap (bounce buffer)", "-", rc);
    }
}

// SAFETY: owned memory; access goes through `&mut self` (see `super::bounce`).
unsafe impl Send for RegisteredBuffer {}

impl RegisteredBuffer {
    /// Maps and registers `len` bytes (rounded up to pages).
    pub fn new(pd: &Arc<ProtectionDomain>, len: usize) -> Result<RegisteredBuffer, VerbsError> {
        let len = len.div_ceil(4096) * 4096;
        // SAFETY: anonymous mapping at a kernel-chosen address; checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(last_error("mmap (bounce buffer)", &pd.ctx.name));
        }
        let map = Mapping {
            base: NonNull::new(p.cast::<u8>()).expect("mmap never returns null on success"),
            len,
        };
        let access = Access {
            remote_read: false,
            remote_write: false,
            remote_atomic: false,
            on_demand: false,
        };
        // SAFETY: the mapping lives as long as the registration (field order).
        let mr = unsafe { MemoryRegion::register(pd, map.base.as_ptr(), len, access)? };
        Ok(RegisteredBuffer { mr, map })
    }

    /// Start address.
    pub fn addr(&self) -> u64 {
        self.map.base.as_ptr() as u64
    }

    /// Pointer to byte `off`.
    pub fn ptr(&self, off: usize) -> *mut u8 {
        assert!(off <= self.map.len);
        // SAFETY: in bounds of the mapping (checked above).
        unsafe { self.map.base.as_ptr().add(off) }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.map.len
    }

    /// Never empty.
    pub fn is_empty(&self) -> bool {
        self.map.len == 0
    }

    /// Local key.
    pub fn lkey(&self) -> u32 {
        self.mr.lkey()
    }

    /// Gives up the memory and its registration without freeing either: for a buffer
    /// that may still be under a work request whose completion was never reaped.
    pub fn leak(self) {
        std::mem::forget(self);
    }
}

/// A completion queue.
#[derive(Debug)]
pub struct CompletionQueue {
    cq: NonNull<sys::ibv_cq>,
    ctx: Arc<Context>,
}

// SAFETY: verbs objects are thread-safe; owned pointer freed once.
unsafe impl Send for CompletionQueue {}
// SAFETY: as above.
unsafe impl Sync for CompletionQueue {}

/// One completion, decoded.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    /// The work request's id.
    pub wr_id: u64,
    /// `IBV_WC_SUCCESS` or not.
    pub ok: bool,
    /// `ibv_wc_status` value.
    pub status: u32,
    /// Provider-specific error.
    pub vendor_err: u32,
}

impl Completion {
    /// The status as libibverbs names it.
    pub fn status_text(&self) -> String {
        // SAFETY: ibv_wc_status_str returns a static string for any value.
        let s = unsafe { CStr::from_ptr(sys::ibv_wc_status_str(self.status)) };
        format!(
            "{} (status {}, vendor error {:#x})",
            s.to_string_lossy(),
            self.status,
            self.vendor_err
        )
    }
}

impl CompletionQueue {
    /// A CQ of at least `depth` entries.
    pub fn new(ctx: &Arc<Context>, depth: i32) -> Result<Arc<CompletionQueue>, VerbsError> {
        // SAFETY: valid context; no channel, no user context.
        let cq = unsafe {
            sys::ibv_create_cq(
                ctx.ctx.as_ptr(),
                depth,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        let cq = NonNull::new(cq).ok_or_else(|| last_error("ibv_create_cq", &ctx.name))?;
        Ok(Arc::new(CompletionQueue {
            cq,
            ctx: Arc::clone(ctx),
        }))
    }

    /// Polls up to `out.len()` completions; returns how many were written.
    pub fn poll(&self, out: &mut [Completion]) -> Result<usize, VerbsError> {
        const CHUNK: usize = 16;
        // SAFETY: plain-data array; all-zero is valid.
        let mut wc: [sys::ibv_wc; CHUNK] = unsafe { std::mem::zeroed() };
        let want = out.len().min(CHUNK) as i32;
        // SAFETY: valid CQ; `wc` holds `want` entries.
        let n = unsafe { sys::ibv_poll_cq(self.cq.as_ptr(), want, wc.as_mut_ptr()) };
        if n < 0 {
            return Err(rc_error("ibv_poll_cq", &self.ctx.name, -n));
        }
        for (o, w) in out.iter_mut().zip(&wc[..n as usize]) {
            *o = Completion {
                wr_id: w.wr_id,
                ok: w.status == sys::ibv_wc_status::IBV_WC_SUCCESS,
                status: w.status,
                vendor_err: w.vendor_err,
            };
        }
        Ok(n as usize)
    }
}

impl Drop for CompletionQueue {
    fn drop(&mut self) {
        // SAFETY: the CQ created in `new`; QPs using it hold Arcs, so none is left.
        let rc = unsafe { sys::ibv_destroy_cq(self.cq.as_ptr()) };
        check_teardown("ibv_destroy_cq", &self.ctx.name, rc);
    }
}

/// How a peer is reached: what each side of an RC connection tells the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Endpoint {
    /// QP number.
    pub qpn: u32,
    /// First packet sequence number.
    pub psn: u32,
    /// LID (InfiniBand).
    pub lid: u16,
    /// GID (RoCE; all zero on InfiniBand without a GRH).
    pub gid: [u8; 16],
    /// Active MTU (`ibv_mtu`).
    pub mtu: u32,
    /// Outstanding READs/atomics this side accepts as responder.
    pub rd_atomic: u8,
}

/// Path settings of an RC connection.
#[derive(Debug, Clone, Copy)]
pub struct PathConfig {
    /// Local port.
    pub port: u8,
    /// Local GID index (RoCE).
    pub gid_index: u8,
    /// Use a GRH (RoCE, or routed InfiniBand).
    pub global: bool,
    /// Local ACK timeout exponent: 4.096 us * 2^timeout.
    pub timeout: u8,
    /// Retries on timeout.
    pub retry_cnt: u8,
}

/// An RC queue pair.
#[derive(Debug)]
pub struct QueuePair {
    qp: NonNull<sys::ibv_qp>,
    _cq: Arc<CompletionQueue>,
    pd: Arc<ProtectionDomain>,
}

// SAFETY: verbs objects are thread-safe; owned pointer freed once.
unsafe impl Send for QueuePair {}
// SAFETY: as above.
unsafe impl Sync for QueuePair {}

/// A QP state change, for `modify`.
struct Modify {
    attr: sys::ibv_qp_attr,
    mask: u32,
}

impl QueuePair {
    /// Creates an RC QP with `send_depth` send entries, sharing `cq` for both queues.
    pub fn new_rc(
        pd: &Arc<ProtectionDomain>,
        cq: &Arc<CompletionQueue>,
        send_depth: u32,
    ) -> Result<QueuePair, VerbsError> {
        // SAFETY: plain-data struct; all-zero is a valid starting value.
        let mut init: sys::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        init.send_cq = cq.cq.as_ptr();
        init.recv_cq = cq.cq.as_ptr();
        init.cap.max_send_wr = send_depth;
        init.cap.max_recv_wr = 1;
        init.cap.max_send_sge = 1;
        init.cap.max_recv_sge = 1;
        init.qp_type = sys::ibv_qp_type::IBV_QPT_RC;
        init.sq_sig_all = 0;
        // SAFETY: valid PD and CQ; `init` is fully initialised.
        let qp = unsafe { sys::ibv_create_qp(pd.pd.as_ptr(), &mut init) };
        let qp = NonNull::new(qp).ok_or_else(|| last_error("ibv_create_qp", &pd.ctx.name))?;
        Ok(QueuePair {
            qp,
            _cq: Arc::clone(cq),
            pd: Arc::clone(pd),
        })
    }

    /// QP number.
    pub fn qpn(&self) -> u32 {
        // SAFETY: valid QP; qp_num is set at creation.
        unsafe { (*self.qp.as_ptr()).qp_num }
    }

    fn modify(&self, call: &'static str, mut m: Modify) -> Result<(), VerbsError> {
        // SAFETY: valid QP; `attr` initialised for every bit in `mask`.
        let rc = unsafe { sys::ibv_modify_qp(self.qp.as_ptr(), &mut m.attr, m.mask as i32) };
        if rc != 0 {
            return Err(rc_error(call, &self.pd.ctx.name, rc));
        }
        Ok(())
    }

    fn blank(state: sys::ibv_qp_state::Type) -> Modify {
        // SAFETY: plain-data struct; all-zero is a valid starting value.
        let mut attr: sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = state;
        Modify {
            attr,
            mask: sys::ibv_qp_attr_mask::IBV_QP_STATE.0,
        }
    }

    /// RESET -> INIT with remote READ/WRITE/atomic rights (the node's side needs them;
    /// harmless on the client's).
    pub fn to_init(&self, port: u8) -> Result<(), VerbsError> {
        use sys::ibv_qp_attr_mask as m;
        let mut x = Self::blank(sys::ibv_qp_state::IBV_QPS_INIT);
        x.attr.pkey_index = 0;
        x.attr.port_num = port;
        x.attr.qp_access_flags = Access {
            remote_read: true,
            remote_write: true,
            remote_atomic: true,
            on_demand: false,
        }
        .bits();
        x.mask |= m::IBV_QP_PKEY_INDEX.0 | m::IBV_QP_PORT.0 | m::IBV_QP_ACCESS_FLAGS.0;
        self.modify("ibv_modify_qp(INIT)", x)
    }

    /// INIT -> RTR towards `remote`, accepting `dest_rd_atomic` outstanding READs/atomics
    /// from it as responder.
    pub fn to_rtr(
        &self,
        path: &PathConfig,
        remote: &Endpoint,
        local_mtu: u32,
        dest_rd_atomic: u8,
    ) -> Result<(), VerbsError> {
        use sys::ibv_qp_attr_mask as m;
        let mut x = Self::blank(sys::ibv_qp_state::IBV_QPS_RTR);
        x.attr.path_mtu = local_mtu.min(remote.mtu);
        x.attr.dest_qp_num = remote.qpn;
        x.attr.rq_psn = remote.psn;
        x.attr.max_dest_rd_atomic = dest_rd_atomic.max(1);
        x.attr.min_rnr_timer = 12;
        x.attr.ah_attr.dlid = remote.lid;
        x.attr.ah_attr.sl = 0;
        x.attr.ah_attr.src_path_bits = 0;
        x.attr.ah_attr.port_num = path.port;
        if path.global {
            x.attr.ah_attr.is_global = 1;
            x.attr.ah_attr.grh.dgid.raw = remote.gid;
            x.attr.ah_attr.grh.sgid_index = path.gid_index;
            x.attr.ah_attr.grh.hop_limit = 64;
            x.attr.ah_attr.grh.flow_label = 0;
            x.attr.ah_attr.grh.traffic_class = 0;
        }
        x.mask |= m::IBV_QP_AV.0
            | m::IBV_QP_PATH_MTU.0
            | m::IBV_QP_DEST_QPN.0
            | m::IBV_QP_RQ_PSN.0
            | m::IBV_QP_MAX_DEST_RD_ATOMIC.0
            | m::IBV_QP_MIN_RNR_TIMER.0;
        self.modify("ibv_modify_qp(RTR)", x)
    }

    /// RTR -> RTS, with `rd_atomic` outstanding READs/atomics as initiator.
    pub fn to_rts(&self, path: &PathConfig, psn: u32, rd_atomic: u8) -> Result<(), VerbsError> {
        use sys::ibv_qp_attr_mask as m;
        let mut x = Self::blank(sys::ibv_qp_state::IBV_QPS_RTS);
        x.attr.timeout = path.timeout;
        x.attr.retry_cnt = path.retry_cnt;
        x.attr.rnr_retry = 7;
        x.attr.sq_psn = psn;
        x.attr.max_rd_atomic = rd_atomic.max(1);
        x.mask |= m::IBV_QP_TIMEOUT.0
            | m::IBV_QP_RETRY_CNT.0
            | m::IBV_QP_RNR_RETRY.0
            | m::IBV_QP_SQ_PSN.0
            | m::IBV_QP_MAX_QP_RD_ATOMIC.0;
        self.modify("ibv_modify_qp(RTS)", x)
    }

    /// Moves the QP to ERR: outstanding work requests complete with flush errors.
    pub fn to_error(&self) -> Result<(), VerbsError> {
        self.modify(
            "ibv_modify_qp(ERR)",
            Self::blank(sys::ibv_qp_state::IBV_QPS_ERR),
        )
    }

    /// Posts a chain of work requests with one doorbell.
    ///
    /// # Safety
    ///
    /// Every scatter/gather entry must point into a registered buffer of this QP's PD
    /// that stays valid and untouched until the completion of the request (or of a later
    /// signalled one on this QP) is reaped; the chain must be well formed.
    pub unsafe fn post_send(&self, wr: *mut sys::ibv_send_wr) -> Result<(), VerbsError> {
        let mut bad: *mut sys::ibv_send_wr = std::ptr::null_mut();
        // SAFETY: valid QP; the chain and its buffers are the caller's contract.
        let rc = unsafe { sys::ibv_post_send(self.qp.as_ptr(), wr, &mut bad) };
        if rc != 0 {
            return Err(rc_error("ibv_post_send", &self.pd.ctx.name, rc));
        }
        Ok(())
    }
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        // SAFETY: the QP created in `new_rc`, once. Destroying it stops the device from
        // touching the buffers of any request still queued on it.
        let rc = unsafe { sys::ibv_destroy_qp(self.qp.as_ptr()) };
        check_teardown("ibv_destroy_qp", &self.pd.ctx.name, rc);
    }
}

/// Work-request kinds the transport posts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// RDMA READ.
    Read,
    /// RDMA WRITE.
    Write,
    /// 8-byte compare-and-swap.
    CompareSwap,
}

impl Verb {
    /// Name for error messages.
    pub fn name(self) -> &'static str {
        match self {
            Verb::Read => "RDMA READ",
            Verb::Write => "RDMA WRITE",
            Verb::CompareSwap => "ATOMIC_CMP_AND_SWP",
        }
    }
}

/// A work request under construction; `sys` types stay in this file.
pub type SendWr = sys::ibv_send_wr;
/// A scatter/gather entry.
pub type Sge = sys::ibv_sge;

/// A zeroed work request.
pub fn blank_wr() -> SendWr {
    // SAFETY: plain-data struct (pointers, integers, unions of those); all-zero is valid.
    unsafe { std::mem::zeroed() }
}

/// A zeroed scatter/gather entry.
pub fn blank_sge() -> Sge {
    Sge {
        addr: 0,
        length: 0,
        lkey: 0,
    }
}

/// Requests a completion for `wr`.
pub fn set_signaled(wr: &mut SendWr) {
    wr.send_flags |= sys::ibv_send_flags::IBV_SEND_SIGNALED.0;
}

/// Fills `wr` as `verb` of `sge` against `remote_addr`/`rkey`; `signaled` requests a
/// completion. For compare-and-swap, `cas` is `(expected, new)`.
#[allow(clippy::too_many_arguments)]
pub fn set_wr(
    wr: &mut SendWr,
    wr_id: u64,
    sge: *mut Sge,
    verb: Verb,
    remote_addr: u64,
    rkey: u32,
    signaled: bool,
    cas: (u64, u64),
) {
    wr.wr_id = wr_id;
    wr.next = std::ptr::null_mut();
    wr.sg_list = sge;
    wr.num_sge = 1;
    wr.send_flags = if signaled {
        sys::ibv_send_flags::IBV_SEND_SIGNALED.0
    } else {
        0
    };
    match verb {
        Verb::Read | Verb::Write => {
            wr.opcode = if verb == Verb::Read {
                sys::ibv_wr_opcode::IBV_WR_RDMA_READ
            } else {
                sys::ibv_wr_opcode::IBV_WR_RDMA_WRITE
            };
            wr.wr.rdma = sys::rdma_t { remote_addr, rkey };
        }
        Verb::CompareSwap => {
            wr.opcode = sys::ibv_wr_opcode::IBV_WR_ATOMIC_CMP_AND_SWP;
            wr.wr.atomic = sys::atomic_t {
                remote_addr,
                compare_add: cas.0,
                swap: cas.1,
                rkey,
            };
        }
    }
}
