//! The in-process image engine (helper H10's branch `h10-ckpt-image`). Until that branch
//! is merged this module only holds the two entry points the job side calls, so that it
//! builds: address randomisation is really disabled, and the restarter says that the
//! engine is missing. The merge replaces this file and `restart.rs` with the engine.

pub mod restart;

/// Turns address randomisation off for this process and what it executes next
/// (`personality(ADDR_NO_RANDOMIZE)`): called between fork and exec of a checkpointable
/// program, so that its libraries and vDSO come back at the same addresses.
pub fn disable_aslr() -> std::io::Result<()> {
    // SAFETY: personality(0xffffffff) only queries the current persona.
    let current = unsafe { libc::personality(0xffff_ffff) };
    if current < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: personality with a flag added to the current persona; no memory involved.
    if unsafe { libc::personality((current | libc::ADDR_NO_RANDOMIZE) as libc::c_ulong) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
