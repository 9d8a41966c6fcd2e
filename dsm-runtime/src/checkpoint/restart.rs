//! The restarter's entry point (see `super`): replaced by the engine's on merge.

use std::path::Path;

/// Execs the program restored from `image` with the job's variables in `job_env`;
/// returns only on failure. Without the engine it always fails, saying so.
pub fn exec_restarter(image: &Path, _job_env: &Path) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        format!(
            "cannot restore {}: this dsmrun was built without the process image engine",
            image.display()
        ),
    )
}
