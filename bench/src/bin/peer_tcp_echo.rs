//! Peer: a raw TCP echo server (no framing), one thread, mio: the ceiling an echo through
//! the kernel can reach. Also a sink (`--sink`): reads everything, then answers with the
//! byte count as 8 bytes, for bulk transfers. Usage: peer-tcp-echo ADDR [--sink]
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9003".into());
    let sink = args.next().as_deref() == Some("--sink");
    let mut listener = TcpListener::bind(addr.parse().expect("address")).expect("bind");
    println!("listening on {}", listener.local_addr().unwrap());
    let mut poll = Poll::new().unwrap();
    poll.registry()
        .register(&mut listener, Token(0), Interest::READABLE)
        .unwrap();
    let mut conns = HashMap::new();
    let mut next = 1;
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        poll.poll(&mut events, None).unwrap();
        for event in &events {
            if event.token() == Token(0) {
                while let Ok((mut stream, _)) = listener.accept() {
                    let _ = stream.set_nodelay(true);
                    poll.registry()
                        .register(&mut stream, Token(next), Interest::READABLE)
                        .unwrap();
                    conns.insert(next, (stream, 0u64));
                    next += 1;
                }
                continue;
            }
            let key = event.token().0;
            let Some((stream, count)) = conns.get_mut(&key) else {
                continue;
            };
            let mut close = false;
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => {
                        if sink {
                            let _ = stream.set_nodelay(true);
                            let _ = write_all_blocking(stream, &count.to_le_bytes());
                        }
                        close = true;
                        break;
                    }
                    Ok(n) if sink => *count += n as u64,
                    Ok(n) => {
                        if write_all_blocking(stream, &buf[..n]).is_err() {
                            close = true;
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        close = true;
                        break;
                    }
                }
            }
            if close {
                conns.remove(&key);
            }
        }
    }
}

/// Echoes are small and the client waits for them, so the socket buffer almost never fills;
/// when it does, spin until it drains.
fn write_all_blocking(stream: &mut mio::net::TcpStream, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        match stream.write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
