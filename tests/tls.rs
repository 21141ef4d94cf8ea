//! The SDK's certificate verification against a real edge with a real certificate
//! (`--tls-cert/--tls-key`, self-signed with rcgen for `localhost` and 127.0.0.1):
//! by default a client verifies against the system's roots and the host name, so an
//! edge whose certificate no system root vouches for is refused with a clear error;
//! pinning that certificate or adding it as a root works, over QUIC and over
//! `wss://` (through a TLS-terminating proxy in front of the edge, as a load
//! balancer would be).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Proc, SECRET, spawn_plain};
use danmaku_client::{Client, ClientConfig, ClientError, ServerEvent, ServerTrust, Transport};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

struct TlsEdge {
    edge: Proc,
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
    _dir: std::path::PathBuf,
}

async fn tls_edge() -> TlsEdge {
    danmaku_testkit::init_crypto();
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let dir = std::env::temp_dir().join(danmaku_testkit::kafka::unique("danmaku-tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let args = [
        "--bus",
        "memory",
        "--store",
        &format!("embedded:{}", dir.join("store.db").display()),
        "--auth-secret",
        SECRET,
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    let edge = spawn_plain("edge", &args.map(String::from)).await;
    TlsEdge {
        edge,
        cert_der: ck.cert.der().to_vec(),
        key_der: ck.signing_key.serialize_der(),
        _dir: dir,
    }
}

fn token() -> String {
    danmaku_proto::token::TokenKey::new(SECRET).mint(
        "viewer",
        "user",
        danmaku_proto::token::now_secs(),
        3600,
    )
}

/// The client works: it joins a room and gets `Joined`.
async fn works(mut c: Client) {
    c.join("room:tls").await.unwrap();
    let joined = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(ev) = c.next_event().await {
            if matches!(ev, ServerEvent::Joined { .. }) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(joined, Ok(true));
}

fn assert_cert_refused(r: Result<Client, ClientError>, what: &str) {
    let err = match r {
        Ok(_) => panic!("{what}: connected although nothing vouches for the certificate"),
        Err(e) => e.to_string(),
    };
    eprintln!("{what}: refused: {err}");
    assert!(
        err.contains("certificate") || err.contains("UnknownIssuer"),
        "{what}: the error names the certificate problem: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_verifies_certificates_unless_pinned() {
    let e = tls_edge().await;
    let addr = e.edge.addr;
    // Default: system roots. A self-signed edge is refused.
    let r = Client::connect_quic(addr, None, &token(), ClientConfig::default()).await;
    assert_cert_refused(r, "quic, system roots");
    // Pinned: works.
    works(
        Client::connect_quic(
            addr,
            Some(e.cert_der.clone()),
            &token(),
            ClientConfig::default(),
        )
        .await
        .expect("pinned certificate"),
    )
    .await;
    // Added as a root: works for the names it carries, not for another one.
    let rooted = |name: &str| ClientConfig {
        server_trust: ServerTrust::AddedRoots(vec![e.cert_der.clone()]),
        tls_server_name: Some(name.to_owned()),
        ..ClientConfig::default()
    };
    works(
        Client::connect_quic(addr, None, &token(), rooted("localhost"))
            .await
            .expect("added root, right name"),
    )
    .await;
    let r = Client::connect_quic(addr, None, &token(), rooted("edge.example")).await;
    assert_cert_refused(r, "quic, added root, another name");
}

/// A TLS-terminating proxy on 127.0.0.1 in front of the edge's plain TCP port.
async fn tls_proxy(e: &TlsEdge) -> std::net::SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(e.cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(e.key_der.clone())),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let upstream = e.edge.addr;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return; // a client that refused our certificate
                };
                let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_verifies_certificates() {
    let e = tls_edge().await;
    let proxy = tls_proxy(&e).await;
    for (url, name) in [
        (format!("https://127.0.0.1:{}", proxy.port()), "ip"),
        (
            format!("wss://localhost:{}/v1/ws", proxy.port()),
            "dns name",
        ),
    ] {
        let r = Client::connect_ws(&url, &token(), Transport::WsPb, ClientConfig::default()).await;
        assert_cert_refused(r, &format!("wss to {name}, system roots"));
        for trust in [
            ServerTrust::AddedRoots(vec![e.cert_der.clone()]),
            ServerTrust::Pinned(e.cert_der.clone()),
        ] {
            let config = ClientConfig {
                server_trust: trust.clone(),
                ..ClientConfig::default()
            };
            let c = Client::connect_ws(&url, &token(), Transport::WsPb, config)
                .await
                .unwrap_or_else(|err| panic!("wss to {name} with {trust:?}: {err}"));
            works(c).await;
        }
    }
}
