//! Peer: a thread-per-connection WebSocket echo server on plain (blocking) tungstenite.
//! Usage: peer-tungstenite-threads ADDR
use std::net::TcpListener;
use tungstenite::Message;

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9002".into());
    let listener = TcpListener::bind(&addr).expect("bind");
    println!("listening on {}", listener.local_addr().unwrap());
    for stream in listener.incoming().flatten() {
        let _ = stream.set_nodelay(true);
        let _ = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                let Ok(mut ws) = tungstenite::accept(stream) else {
                    return;
                };
                loop {
                    match ws.read() {
                        Ok(message @ (Message::Text(_) | Message::Binary(_))) => {
                            if ws.send(message).is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            });
    }
}
