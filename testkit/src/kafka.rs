//! Real Kafka-API brokers for tests: the shared one started by
//! `scripts/services.sh start kafka`, and private ones a test may kill.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The value of `name`, or a panic telling how to start the services. Tests
/// never skip for a missing service: scripts/test.sh always provides them.
pub fn env_or_fail(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: run `scripts/services.sh start kafka && source .services/env` \
             first (scripts/test.sh does both)"
        ),
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}.{}.{nanos}", std::process::id())
}

/// A private tansu broker with memory storage on a fixed port.
pub struct Broker {
    bin: String,
    port: u16,
    child: Option<Child>,
}

impl Broker {
    pub fn start() -> Broker {
        let mut b = Broker {
            bin: env_or_fail("DANMAKU_TEST_KAFKA_TANSU"),
            port: free_port(),
            child: None,
        };
        b.launch();
        b
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL: tansu takes seconds to exit on SIGTERM with clients connected
    /// (docs/ARCHITECTURE.md, broker quirk 3), and its memory storage has nothing to flush.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts on the same port, retrying while the old socket is still in use.
    pub fn launch(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("tcp://{}", self.addr());
        while Instant::now() < deadline {
            let mut child = Command::new(&self.bin)
                .args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                ])
                .args(["--storage-engine", "memory://tansu/"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin));
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(3) {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited: most likely AddrInUse
                }
                if TcpStream::connect(self.addr()).is_ok() {
                    self.child = Some(child);
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("tansu did not start on {}", self.addr());
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Address of the shared broker (`DANMAKU_TEST_KAFKA`).
pub fn shared_broker() -> String {
    env_or_fail("DANMAKU_TEST_KAFKA")
}
