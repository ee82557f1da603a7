//! The echo/probe protocol: a stream of bytes decodes to frames or an error, never a panic; it
//! decodes the same whether it arrives at once or a byte at a time; and a decoded frame,
//! encoded, decodes to a frame that encodes the same (an error text that is not UTF-8 is read
//! leniently, so the first encoding may differ from the bytes that came).
#![no_main]
use idlegate::measure::echo::frame::{Decoder, Frame, MAX_BUFFERED};
use libfuzzer_sys::fuzz_target;

/// Every frame `decoder` gives until it needs more bytes or refuses; whether it refused.
fn drain(decoder: &mut Decoder, frames: &mut Vec<Frame>) -> bool {
    loop {
        match decoder.decode() {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => return false,
            Err(_) => return true,
        }
    }
}

fuzz_target!(|bytes: &[u8]| {
    // The decoder holds at most MAX_BUFFERED bytes not yet decoded.
    let bytes = &bytes[..bytes.len().min(MAX_BUFFERED)];
    let mut whole = Decoder::default();
    whole.feed(bytes).expect("within the bound");
    let mut at_once = Vec::new();
    let refused_at_once = drain(&mut whole, &mut at_once);

    let mut trickle = Decoder::default();
    let mut one_by_one = Vec::new();
    let mut refused = false;
    for &b in bytes {
        trickle.feed(&[b]).expect("a reader that takes every frame stays within the bound");
        if drain(&mut trickle, &mut one_by_one) {
            refused = true;
            break;
        }
    }
    assert_eq!(at_once, one_by_one);
    assert_eq!(refused_at_once, refused);

    for frame in at_once {
        let encoded = frame.encode();
        let mut again = Decoder::default();
        again.feed(&encoded).expect("one frame is within the bound");
        let decoded = again
            .decode()
            .ok()
            .flatten()
            .expect("an encoded frame decodes");
        assert_eq!(decoded.encode(), encoded);
        if !matches!(frame, Frame::Error(_)) {
            assert_eq!(decoded, frame);
        }
    }
});
