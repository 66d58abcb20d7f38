//! The path mapping of `files` routes, fed an arbitrary request path (and
//! a prefix picked from its first byte).
//!
//! It must never panic, and whatever it accepts must stay beneath the
//! route's directory: a relative path of plain names, none of them starting
//! with `.`, none holding a separator, NUL or control character. And it
//! must agree with itself: the mapped path, re-encoded as a request path,
//! maps to the same file.
#![no_main]

use std::path::Component;

use libfuzzer_sys::fuzz_target;
use switchyard::files::map_path;

const PREFIXES: [&str; 4] = ["/static/", "/", "/media", "/a/b/"];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(rest) = std::str::from_utf8(rest) else {
        return;
    };
    let prefix = PREFIXES[usize::from(pick) % PREFIXES.len()];
    // Half the inputs start under the prefix, or few would get past it.
    let path = if pick & 0x80 == 0 {
        format!("{prefix}{rest}")
    } else {
        rest.to_owned()
    };
    let Some(mapped) = map_path(prefix, &path) else {
        return;
    };
    assert!(path.starts_with(prefix), "{path:?} is not under {prefix:?}");
    assert!(mapped.path.is_relative(), "{path:?} -> {:?}", mapped.path);
    let mut again = prefix.trim_end_matches('/').to_owned();
    for c in mapped.path.components() {
        let Component::Normal(name) = c else {
            panic!("{path:?} -> {:?} has {c:?}", mapped.path);
        };
        let name = name.to_str().expect("mapped names are UTF-8");
        assert!(!name.is_empty() && !name.starts_with('.'), "{path:?} -> {name:?}");
        assert!(
            !name.bytes().any(|b| b == b'/' || b == b'\\' || b < 0x20 || b == 0x7f),
            "{path:?} -> {name:?}"
        );
        again.push('/');
        for b in name.bytes() {
            again.push_str(&format!("%{b:02X}"));
        }
    }
    if mapped.directory || mapped.path.as_os_str().is_empty() {
        again.push('/');
    }
    let remapped = map_path(prefix, &again).expect("a mapped path maps again");
    assert_eq!(remapped.path, mapped.path, "{path:?} vs {again:?}");
});
