//! The HTTP server's requests (`--api`, `--metrics`): whatever a client sends, in whatever
//! pieces, the server reads within its bounds and answers with a status line or streams, never
//! a panic, never a read past the head's and body's limits.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u8, u8, &[u8])| {
    let (piece, flags, data) = input;
    idlegate::obs::scrape::fuzz_client(data, usize::from(piece), flags & 1 == 1, flags & 2 == 2);
});
