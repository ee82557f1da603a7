//! STUB, to delete when `obs::scrape::Server::serve` (the one HTTP server's serving of an
//! [`crate::obs::http::Service`], written in parallel) is merged: the signature the API thread
//! calls, so that this branch builds. It serves nothing: it waits until stopped.

use crate::obs::http::{Guard, Service};
use crate::obs::scrape::Server;
use anyhow::Result;

impl Server {
    /// Serves `service` until `stopped` (the stub: says that nothing is served, and waits).
    pub fn serve(
        &mut self,
        stopped: &dyn Fn() -> bool,
        _service: &mut dyn Service,
        _guard: &Guard,
    ) -> Result<()> {
        tracing::warn!("this build does not serve the API yet (obs::scrape::Server::serve)");
        while !stopped() {
            std::thread::sleep(crate::obs::http::POLL_EVENTS);
        }
        Ok(())
    }
}
