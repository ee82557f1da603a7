//! The tunnel's frames (what a leg decrypts): any message decodes to a frame or an error,
//! never a panic, and a frame that decodes encodes back to the same message.
#![no_main]
use idlegate::survive::tunnel::frame::Frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|msg: &[u8]| {
    if let Ok(frame) = Frame::decode(msg) {
        let mut out = Vec::new();
        frame.encode(&mut out);
        assert_eq!(out, msg);
    }
});
