//! `libdsm_preload.so`: runs an unmodified program's heap on pooled memory.
//!
//! Loaded with `LD_PRELOAD` by `dsmrun`, it reads the job from `DSM_*` variables at load
//! time, claims this process's slot of the global space, starts the runtime (fault
//! handlers, reclaimer) over it, and makes the slot the program's heap ([`heap`]: mimalloc
//! arenas for small objects, extents of our own ([`large`]) for blocks of 1 GiB and up).
//! From then on `malloc` and friends ([`alloc`]), and large anonymous `mmap`s ([`mmap`]),
//! are served from the global range; [`route`] says who serves what, and [`process`] covers
//! start-up, `fork` and exit. A process started without `DSM_NODES` runs on libc as if
//! the library were not there.

mod alloc;
mod heap;
mod large;
mod mmap;
mod process;
mod route;

// Start-up and exit hooks. The loader runs a preloaded library's initialisers after
// libc's and before the program's; its finalisers after the program's `atexit` handlers.
#[used]
#[link_section = ".init_array"]
static ON_LOAD: extern "C" fn() = process::on_load;

#[used]
#[link_section = ".fini_array"]
static ON_EXIT: extern "C" fn() = process::on_exit;
