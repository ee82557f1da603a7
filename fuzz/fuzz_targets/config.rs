//! The config parser: any text is a config or an error with its position, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(config) = idlegate_core::Config::from_toml(text, "fuzz.toml") {
        // A config that is accepted builds an engine.
        let _ = idlegate_core::Engine::new(&config, std::time::Instant::now(), 0);
    }
});
