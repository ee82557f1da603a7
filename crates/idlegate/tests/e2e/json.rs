//! The JSON documents scripts read: `keepalive --json` (what each socket of a process had and
//! has) and `gateway --explain --json` / `lab up --explain --json` (what every rule's flows
//! get and why). Each is one JSON document on stdout, parsed here, and checked field by field.

use crate::common;

use serde_json::Value;

fn json_of(args: &[&str]) -> Value {
    let stdout = common::idlegate_ok(args);
    serde_json::from_slice(&stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: not one JSON document ({e}): {}",
            String::from_utf8_lossy(&stdout)
        )
    })
}

#[test]
fn keepalive_json_gives_each_socket_what_it_had_and_has() {
    common::require_root();
    let holder = common::Holder::start();
    let pid = holder.pid().to_string();
    let report = json_of(&[
        "keepalive",
        "--pid",
        &pid,
        "--keepalive",
        "7s,3s,4",
        "--json",
    ]);
    assert_eq!(report["pid"], holder.pid());
    assert_eq!(report["command"], "python3");
    assert_eq!(report["exited"], false);
    let asked = &report["keepalive"];
    assert_eq!(
        (&asked["idle_s"], &asked["interval_s"], &asked["count"]),
        (&Value::from(7), &Value::from(3), &Value::from(4))
    );
    assert_eq!(asked["user_timeout_s"], 19);
    let sockets = report["sockets"].as_array().expect("a sockets array");
    let states: Vec<&str> = sockets.iter().filter_map(|s| s["state"].as_str()).collect();
    assert!(
        states.contains(&"LISTEN") && states.contains(&"ESTABLISHED"),
        "{report}"
    );
    for socket in sockets {
        assert_eq!(socket["outcome"], "changed", "{socket}");
        assert_eq!(socket["before"]["enabled"], false, "{socket}");
        assert_eq!(
            socket["before"]["idle_s"], 7200,
            "Linux's default: {socket}"
        );
        assert_eq!(socket["after"]["enabled"], true, "{socket}");
        assert_eq!(socket["after"], report["keepalive"], "read back: {socket}");
        assert!(
            socket["fd"].is_u64() && socket["local"].is_string(),
            "{socket}"
        );
    }
}

#[test]
fn explain_json_gives_every_rule_its_timeout_expiry_and_winner() {
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/azure-lb.toml")
        .display()
        .to_string();
    let gateway = json_of(&["gateway", "--explain", "--json", "--config", &config]);
    let lab = json_of(&["lab", "up", "--explain", "--json", "--config", &config]);
    assert_eq!(gateway, lab, "the same document from both commands");
    assert_eq!(gateway["profile"], "azure-lb");
    assert_eq!(gateway["time_scale"], 60);
    assert_eq!(gateway["tcp_not_established"][0]["state"], "SYN_SENT");
    let rules = gateway["rules"].as_array().expect("a rules array");
    let rule = |name: &str| {
        rules
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no rule {name} in {gateway}"))
    };
    let app = &rule("app")["tcp"];
    assert_eq!(rule("app")["kind"], "lb_rule");
    assert_eq!(app["idle_timeout_s"], 240.0);
    assert_eq!(app["runs_s"], 4.0);
    assert_eq!(app["expiry"], "silent");
    assert_eq!(app["winner"], "rule");
    assert!(app["reason"].as_str().is_some_and(|r| !r.is_empty()));
    assert_eq!(rule("app-with-reset")["tcp"]["expiry"], "reset");
    assert_eq!(rule("egress")["kind"], "outbound_rule");
}

#[test]
fn explain_json_gives_a_gcp_nat_rule_its_time_wait_and_an_azure_rule_above_100_min_a_note() {
    let dir = std::env::temp_dir().join(common::unique("tw"));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("writing a config");
        path.display().to_string()
    };
    let rule = "[[frontend]]\nname = \"public\"\naddress = \"203.0.113.10\"\n\
                [[backend_pool]]\nname = \"vms\"\nmembers = [{ name = \"vm1\", address = \"192.0.2.11\" }]\n\
                [[outbound_rule]]\nname = \"egress\"\nfrontend = \"public\"\nbackend_pool = \"vms\"\n";
    let gcp = write(
        "gcp.toml",
        &format!("profile = \"gcp-nat\"\n{rule}time_wait = \"120s\"\n"),
    );
    let azure = write(
        "azure.toml",
        &format!("profile = \"azure-lb\"\n{rule}idle_timeout = \"110m\"\n"),
    );
    let gcp = json_of(&["gateway", "--explain", "--json", "--config", &gcp]);
    let azure = json_of(&["gateway", "--explain", "--json", "--config", &azure]);
    let _ = std::fs::remove_dir_all(&dir);
    // Cloud NAT: the rule's own TIME_WAIT (a gateway created before 30 September 2026).
    let time_wait = &gcp["rules"][0]["tcp"]["time_wait"];
    assert_eq!(time_wait["time_wait_s"], 120.0, "{gcp}");
    assert_eq!(time_wait["winner"], "rule");
    // Azure: above 100 min an outbound rule is within one page's range and outside the other's.
    let tcp = &azure["rules"][0]["tcp"];
    assert_eq!(tcp["idle_timeout_s"], 6600.0, "{azure}");
    assert!(
        tcp["reason"]
            .as_str()
            .is_some_and(|r| r.contains("page says 4–100 min; idlegate enforces 120 min")),
        "{azure}"
    );
    assert!(tcp.get("time_wait").is_none(), "{azure}");
}

#[test]
fn explain_json_shows_the_floored_holds_of_a_nat_gateway_and_after_an_idle_expiry() {
    let dir = crate::import_terraform::TempDir(std::env::temp_dir().join(common::unique("fl")));
    std::fs::create_dir_all(&dir.0).expect("a temporary directory");
    let write = |name: &str, text: &str| {
        let path = dir.0.join(name);
        std::fs::write(&path, text).expect("writing a config");
        path.display().to_string()
    };
    let pool = "time_scale = 60\n\
                [[frontend]]\nname = \"public\"\naddress = \"203.0.113.10\"\n\
                [[frontend]]\nname = \"natgw-ip\"\naddress = \"203.0.113.20\"\n\
                [[backend_pool]]\nname = \"vms\"\nmembers = [{ name = \"vm1\", address = \"192.0.2.11\" }]\n";
    let lb = write(
        "lb.toml",
        &format!(
            "profile = \"azure-lb\"\n{pool}[[nat_gateway]]\nname = \"natgw\"\nfrontend = \"natgw-ip\"\nbackend_pools = [\"vms\"]\n"
        ),
    );
    let natgw = write(
        "natgw.toml",
        &format!(
            "profile = \"azure-natgw\"\n{pool}[[outbound_rule]]\nname = \"egress\"\nfrontend = \"public\"\nbackend_pool = \"vms\"\n"
        ),
    );
    let hold = |holds: &Value, after: &str| -> Value {
        holds
            .as_array()
            .and_then(|h| h.iter().find(|h| h["after"] == after))
            .unwrap_or_else(|| panic!("no hold after {after} in {holds}"))
            .clone()
    };
    // azure-lb with a NAT gateway: the gateway's pool holds 65 s after a FIN (Azure NAT
    // Gateway's, not azure-lb's 240 s), which at 1/60 is 1083 ms and runs at the 3 s floor.
    let e = json_of(&["gateway", "--explain", "--json", "--config", &lb]);
    let rule = &e["rules"][0];
    assert_eq!(rule["kind"], "nat_gateway", "{e}");
    let fin = hold(&rule["snat_holds"], "fin");
    assert_eq!(
        (&fin["timeout_s"], &fin["runs_s"], &fin["floored"]),
        (&65.0.into(), &3.0.into(), &true.into()),
        "{e}"
    );
    assert_eq!(hold(&rule["snat_holds"], "idle")["timeout_s"], 16.0, "{e}");
    assert_eq!(rule["tcp_not_established"][1]["state"], "SYN_RECV", "{e}");
    assert_eq!(rule["tcp_not_established"][1]["runs_s"], 3.0, "{e}");
    let text = String::from_utf8(common::idlegate_ok(&[
        "gateway",
        "--explain",
        "--config",
        &lb,
    ]))
    .expect("UTF-8");
    assert!(
        text.contains("    nat_gateway natgw: SNAT hold after FIN 65 s: 1083 ms scaled, runs 3 s"),
        "{text}"
    );
    // azure-natgw: the 16 s hold after an idle expiry runs 3 s, not 266 ms.
    let e = json_of(&["gateway", "--explain", "--json", "--config", &natgw]);
    let idle = hold(&e["snat_holds"], "idle");
    assert_eq!(
        (&idle["timeout_s"], &idle["runs_s"], &idle["floored"]),
        (&16.0.into(), &3.0.into(), &true.into()),
        "{e}"
    );
    assert_eq!(hold(&e["rules"][0]["snat_holds"], "idle")["runs_s"], 3.0);
}
