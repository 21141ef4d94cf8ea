//! The token format as docs/PROTOCOL.md documents it for app backends: these
//! tokens were minted by the Python snippet in that document (secret `s3cret`,
//! exp 4102444800 = 2100-01-01). If this test fails, the document is wrong.

use danmaku_proto::token::{Claims, TokenKey, key_id};

const NOW: u64 = 1_732_350_000;
/// The snippet's output: with `kid` (the key id of `s3cret`, `a744246c`).
const PY_ALICE: &str = "eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMCwicm9sZSI6InVzZXIiLCJraWQiOiJhNzQ0MjQ2YyJ9.XhGZ69EbCkG3da_DvX3ja1U2Mxs3N944UQcUNHFMAdU";
const PY_BACKEND: &str = "eyJzdWIiOiJiYWNrZW5kIiwiZXhwIjo0MTAyNDQ0ODAwLCJyb2xlIjoiYXBwIiwia2lkIjoiYTc0NDI0NmMifQ.BXQMslqrAB4gvVdQ_AaoPlzSgfoaiGxxac1sYK0Y6o8";
/// Minted by the snippet before tokens named their key: still accepted.
const PY_ALICE_NO_KID: &str = "eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMCwicm9sZSI6InVzZXIifQ.XQtGWBQuKCC0jte07c6jy97130b4aRsAKIxew1sOOYk";

#[test]
fn python_minted_tokens_verify() {
    let key = TokenKey::new("s3cret");
    let alice = key.verify(PY_ALICE, NOW).unwrap();
    assert_eq!(
        alice,
        Claims {
            sub: "alice".into(),
            exp: 4_102_444_800,
            role: "user".into(),
            kid: Some("a744246c".into()),
        }
    );
    assert_eq!(key_id(b"s3cret"), "a744246c");
    let legacy = key.verify(PY_ALICE_NO_KID, NOW).unwrap();
    assert_eq!((legacy.sub.as_str(), legacy.kid), ("alice", None));
    // On a rotated ring (new key first) the old key's tokens still verify.
    let ring = TokenKey::ring(["n3w", "s3cret"]).unwrap();
    assert_eq!(ring.verify(PY_ALICE, NOW).unwrap().sub, "alice");
    assert_eq!(ring.verify(PY_ALICE_NO_KID, NOW).unwrap().sub, "alice");
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
