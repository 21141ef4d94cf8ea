//! The token format as docs/PROTOCOL.md documents it for app backends. The test
//! reads the document itself: the token it says the Python snippet gives (secret
//! `s3cret`, user `alice`, exp 4102444800 = 2100-01-01), the key id it names, and
//! the snippet, which is run with `python3` (standard library only) at that fixed
//! time and with its random token id fixed to [`JTI`]. The Rust implementation must verify and mint exactly those bytes. If
//! this test fails, the document or the implementation is wrong.

use std::process::Command;

use danmaku_proto::token::{Claims, TokenKey, key_id};

const NOW: u64 = 1_732_350_000;
const EXP: u64 = 4_102_444_800;
/// The `jti` the document's example token carries (the snippet's random id, fixed).
const JTI: &str = "3kF9xQ2mZp7vR1tY8wL0aB";
/// Minted by the snippet for `backend` with `role="app"` (not printed in the
/// document; checked against the snippet below).
const PY_BACKEND: &str = "eyJzdWIiOiJiYWNrZW5kIiwiZXhwIjo0MTAyNDQ0ODAwLCJyb2xlIjoiYXBwIiwia2lkIjoiYTc0NDI0NmMiLCJqdGkiOiIza0Y5eFEybVpwN3ZSMXRZOHdMMGFCIiwiaWF0Ijo0MTAyNDQxMjAwfQ.sQ_hSEFzzroefm32eWcXbK5EDkFnqi-pwVGGHUNxf5g";
/// Minted by the snippet before tokens named their key or their id: still accepted.
const PY_ALICE_KID_ONLY: &str = "eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMCwicm9sZSI6InVzZXIiLCJraWQiOiJhNzQ0MjQ2YyJ9.XhGZ69EbCkG3da_DvX3ja1U2Mxs3N944UQcUNHFMAdU";
/// Minted by the snippet before tokens named their key: still accepted.
const PY_ALICE_NO_KID: &str = "eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMCwicm9sZSI6InVzZXIifQ.XQtGWBQuKCC0jte07c6jy97130b4aRsAKIxew1sOOYk";

/// The `## Tokens` section of docs/PROTOCOL.md.
fn tokens_section() -> String {
    // The run-time variable follows the checkout even with a shared target dir.
    let dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    // The repository root is the parent of the crate.
    let path = std::path::Path::new(&dir)
        .join("..")
        .join("docs")
        .join("PROTOCOL.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let start = doc
        .find("\n## Tokens\n")
        .expect("PROTOCOL.md has a ## Tokens section");
    let rest = &doc[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_owned()
}

/// The text between the first `before` after `anchor` and the next `after`.
fn between<'a>(text: &'a str, anchor: &str, before: &str, after: &str) -> &'a str {
    let from = text
        .find(anchor)
        .unwrap_or_else(|| panic!("PROTOCOL.md: no {anchor:?} in the Tokens section"));
    let rest = &text[from + anchor.len()..];
    let s = rest.find(before).expect("opening delimiter") + before.len();
    let e = rest[s..].find(after).expect("closing delimiter") + s;
    &rest[s..e]
}

/// The example token the document says the snippet gives, and its key id.
fn documented_example() -> (String, String) {
    let section = tokens_section();
    let token = between(&section, "this gives exactly", "`", "`").to_owned();
    let kid = between(&section, &token, "(`kid` `", "`").to_owned();
    (token, kid)
}

/// Runs the document's Python snippet with the clock fixed so that
/// `time.time() + ttl_secs` is `EXP` and `secrets.token_urlsafe` gives [`JTI`];
/// returns its `mint` for each call.
fn python_mint(calls: &[&str]) -> Vec<String> {
    let section = tokens_section();
    let snippet = between(&section, "Minting one in Python", "```python\n", "```");
    let defs: String = snippet
        .lines()
        .filter(|l| !l.starts_with("print("))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        defs.contains("def mint(") && defs.contains("def key_id("),
        "the snippet defines mint and key_id:\n{snippet}"
    );
    let mut program = format!(
        "{defs}\ntime.time = lambda: {EXP} - 3600\nsecrets.token_urlsafe = lambda n=None: {JTI:?}\n"
    );
    for c in calls {
        program.push_str(&format!("print({c})\n"));
    }
    let out = Command::new("python3")
        .args(["-c", &program])
        .output()
        .expect("python3 runs (the document's snippet is checked with it)");
    assert!(
        out.status.success(),
        "the snippet fails:\n{program}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_documented_snippet_gives_the_documented_token() {
    let (token, kid) = documented_example();
    let got = python_mint(&[
        "mint(\"s3cret\", \"alice\")",
        "mint(\"s3cret\", \"backend\", role=\"app\")",
        "key_id(\"s3cret\")",
    ]);
    assert_eq!(got, vec![token, PY_BACKEND.to_owned(), kid]);
}

#[test]
fn python_minted_tokens_verify() {
    let (py_alice, kid) = documented_example();
    let key = TokenKey::new("s3cret");
    let alice = key.verify(&py_alice, NOW).unwrap();
    assert_eq!(
        alice,
        Claims {
            sub: "alice".into(),
            exp: EXP,
            role: "user".into(),
            kid: Some(kid.clone()),
            jti: Some(JTI.into()),
            iat: Some(EXP - 3600),
        }
    );
    assert_eq!(key_id(b"s3cret"), kid);
    let legacy = key.verify(PY_ALICE_NO_KID, NOW).unwrap();
    assert_eq!((legacy.sub.as_str(), legacy.kid), ("alice", None));
    let kid_only = key.verify(PY_ALICE_KID_ONLY, NOW).unwrap();
    assert_eq!((kid_only.jti, kid_only.iat), (None, None));
    // On a rotated ring (new key first) the old key's tokens still verify.
    let ring = TokenKey::ring(["n3w", "s3cret"]).unwrap();
    assert_eq!(ring.verify(&py_alice, NOW).unwrap().sub, "alice");
    assert_eq!(ring.verify(PY_ALICE_NO_KID, NOW).unwrap().sub, "alice");
    let backend = key.verify(PY_BACKEND, NOW).unwrap();
    assert!(backend.is_app());
    assert!(TokenKey::new("other").verify(&py_alice, NOW).is_err());
    // Refused once `now >= exp`, as documented.
    assert!(key.verify(&py_alice, EXP).is_err());
    assert!(key.verify(&py_alice, EXP - 1).is_ok());
}

#[test]
fn rust_and_python_mint_the_same_bytes() {
    let (py_alice, _) = documented_example();
    let key = TokenKey::new("s3cret");
    let mint = |user, role| key.mint_with_id(user, role, EXP - 3600, 3600, JTI);
    assert_eq!(mint("alice", "user"), py_alice);
    assert_eq!(mint("backend", "app"), PY_BACKEND);
}
