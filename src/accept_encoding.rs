//! Accept-Encoding: which content codings a client takes, in its order of
//! preference (RFC 9110 §12.5.3). Used to pick a precompressed file.

use http::HeaderMap;
use http::header::ACCEPT_ENCODING;

/// A content coding the proxy can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coding {
    /// `zstd` (RFC 8878).
    Zstd,
    /// `br` (RFC 7932).
    Brotli,
    /// `gzip` (also `x-gzip`).
    Gzip,
}

impl Coding {
    /// Every coding, in the order that breaks ties in the client's preference.
    pub(crate) const ALL: [Coding; 3] = [Coding::Zstd, Coding::Brotli, Coding::Gzip];

    /// The token in `Content-Encoding`.
    pub(crate) fn token(self) -> &'static str {
        match self {
            Coding::Zstd => "zstd",
            Coding::Brotli => "br",
            Coding::Gzip => "gzip",
        }
    }

    /// This coding's place in [`Coding::ALL`] (and in per-coding tables).
    pub(crate) fn index(self) -> usize {
        match self {
            Coding::Zstd => 0,
            Coding::Brotli => 1,
            Coding::Gzip => 2,
        }
    }

    /// The file-name suffix of a file precompressed with this coding.
    pub(crate) fn suffix(self) -> &'static str {
        match self {
            Coding::Zstd => ".zst",
            Coding::Brotli => ".br",
            Coding::Gzip => ".gz",
        }
    }
}

/// The codings a client takes, most preferred first: at most the three
/// there are, held inline (parsed for every request on a files or
/// compressing route, so it allocates nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Codings {
    list: [Coding; 3],
    len: usize,
}

impl Default for Codings {
    fn default() -> Self {
        Codings {
            list: Coding::ALL,
            len: 0,
        }
    }
}

impl std::ops::Deref for Codings {
    type Target = [Coding];

    fn deref(&self) -> &[Coding] {
        &self.list[..self.len]
    }
}

/// The codings `headers` accepts, most preferred first; empty when the
/// client sent no Accept-Encoding or accepts none of ours.
pub(crate) fn preferred(headers: &HeaderMap) -> Codings {
    // Quality of each coding in thousandths (q has three decimals at most),
    // None where the header does not name it.
    let mut q: [Option<u16>; 3] = [None; 3];
    let mut any: Option<u16> = None;
    for value in headers.get_all(ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or_default().trim();
            let quality = parts
                .find_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    k.trim()
                        .eq_ignore_ascii_case("q")
                        .then(|| parse_q(v.trim()))
                })
                .unwrap_or(Some(1000));
            // A malformed q refuses the coding rather than guessing.
            let quality = quality.unwrap_or(0);
            let slot = if name.eq_ignore_ascii_case("zstd") {
                &mut q[0]
            } else if name.eq_ignore_ascii_case("br") {
                &mut q[1]
            } else if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
                &mut q[2]
            } else if name == "*" {
                &mut any
            } else {
                continue;
            };
            *slot = Some(quality);
        }
    }
    // Higher quality first; ties keep zstd, br, gzip (the order of ALL):
    // an insertion sort of at most three.
    let mut out = Codings::default();
    let mut quals = [0u16; 3];
    for (i, coding) in Coding::ALL.into_iter().enumerate() {
        let Some(quality) = q[i].or(any).filter(|&q| q > 0) else {
            continue;
        };
        let mut at = out.len;
        while at > 0 && quals[at - 1] < quality {
            out.list[at] = out.list[at - 1];
            quals[at] = quals[at - 1];
            at -= 1;
        }
        out.list[at] = coding;
        quals[at] = quality;
        out.len += 1;
    }
    out
}

/// A qvalue (`0`, `0.5`, `1.000`) in thousandths; None if malformed.
fn parse_q(v: &str) -> Option<u16> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole = match int {
        "0" => 0,
        "1" => 1000,
        _ => return None,
    };
    let mut thousandths = 0u16;
    for (i, b) in frac.bytes().enumerate() {
        thousandths += u16::from(b - b'0') * [100, 10, 1][i];
    }
    let q = whole + thousandths;
    (q <= 1000).then_some(q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn prefs(v: &str) -> Vec<Coding> {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        preferred(&h).to_vec()
    }

    #[test]
    fn ties_prefer_zstd_then_br_then_gzip() {
        use Coding::*;
        assert_eq!(prefs("gzip, deflate, br, zstd"), vec![Zstd, Brotli, Gzip]);
        assert_eq!(prefs("gzip"), vec![Gzip]);
        assert_eq!(prefs("x-gzip"), vec![Gzip]);
        assert_eq!(prefs("br;q=1, zstd;q=0.5"), vec![Brotli, Zstd]);
        assert_eq!(prefs("zstd;q=0, gzip"), vec![Gzip]);
        assert_eq!(prefs("*"), vec![Zstd, Brotli, Gzip]);
        assert_eq!(prefs("*;q=0.1, gzip;q=0.9"), vec![Gzip, Zstd, Brotli]);
        assert_eq!(prefs("*, br;q=0"), vec![Zstd, Gzip]);
        assert_eq!(prefs("identity"), vec![]);
        assert_eq!(prefs("gzip;q=2"), vec![]);
        assert_eq!(prefs("gzip;q=0.0001"), vec![]);
        assert_eq!(prefs("GZIP;Q=0.5"), vec![Gzip]);
        assert!(preferred(&HeaderMap::new()).is_empty());
    }

    #[test]
    fn qvalues_parse_per_rfc() {
        assert_eq!(parse_q("1"), Some(1000));
        assert_eq!(parse_q("1.000"), Some(1000));
        assert_eq!(parse_q("1.001"), None);
        assert_eq!(parse_q("0.25"), Some(250));
        assert_eq!(parse_q("0."), Some(0));
        assert_eq!(parse_q(".5"), None);
        assert_eq!(parse_q("0.5x"), None);
    }
}
