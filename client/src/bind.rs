//! Binding an outgoing TCP socket to a chosen source address (`local_addr`),
//! as load generators do to get past the ~28k ephemeral ports one address has
//! towards one server.
//!
//! A plain `bind(ip, 0)` makes the kernel pick the port at bind time, before it
//! knows the destination, so the port must be free for *every* destination:
//! it searches the port range and checks each candidate against every socket
//! already bound to that address. With ~17k sockets on one address that search
//! dominated a whole 100k-viewer load test (the connect rate fell from ~2,000/s
//! to ~270/s as viewers accumulated, the kernel's bind-conflict checks taking
//! most of the CPU). `IP_BIND_ADDRESS_NO_PORT` defers the port to `connect`,
//! which picks it for the full four-tuple the way an unbound socket's connect
//! does: cheap, and a port can then be reused towards other servers.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::net::TcpSocket;

/// Binds `socket` to `ip` with the port left to `connect`.
pub fn bind_source(socket: &TcpSocket, ip: IpAddr) -> io::Result<()> {
    defer_port(socket)?;
    socket.bind(SocketAddr::new(ip, 0))
}

#[cfg(target_os = "linux")]
fn defer_port(socket: &TcpSocket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: `fd` is an open socket owned by `socket` for the whole call, and
    // the option value points at a live `c_int` whose size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Elsewhere the port is picked at bind time, as before.
#[cfg(not(target_os = "linux"))]
fn defer_port(_socket: &TcpSocket) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The port is chosen by `connect`, not by `bind`: right after binding the
    /// socket has none, and the connected stream comes from the chosen address.
    #[tokio::test]
    async fn the_source_address_holds_and_the_port_comes_at_connect() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = listener.local_addr().unwrap();
        let socket = TcpSocket::new_v4().unwrap();
        let source: IpAddr = "127.0.0.2".parse().unwrap();
        bind_source(&socket, source).unwrap();
        let bound = socket.local_addr().unwrap();
        assert_eq!(bound.ip(), source);
        if cfg!(target_os = "linux") {
            assert_eq!(bound.port(), 0, "the port waits for connect");
        }
        let (stream, accepted) = tokio::join!(socket.connect(server), listener.accept());
        let stream = stream.unwrap();
        let (_, peer) = accepted.unwrap();
        assert_eq!(stream.local_addr().unwrap().ip(), source);
        assert_ne!(stream.local_addr().unwrap().port(), 0);
        assert_eq!(peer, stream.local_addr().unwrap());
    }
}
