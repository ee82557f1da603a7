pub mod checksum;
pub mod config;
pub mod expiry;
pub mod packet;
pub mod profile;
