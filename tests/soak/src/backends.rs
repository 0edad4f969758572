//! The backends the soak's routes point at: a TCP echo (for `Upgrade: tcp`), an HTTP/1.1
//! server with keep-alive (for h2c's `http1://` route), and a service that never reads
//! (for the hostile client's WebSocket route). Each prints `listening PORT` and serves
//! until killed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

fn listen() -> TcpListener {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a backend");
    println!("listening {}", listener.local_addr().unwrap().port());
    listener
}

/// Echoes every byte back until the client closes.
pub fn tcp_echo() {
    for stream in listen().incoming().flatten() {
        std::thread::spawn(move || {
            let mut stream = stream;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}

/// Answers every request `200 ok`, keeping the connection.
pub fn http1() {
    for stream in listen().incoming().flatten() {
        std::thread::spawn(move || serve_http1(stream));
    }
}

fn serve_http1(stream: TcpStream) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => {}
            }
        }
        if writer
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
            .is_err()
        {
            return;
        }
    }
}

/// Takes connections and reads nothing from them; each is dropped after 20 s.
pub fn stuck() {
    for stream in listen().incoming().flatten() {
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(20));
            drop(stream);
        });
    }
}
