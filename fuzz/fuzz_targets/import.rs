//! The importer: any text (JSON, YAML, anything) is a config or an error at a path, never a
//! panic; a config it writes is one the config parser accepts.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(imported) = idlegate::import::import(text, "fuzz", &Default::default()) {
        assert!(
            idlegate_core::Config::from_toml(&imported.toml, "imported.toml").is_ok(),
            "the importer wrote a config the parser refuses:\n{}",
            imported.toml
        );
    }
});
