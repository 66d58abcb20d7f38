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

/// The codings `headers` accepts, most preferred first; empty when the
/// client sent no Accept-Encoding or accepts none of ours.
pub(crate) fn preferred(headers: &HeaderMap) -> Vec<Coding> {
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
            let slot = match name.to_ascii_lowercase().as_str() {
                "zstd" => &mut q[0],
                "br" => &mut q[1],
                "gzip" | "x-gzip" => &mut q[2],
                "*" => &mut any,
                _ => continue,
            };
            *slot = Some(quality);
        }
    }
    let mut ranked: Vec<(u16, usize)> = (0..3)
        .filter_map(|i| {
            let quality = q[i].or(any)?;
            (quality > 0).then_some((quality, i))
        })
        .collect();
    // Higher quality first; the stable sort keeps zstd, br, gzip among equals.
    ranked.sort_by_key(|&(quality, _)| std::cmp::Reverse(quality));
    ranked.into_iter().map(|(_, i)| Coding::ALL[i]).collect()
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
        preferred(&h)
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
