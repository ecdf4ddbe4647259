//! The shell's upgrade halt: before a height this binary cannot run, the
//! node writes `upgrade-info.json` for Cosmovisor and stops with exit code 3.

use super::{Producer, ProducerError};
use crate::chain::members::Plan;
use crate::chain::upgrade::{UpgradeInfo, UpgradeNeeded, UPGRADE_INFO_FILE};

impl Producer {
    /// Stops before a height this binary cannot run: `upgrade-info.json` in
    /// the data dir (written whole, then renamed into place, so Cosmovisor
    /// never reads half of it) and one error line saying what to do. The
    /// store holds every block committed so far (each `Commit` is durable
    /// before the next effect); the node closes its connections as it stops.
    pub(super) async fn halt(&mut self, needed: UpgradeNeeded) -> ProducerError {
        let path = self.data_dir.join(UPGRADE_INFO_FILE);
        let info = UpgradeInfo::of(&needed);
        let target = path.clone();
        let written = tokio::task::spawn_blocking(move || write_atomically(&target, &info)).await;
        let file = match written {
            Ok(Ok(())) => format!("wrote {} for Cosmovisor", path.display()),
            Ok(Err(e)) => format!("could not write {}: {e}", path.display()),
            Err(e) => format!("could not write {}: {e}", path.display()),
        };
        let Plan { version, height } = needed.plan;
        tracing::error!(
            version,
            height,
            max_version = needed.max_version,
            "stopping before height {height}: the chain switches to protocol {version} there and this binary runs \
             up to protocol {}; nothing is signed at height {height}. Install a release that runs protocol \
             {version} and start the node again ({file}; exit code 3)",
            needed.max_version
        );
        ProducerError::UpgradeNeeded(needed)
    }
}

/// Writes `info` as JSON to a file beside `path`, flushes it, and renames it
/// into place.
fn write_atomically(path: &std::path::Path, info: &UpgradeInfo) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&serde_json::to_vec_pretty(info).map_err(std::io::Error::other)?)?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}
