//! Development certificates: a local CA and server certificates signed by it.
//!
//! ```text
//! cargo run --example gen_certs -- [--out DIR] [--host NAME ...] [--force]
//! ```
//!
//! Writes into DIR (default `certs`):
//!
//! - `dev-ca.crt`, `dev-ca.key`: the development CA. Reused when present, so
//!   certificates issued later chain to the CA you already trust.
//! - `localhost.crt`, `localhost.key`: for `localhost`, `127.0.0.1` and `::1`.
//!   Written when missing.
//! - `NAME.crt`, `NAME.key` for every `--host NAME` (always written).
//!
//! `--force` makes a new CA and re-issues everything. These certificates are
//! for development only: see `certs/README.md` for real ones.

use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, date_time_ymd,
};

const DAY: Duration = Duration::from_secs(86_400);
/// The CA lives ten years.
const CA_DAYS: u64 = 3650;
/// Apple platforms reject TLS server certificates valid for more than 825 days,
/// even under a locally trusted root.
const LEAF_DAYS: u64 = 825;

const USAGE: &str = "usage: gen_certs [--out DIR] [--host NAME ...] [--force]

Makes a development CA (DIR/dev-ca.crt, DIR/dev-ca.key; reused if present),
a certificate for localhost, 127.0.0.1 and ::1 (DIR/localhost.crt, .key; if
missing) and one for each --host NAME (DIR/NAME.crt, DIR/NAME.key).

  --out DIR     output directory (default: certs)
  --host NAME   also issue a certificate for NAME (a DNS name or IP address)
  --force       make a new CA and re-issue every certificate";

struct Args {
    out: PathBuf,
    hosts: Vec<String>,
    force: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        out: PathBuf::from("certs"),
        hosts: Vec::new(),
        force: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--out" | "-o" => {
                args.out = it.next().ok_or("--out needs a directory")?.into();
            }
            "--host" => {
                let host = it.next().ok_or("--host needs a name")?;
                if !valid_host(&host) {
                    return Err(format!("--host {host:?}: not a DNS name or IP address"));
                }
                args.hosts.push(host);
            }
            "--force" => args.force = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

/// An IP address, or a DNS name (optionally a `*.` wildcard) of letters,
/// digits and hyphens.
fn valid_host(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Today's UTC date as (year, month, day), from the system clock.
fn today() -> (i32, u8, u8) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Howard Hinnant's civil_from_days.
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    (year, month, day)
}

/// Validity from yesterday (tolerating clock skew) for `days` days.
fn set_validity(params: &mut CertificateParams, days: u64) {
    let (y, m, d) = today();
    let midnight = date_time_ymd(y, m, d);
    params.not_before = midnight - DAY;
    params.not_after = midnight + DAY * (days as u32);
}

/// The CA's parameters. Deterministic, so an existing CA key can be turned
/// back into the same issuer (subject and key identifier) without parsing
/// the certificate.
fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "switchyard development CA");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "switchyard (development only)");
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    set_validity(&mut params, CA_DAYS);
    Ok(params)
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), Box<dyn Error>> {
    fs::write(path, contents).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot set permissions on {}: {e}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = private;
    println!("wrote {}", path.display());
    Ok(())
}

/// Loads the CA from `dir`, or makes (and writes) a new one.
fn ca(dir: &Path, force: bool) -> Result<Issuer<'static, KeyPair>, Box<dyn Error>> {
    let crt = dir.join("dev-ca.crt");
    let key = dir.join("dev-ca.key");
    if !force && crt.exists() && key.exists() {
        let pem =
            fs::read_to_string(&key).map_err(|e| format!("cannot read {}: {e}", key.display()))?;
        let key_pair = KeyPair::from_pem(&pem).map_err(|e| format!("{}: {e}", key.display()))?;
        println!("using the existing CA {}", crt.display());
        return Ok(Issuer::new(ca_params()?, key_pair));
    }
    let key_pair = KeyPair::generate()?;
    let params = ca_params()?;
    let cert = params.self_signed(&key_pair)?;
    write(&crt, &cert.pem(), false)?;
    write(&key, &key_pair.serialize_pem(), true)?;
    Ok(Issuer::new(params, key_pair))
}

/// Issues a server certificate for `names` (the first is the common name)
/// and writes `dir/STEM.crt` and `dir/STEM.key`.
fn issue(
    dir: &Path,
    stem: &str,
    names: &[&str],
    issuer: &Issuer<'_, KeyPair>,
) -> Result<(), Box<dyn Error>> {
    let sans: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans).map_err(|e| {
        format!(
            "{}: not a valid DNS name or IP address: {e}",
            names.join(", ")
        )
    })?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, names.first().copied().unwrap_or(stem));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, LEAF_DAYS);
    let key_pair = KeyPair::generate()?;
    let cert = params.signed_by(&key_pair, issuer)?;
    write(&dir.join(format!("{stem}.crt")), &cert.pem(), false)?;
    write(
        &dir.join(format!("{stem}.key")),
        &key_pair.serialize_pem(),
        true,
    )?;
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("gen_certs: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    fs::create_dir_all(&args.out)
        .map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    let issuer = ca(&args.out, args.force)?;

    let localhost = args.out.join("localhost.crt");
    if args.force || !localhost.exists() || !args.out.join("localhost.key").exists() {
        issue(
            &args.out,
            "localhost",
            &["localhost", "127.0.0.1", "::1"],
            &issuer,
        )?;
    } else {
        println!("keeping {} (use --force to re-issue)", localhost.display());
    }
    for host in &args.hosts {
        // IPv6 literals and wildcards make awkward file names.
        let stem = host.replace(':', "_").replace('*', "_wildcard");
        issue(&args.out, &stem, &[host.as_str()], &issuer)?;
    }
    println!(
        "done. Trust {} in your browser or use `curl --cacert {}`; development only.",
        args.out.join("dev-ca.crt").display(),
        args.out.join("dev-ca.crt").display()
    );
    Ok(())
}
