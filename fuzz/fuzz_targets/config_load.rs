//! The configuration loader on arbitrary text: `switchyard.toml`, then site
//! files, separated by NUL bytes. It must return a config or errors (each
//! rendered as FILE:LINE:COL), never panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let main = parts.next().unwrap_or_default();
    let names = ["a", "b", "c"];
    let sites: Vec<(&str, &str)> = names.iter().copied().zip(parts).collect();
    let dir = Path::new("/nonexistent-switchyard-fuzz/cfg");
    match switchyard::config::load_str(dir, main, &sites) {
        Ok(config) => {
            let _ = format!("{config:?}");
        }
        Err(errors) => {
            let rendered = errors.to_string();
            assert!(!rendered.is_empty(), "errors with no message");
        }
    }
});
