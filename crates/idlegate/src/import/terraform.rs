//! The terraform reader (to be written).

use super::draft::{Draft, Platform};
use super::ImportError;

/// Reads the parsed input into a draft.
pub fn read(_input: &serde_json::Value, _platform: Option<Platform>) -> Result<Draft, ImportError> {
    Err(ImportError::at(
        "",
        "the terraform reader is not written yet",
    ))
}
