//! `idlegate advise --json`: one JSON document on stdout a script can read, for each system.

use std::process::Command;

#[test]
fn advise_json_is_one_document_with_every_setting_its_unit_place_and_source() {
    for (os, first) in [
        ("linux", "net.ipv4.tcp_keepalive_time"),
        ("windows", "KeepAliveTime"),
        ("macos", "net.inet.tcp.keepidle"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_idlegate"))
            .args(["advise", "--profile", "azure-lb", "--os", os, "--json"])
            .output()
            .expect("running idlegate advise");
        assert!(out.status.success(), "{out:?}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{os}: stdout is not one JSON document: {e}"));
        assert_eq!(report["os"], os);
        assert_eq!(report["profile"], "azure-lb");
        assert_eq!(report["idle_timeout_s"], 240.0);
        assert_eq!(report["keepalive"]["idle_s"], 120);
        assert_eq!(report["keepalive"]["interval_s"], 30);
        assert_eq!(report["keepalive"]["count"], 8);
        let settings = report["settings"].as_array().expect("settings");
        assert_eq!(settings[0]["name"], first, "{report:#}");
        for s in settings {
            for field in ["name", "unit", "where", "source"] {
                assert!(
                    s[field].as_str().is_some_and(|v| !v.is_empty()),
                    "{os}: {field} of {s}"
                );
            }
            assert!(s["value"].as_u64().is_some(), "{os}: {s}");
        }
    }
    let windows = Command::new(env!("CARGO_BIN_EXE_idlegate"))
        .args([
            "advise",
            "--idle-timeout",
            "350s",
            "--os",
            "windows",
            "--json",
        ])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&windows.stdout).unwrap();
    assert_eq!(report["profile"], serde_json::Value::Null);
    assert_eq!(report["settings"][0]["value"], 175_000);
    assert_eq!(report["settings"][0]["unit"], "milliseconds");
}
