//! Codec: one streaming encoder for each content coding, writing into a
//! buffer the body takes its output from.
//!
//! The codecs are the maintained ones everybody uses (flate2 on zlib-rs,
//! Dropbox's brotli, zstd on libzstd): the same that async-compression
//! wraps, used here through their synchronous `Write` side, since a
//! response body hands the encoder whole chunks and needs no async I/O.

use std::io::{self, Write};

use crate::accept_encoding::Coding;

/// gzip level: 5, as Caddy's default; see bench/README.md, "Compression".
pub(crate) const GZIP_LEVEL: u32 = 5;
/// brotli quality: 4, the last fast quality (bench/README.md, "Compression").
pub(crate) const BROTLI_QUALITY: u32 = 4;
/// brotli window: 2^18 bytes, bounding the encoder's memory per response.
const BROTLI_WINDOW_LOG: u32 = 18;
/// zstd level: 3, libzstd's default, much faster than gzip 5 and smaller.
pub(crate) const ZSTD_LEVEL: i32 = 3;
/// zstd window: 2^19 bytes, so a long response does not grow the window
/// (and the client's) to the level's default.
const ZSTD_WINDOW_LOG: u32 = 19;

/// A streaming encoder whose output collects in a `Vec`.
pub(crate) enum Encoder {
    /// gzip.
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    /// brotli (boxed: its state is large).
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    /// zstd.
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    /// A new encoder for `coding`.
    pub(crate) fn new(coding: Coding) -> io::Result<Self> {
        let out = Vec::with_capacity(8 * 1024);
        Ok(match coding {
            Coding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::new(GZIP_LEVEL),
            )),
            Coding::Brotli => Encoder::Brotli(Box::new(brotli::CompressorWriter::new(
                out,
                4096,
                BROTLI_QUALITY,
                BROTLI_WINDOW_LOG,
            ))),
            Coding::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?;
                e.window_log(ZSTD_WINDOW_LOG)?;
                Encoder::Zstd(e)
            }
        })
    }

    /// Compresses `data` (output may stay inside the encoder).
    pub(crate) fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.write_all(data),
            Encoder::Brotli(e) => e.write_all(data),
            Encoder::Zstd(e) => e.write_all(data),
        }
    }

    /// Pushes out everything written so far, decodable as it stands.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Brotli(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }

    /// The output so far.
    pub(crate) fn output(&mut self) -> &mut Vec<u8> {
        match self {
            Encoder::Gzip(e) => e.get_mut(),
            Encoder::Brotli(e) => e.get_mut(),
            Encoder::Zstd(e) => e.get_mut(),
        }
    }

    /// Ends the stream and returns the rest of the output.
    pub(crate) fn finish_into(self) -> io::Result<Vec<u8>> {
        Ok(match self {
            Encoder::Gzip(e) => e.finish()?,
            // Writes the end marker; writing to a Vec cannot fail.
            Encoder::Brotli(e) => e.into_inner(),
            Encoder::Zstd(e) => e.finish()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn roundtrip(coding: Coding, pieces: &[&[u8]]) -> Vec<u8> {
        let mut e = Encoder::new(coding).unwrap();
        let mut out = Vec::new();
        for p in pieces {
            e.write(p).unwrap();
            e.flush().unwrap();
            out.append(e.output());
        }
        out.extend(e.finish_into().unwrap());
        let mut plain = Vec::new();
        match coding {
            Coding::Gzip => {
                flate2::read::GzDecoder::new(&out[..])
                    .read_to_end(&mut plain)
                    .unwrap();
            }
            Coding::Brotli => {
                brotli::Decompressor::new(&out[..], 4096)
                    .read_to_end(&mut plain)
                    .unwrap();
            }
            Coding::Zstd => {
                plain = zstd::stream::decode_all(&out[..]).unwrap();
            }
        }
        plain
    }

    #[test]
    fn every_coding_round_trips_in_flushed_pieces() {
        let text = b"{\"key\": \"value\", \"n\": 12345}\n".repeat(500);
        for coding in Coding::ALL {
            let got = roundtrip(coding, &[&text[..100], &text[100..5000], &text[5000..]]);
            assert_eq!(got, text, "{coding:?}");
            assert_eq!(roundtrip(coding, &[]), b"", "{coding:?}: empty");
        }
    }

    #[test]
    fn a_flush_makes_what_was_written_decodable_at_once() {
        for coding in Coding::ALL {
            let mut e = Encoder::new(coding).unwrap();
            e.write(b"data: first piece\n").unwrap();
            e.flush().unwrap();
            let head = std::mem::take(e.output());
            assert!(!head.is_empty(), "{coding:?}: a flush emits bytes");
        }
    }
}
