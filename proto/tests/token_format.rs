//! The token format as docs/PROTOCOL.md documents it for app backends: these
//! tokens were minted by the Python snippet in that document (secret `s3cret`,
//! exp 4102444800 = 2100-01-01). If this test fails, the document is wrong.

use danmaku_proto::token::{Claims, TokenKey};

const NOW: u64 = 1_732_350_000;
const PY_ALICE: &str = "eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMCwicm9sZSI6InVzZXIifQ.XQtGWBQuKCC0jte07c6jy97130b4aRsAKIxew1sOOYk";
const PY_BACKEND: &str = "eyJzdWIiOiJiYWNrZW5kIiwiZXhwIjo0MTAyNDQ0ODAwLCJyb2xlIjoiYXBwIn0.1brwI_R3EFSIKyGVS9lNGibcifIpaoKCJQQPNXcti2g";

#[test]
fn python_minted_tokens_verify() {
    let key = TokenKey::new("s3cret");
    let alice = key.verify(PY_ALICE, NOW).unwrap();
    assert_eq!(
        alice,
        Claims {
            sub: "alice".into(),
            exp: 4_102_444_800,
            role: "user".into()
        }
    );
    let backend = key.verify(PY_BACKEND, NOW).unwrap();
    assert!(backend.is_app());
    assert!(TokenKey::new("other").verify(PY_ALICE, NOW).is_err());
}

#[test]
fn rust_and_python_mint_the_same_bytes() {
    let key = TokenKey::new("s3cret");
    assert_eq!(key.mint("alice", "user", 4_102_444_800, 0), PY_ALICE);
    assert_eq!(key.mint("backend", "app", 4_102_444_800, 0), PY_BACKEND);
}
