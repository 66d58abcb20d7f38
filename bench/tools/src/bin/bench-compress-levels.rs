//! Compression ratio and speed by level with the codecs switchyard uses
//! (flate2 on zlib-rs, Dropbox's brotli, zstd on libzstd), set up as
//! src/compress/codec.rs sets them up: a fresh encoder per document, brotli
//! with a 4 KiB buffer and a 2^18 window, zstd with a 2^19 window. Run by
//! bench/compress_levels.py, which prints the table.
//!
//! bench-compress-levels --file json=PATH --file2 html=PATH [--secs 0.1] [--runs 5]
//!
//! Prints one line per codec, level and document:
//! `codec=gzip level=5 doc=json in=65536 out=11271 us=412.3`
//! (`us`: microseconds per document, the best of `--runs` rounds of
//! `--secs` each, the rounds interleaved over all codecs and levels).

use std::io::{Read, Write};
use std::time::Instant;

fn gzip(level: u32, data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(
        Vec::with_capacity(8 * 1024),
        flate2::Compression::new(level),
    );
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn br(level: u32, data: &[u8]) -> Vec<u8> {
    let mut e = brotli::CompressorWriter::new(Vec::with_capacity(8 * 1024), 4096, level, 18);
    e.write_all(data).unwrap();
    e.into_inner() // ends the stream
}

fn zstd(level: u32, data: &[u8]) -> Vec<u8> {
    let mut e =
        zstd::stream::write::Encoder::new(Vec::with_capacity(8 * 1024), level as i32).unwrap();
    e.window_log(19).unwrap();
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Decodes `out` with the codec's own decoder.
fn decode(codec: &str, out: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    match codec {
        "gzip" => flate2::read::GzDecoder::new(out).read_to_end(&mut v),
        "br" => brotli::Decompressor::new(out, 4096).read_to_end(&mut v),
        _ => zstd::stream::read::Decoder::new(out)
            .unwrap()
            .read_to_end(&mut v),
    }
    .expect("decode");
    v
}

fn main() {
    let args = switchyard_bench_tools::Args::parse();
    let secs: f64 = args.num("secs", 0.1);
    let runs: u32 = args.num("runs", 5);
    let mut docs = Vec::new();
    for k in ["file", "file2"] {
        let v = args.str(k, "");
        if let Some((name, path)) = v.split_once('=') {
            docs.push((
                name.to_string(),
                std::fs::read(path).expect("read the document"),
            ));
        }
    }
    let codecs: [(&str, fn(u32, &[u8]) -> Vec<u8>, &[u32]); 3] = [
        ("gzip", gzip, &[1, 3, 5, 6, 9]),
        ("br", br, &[1, 3, 4, 5, 6, 9]),
        ("zstd", zstd, &[1, 3, 6, 9]),
    ];
    // Every (codec, level, document), checked once; then `runs` rounds, each
    // timing every one of them for `secs`, so that a busy moment on a shared
    // machine spreads over all of them; the best round counts.
    let mut cases = Vec::new();
    for (name, f, levels) in codecs {
        for &level in levels {
            for (doc, data) in &docs {
                let enc = f(level, data);
                assert!(
                    decode(name, &enc) == *data,
                    "{name} {level} {doc}: round trip"
                );
                cases.push((name, f, level, doc, data, enc.len(), f64::MAX));
            }
        }
    }
    for _ in 0..runs {
        for (_, f, level, _, data, _, best) in cases.iter_mut() {
            let t0 = Instant::now();
            let mut n = 0u32;
            loop {
                std::hint::black_box(f(*level, std::hint::black_box(data)));
                n += 1;
                if t0.elapsed().as_secs_f64() >= secs {
                    break;
                }
            }
            *best = best.min(t0.elapsed().as_secs_f64() / n as f64);
        }
    }
    for (name, _, level, doc, data, out, best) in cases {
        println!(
            "codec={name} level={level} doc={doc} in={} out={out} us={:.1}",
            data.len(),
            best * 1e6
        );
    }
}
