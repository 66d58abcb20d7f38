//! The command line: `check` exits 0 with a summary or 1 with every error as
//! FILE:LINE:COL, and `run` refuses to start on a bad configuration.

mod common;

use std::process::Command;

use common::*;

fn switchyard(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn check_prints_a_summary_for_a_good_config() {
    let pki = Pki::new();
    let (crt, key) = pki.leaf("shop", &["shop.test"]);
    let site = format!(
        "hosts = [\"shop.test\"]\n{}\n[pools.web]\nservers = [\"127.0.0.1:8000\"]\nmax_in_flight = 4\n[pools.live]\nservers = [\"127.0.0.1:9000\"]\n[[routes]]\nname = \"sockets\"\npath = \"/ws/\"\nwebsocket = \"live\"\n[[routes]]\npath = \"/\"\npool = \"web\"\n",
        tls_toml(&crt, &key)
    );
    let cfg = ConfigDir::new(&main_toml(""), &[("shop", site)]);
    let out = switchyard(&["check", "-c", cfg.path().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("site shop: hosts shop.test"), "{stdout}");
    assert!(stdout.contains("pool web: 127.0.0.1:8000"), "{stdout}");
    assert!(stdout.contains("route sockets /ws/"), "{stdout}");
    assert!(
        stdout.contains("session tickets: per-process rotating keys"),
        "{stdout}"
    );

    // Shared ticket keys are listed by file, the first issuing.
    std::fs::write(cfg.path().join("t1.key"), [7u8; 80]).unwrap();
    std::fs::write(
        cfg.path().join("switchyard.toml"),
        main_toml("[tls]\nticket_keys = [\"t1.key\"]"),
    )
    .unwrap();
    let out = switchyard(&["check", "-c", cfg.path().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let line = format!(
        "session tickets: shared keys {} (the first issues)",
        cfg.path().join("t1.key").display()
    );
    assert!(stdout.contains(&line), "{stdout}");
}

#[test]
fn check_and_run_report_every_error_with_its_location() {
    let site = "hosts = [\"shop.test\"]\nredirect_htps = true\n[pools.web]\nservers = []\n[[routes]]\npath = \"/\"\npool = \"nope\"\n";
    let cfg = ConfigDir::new("[timeouts]\nheader = 5\n", &[("shop", site.to_string())]);
    let dir = cfg.path().to_str().unwrap().to_string();
    for args in [
        vec!["check", "-c", &dir],
        vec!["run", "-c", &dir],
        vec!["--config", &dir],
    ] {
        let out = switchyard(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let main = format!("{dir}/switchyard.toml:2:10:");
        let shop = format!("{dir}/sites/shop.toml:");
        assert!(stderr.contains(&main), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("{shop}2:1:")),
            "unknown field: {stderr}"
        );
        assert!(
            stderr.contains(&format!("{shop}4:")),
            "empty servers: {stderr}"
        );
        assert!(
            stderr.contains(&format!("{shop}7:")),
            "unknown pool: {stderr}"
        );
    }
}

#[test]
fn version_and_help() {
    let out = switchyard(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("switchyard "));
    let out = switchyard(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("check") && help.contains("--config"),
        "{help}"
    );
}
