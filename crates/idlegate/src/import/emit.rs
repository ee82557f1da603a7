//! The writer: a draft rendered as the config's TOML (to be written).
