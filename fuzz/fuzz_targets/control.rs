//! The control socket's requests: any line a local client sends is answered with a response
//! (an error for what is not a request), never a panic, and only `expire` expires anything.
#![no_main]
use idlegate::gateway::control::{handle_line, FlowRow, Response, Shards};
use libfuzzer_sys::fuzz_target;

/// Two rules and one flow, counting what it is asked to do.
struct Fake {
    rules: Vec<String>,
    expired: usize,
}

impl Shards for Fake {
    fn rule_names(&self) -> &[String] {
        &self.rules
    }
    fn flows(&mut self) -> Result<Vec<FlowRow>, String> {
        Ok(vec![FlowRow {
            rule: "app".into(),
            protocol: "tcp".into(),
            remote: "203.0.113.100:40000".into(),
            public: "203.0.113.10:7000".into(),
            private: "192.0.2.11:7000".into(),
            state: "ESTABLISHED".into(),
            idle_for_s: 1.0,
            expires_in_s: 3.0,
            timeout_s: 4.0,
        }])
    }
    fn expire(&mut self, _rule: Option<&str>) -> Result<usize, String> {
        self.expired += 1;
        Ok(1)
    }
}

fuzz_target!(|line: &[u8]| {
    let mut fake = Fake {
        rules: vec!["app".into(), "egress".into()],
        expired: 0,
    };
    let response = handle_line(line, &mut fake);
    // The answer always serialises to one line.
    let text = serde_json::to_string(&response).expect("a response is JSON");
    assert!(!text.contains('\n'));
    if fake.expired > 0 {
        assert!(matches!(response, Response::Expired { .. }));
    }
});
