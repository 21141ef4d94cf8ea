//! Flags that contradict each other stop the binary at start with a message
//! naming them, before it binds anything.

use std::process::Command;

#[test]
fn an_ack_pace_slower_than_the_resend_timer_is_refused() {
    let data = std::env::temp_dir().join(format!("danmaku-cli-flags-{}", std::process::id()));
    for cmd in ["standalone", "edge"] {
        let mut c = Command::new(env!("CARGO_BIN_EXE_danmaku"));
        c.arg(cmd).args(["--listen", "127.0.0.1:0"]);
        if cmd == "standalone" {
            c.arg("--data").arg(&data);
        } else {
            c.args(["--bus", "memory", "--auth-secret", "s"])
                .arg("--store")
                .arg(format!("embedded:{}", data.join("edge.db").display()));
        }
        let out = c
            .args(["--retransmit-initial", "2s", "--client-ack-interval", "2s"])
            .output()
            .expect("run danmaku");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cmd}: {stderr}");
        assert!(
            stderr.contains("--retransmit-initial") && stderr.contains("--client-ack-interval"),
            "{cmd}: {stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&data);
}
