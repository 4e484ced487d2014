//! ACL tokens and policies, their capability checks, and workload identity signing keys.

use std::path::Path;

use crate::state::store::StoreError;

/// Tokens, policies and signing keys.
#[derive(Debug, Default)]
pub struct AclState {
    pub enabled: bool,
}

impl AclState {
    /// Load from `<data_dir>/server`.
    pub fn load(_data_dir: &Path, enabled: bool) -> Result<AclState, StoreError> {
        Ok(AclState { enabled })
    }
}
