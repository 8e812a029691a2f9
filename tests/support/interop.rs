//! The pinned OpenFeature SDKs and providers the interop tests run, and the
//! accessibility checker the console's browser test injects
//! (`tests/interop/setup.sh`: Python, Node.js and the browser's).

use std::path::PathBuf;
use std::sync::OnceLock;

/// The repository's root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Installs the pinned packages once per test process (cached under
/// target/interop between runs); panics with the installers' output when
/// that fails.
pub async fn setup() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let result = tokio::task::spawn_blocking(|| {
        DONE.get_or_init(|| {
            let output = std::process::Command::new("bash")
                .arg(root().join("tests/interop/setup.sh"))
                .output()
                .map_err(|err| format!("cannot run setup.sh: {err}"))?;
            if output.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "installing the pinned test packages failed:\n{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ))
            }
        })
        .clone()
    })
    .await
    .expect("setup task");
    if let Err(message) = result {
        panic!("{message}");
    }
}
